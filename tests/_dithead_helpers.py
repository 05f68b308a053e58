"""Shared by the DiT-Head tests: the real example media, a tiny clip, a tiny wav2vec2."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _conformance import MEDIA_DIR, skip_missing

PORTRAIT = MEDIA_DIR / "ditto_example_face.jpg"
SPEECH = MEDIA_DIR / "ditto_example_speech.wav"

CLIP_SIZE = 160  # pixels of the tiny clip's frames
CLIP_FRAMES = 24


def require_media() -> None:
    if not (PORTRAIT.is_file() and SPEECH.is_file()):
        skip_missing(f"{MEDIA_DIR}")


def portrait(size: int | None = None) -> np.ndarray:
    import cv2

    from talkinghead.media.source import load_source

    img = load_source(PORTRAIT).frames[0]
    return img if size is None else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def speech(num_samples: int | None = None) -> np.ndarray:
    from talkinghead.audio.io import load_audio

    wav = load_audio(SPEECH, 16000)
    return wav if num_samples is None else wav[:num_samples]


def make_clip(path: Path, frames: int = CLIP_FRAMES, size: int = CLIP_SIZE) -> Path:
    """A small talking-head video: the portrait drifting by a few pixels, with speech."""
    import cv2

    from talkinghead.media.writer import VideoWriter

    base = portrait(size)
    with VideoWriter(path, fps=25, audio=(speech(frames * 640), 16000)) as writer:
        for i in range(frames):
            M = np.float32([[1, 0, 2 * np.sin(i / 4)], [0, 1, 1.5 * np.cos(i / 5)]])
            writer.write(cv2.warpAffine(base, M, (size, size), borderMode=cv2.BORDER_REFLECT))
    return path


def tiny_wav2vec2(directory: Path, vocab_size: int = 33, pos_embeddings: int = 8) -> Path:
    """A randomly initialised, few-thousand-parameter Wav2Vec2ForCTC saved to ``directory``
    (the real front end, hop 320, with a tiny body)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8,) * 7,
        num_conv_pos_embeddings=pos_embeddings,
        num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(0)
    Wav2Vec2ForCTC(config).save_pretrained(directory)
    return directory


def save_tiny_wav2vec2(directory: Path) -> Path:
    """DiffTalk's tests use a 32-token vocabulary (the English CTC characters)."""
    return tiny_wav2vec2(directory, vocab_size=32, pos_embeddings=16)
