"""DiT-Head inference: dub a source video so that its lips follow new audio.

Per output frame (25 fps, as many as the audio lasts; the source is played
forwards and backwards when it is shorter, and a still image is repeated):

1. the face of the source frame is tracked and cropped exactly as in training
   (`talkinghead.methods.dithead.features`, with the checkpoint's `DataSettings`),
   its lower face masked with the blurred mask;
2. the masked crop is encoded with the masked-face VQGAN; the reference latent is
   a random source frame encoded with the full-face VQGAN for the first frame, and
   the previous frame's generated latent afterwards (the paper's evolving
   inference), so consecutive frames stay coherent;
3. DDIM (250 steps by default, eta = 0) denoises pure noise into the target latent,
   the DiT seeing the masked latent, the reference latent and the 11-frame wav2vec2
   window of that frame;
4. the full-face VQGAN decodes it and the mask blends the generated lower face into
   the source frame (only the masked region changes);
5. with ``fps=50`` (the default, the paper's stage 3) every pair of frames gets an
   interpolated middle frame (RIFE when ``<checkpoints>/rife/flownet.pkl`` exists,
   else DIS optical flow); ``fps=25`` skips it.

The video is written with the (16 kHz) audio. Everything random (the reference
frame, the initial noise of each frame) comes from ``seed``. Steps 2-4 are
`talkinghead.methods.dithead.generation.DiTHeadGenerator`, which training's validation
samples run too.

Checkpoints directory: ``vq_full.pt``, ``vq_masked.pt``, ``dit.pt`` (written by
``talkinghead train-dithead``, format in `talkinghead.methods.dithead.checkpoint`;
also accepted under ``<checkpoints>/dithead/``),
optionally ``wav2vec2/`` (a local copy of the audio model) and ``rife/flownet.pkl``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkinghead.audio.ctc import LOCAL_MODEL_DIRNAME, Wav2Vec2CTCEncoder
from talkinghead.errors import CheckpointError, MediaError, NoFaceError, TalkingHeadError
from talkinghead.frames.interpolation import create_interpolator, interpolate_2x
from talkinghead.media.video import iter_video_frames
from talkinghead.methods.dithead.config import DataSettings
from talkinghead.methods.dithead.features import audio_windows, crop_face, lower_face_mask
from talkinghead.methods.dithead.generation import (
    DEFAULT_STEPS,
    DiTHeadGenerator,
    DiTHeadModels,
    Progress,
    SourceFace,
    paste_masked,
    pingpong,
)
from talkinghead.timebase import FPS, SAMPLE_RATE
from talkinghead.validation import check_steps

_OPTIONS = {
    "fps", "interpolation", "eta", "face_backend", "aux_dir", "audio_model", "max_side",
    "evolve", "reference_frame", "resolution",
}  # fmt: skip


def _source_frames(
    source: Path, max_side: int | None, limit: int | None = None
) -> list[np.ndarray]:
    """Up to ``limit`` source frames at 25 fps (nearest frame in time), decoded as a
    stream so a long source costs only what is used; one frame for a still image."""
    from talkinghead.media.source import load_source

    probe = load_source(source, max_side=max_side, max_frames=1)
    if probe.is_image:
        return probe.frames
    return list(iter_video_frames(source, fps=FPS, fit=True, max_side=max_side, max_frames=limit))


def analyze_source(
    frames: list[np.ndarray],
    settings: DataSettings,
    analyzer: Any,
    progress: Progress | None = None,
) -> list[SourceFace]:
    """Track, crop and mask every source frame (a lost face reuses the last landmarks)."""
    out: list[SourceFace] = []
    previous = None
    s = settings.crop.size
    for i, rgb in enumerate(frames):
        try:
            fc = analyzer.analyze(rgb, previous)
        except NoFaceError:
            if previous is None:
                raise NoFaceError(f"no face found in source frame {i}") from None
            fc = previous
        previous = fc
        crop, lmk, M_c2o = crop_face(rgb, fc.landmarks, settings.crop)
        mask = lower_face_mask(lmk, s, settings.mask)
        out.append(SourceFace(rgb, crop, mask, M_c2o))
        if progress:
            progress("faces", i + 1, len(frames))
    return out


def audio_features(
    audio_16k: np.ndarray, models: DiTHeadModels, audio_model: str | None, device: str
) -> np.ndarray:
    """Per-frame windows [N, window * vocab] for the audio, with the training's encoder:
    ``audio_model`` if given, else ``<checkpoints>/wav2vec2``, else the one recorded in
    the checkpoint (a local directory or a hub id)."""
    local = models.root / LOCAL_MODEL_DIRNAME
    name = audio_model or (str(local) if local.is_dir() else models.settings.audio_model)
    encoder = Wav2Vec2CTCEncoder(name, device=device)
    a = models.settings.audio
    if encoder.vocab_size != a.vocab_size:
        raise CheckpointError(
            f"{name}: the audio model has {encoder.vocab_size} CTC tokens, the DiT was "
            f"trained with {a.vocab_size}"
        )
    return audio_windows(encoder.frame_logits(audio_16k), a.window)


def generate_video(
    source: Path,
    audio: Path,
    output: Path | str,
    *,
    checkpoints: Path,
    seed: int | None = None,
    steps: int | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    **method_options: Any,
) -> Path:
    """Dub ``source`` (video or image) with ``audio``; returns the written path.

    Options: ``fps`` (50: 2x interpolated, the paper's output; or 25), ``interpolation``
    ("auto" | "rife" | "flow" | "farneback" | "none"), ``eta`` (DDIM, 0.0),
    ``face_backend`` ("auto") and ``aux_dir``, ``audio_model`` (wav2vec2 directory
    or hub id; default ``<checkpoints>/wav2vec2``, else the model used in training),
    ``max_side`` (1920), ``evolve`` (True: previous latent as reference),
    ``reference_frame`` (index of the first reference; default random). ``resolution``
    is accepted for the CLI's sake and ignored: the checkpoint fixes the crop size.
    """
    from talkinghead.audio.io import load_audio
    from talkinghead.face import create_face_analyzer
    from talkinghead.media.writer import open_writer

    unknown = set(method_options) - _OPTIONS
    if unknown:
        raise TalkingHeadError(f"unknown dithead option(s): {', '.join(sorted(unknown))}")
    opts = method_options
    fps = int(opts.get("fps", 50))
    if fps not in (25, 50):
        raise TalkingHeadError(f"DiT-Head writes 25 or 50 fps, not {fps}")
    steps = DEFAULT_STEPS if steps is None else steps
    check_steps(steps)
    seed = secrets.randbits(31) if seed is None else int(seed)

    models = DiTHeadModels.load(Path(checkpoints), device)
    check_steps(steps, models.n_timestep)  # a model trained on another schedule length
    wav = load_audio(Path(audio), SAMPLE_RATE)
    if progress:
        progress("audio", 0, None)
    windows = audio_features(wav, models, opts.get("audio_model"), device)
    if len(windows) == 0:
        raise MediaError(f"{audio}: the audio is too short for one frame")
    if progress:
        progress("audio", len(windows), len(windows))

    # ping-pong never needs more than N source frames
    frames = _source_frames(Path(source), opts.get("max_side", 1920), len(windows))
    analyzer = create_face_analyzer(opts.get("face_backend", "auto"), opts.get("aux_dir"))
    faces = analyze_source(frames, models.settings, analyzer, progress)

    rng = np.random.default_rng(seed)
    reference = opts.get("reference_frame")
    if reference is None:
        reference = int(rng.integers(0, len(faces)))
    elif not 0 <= int(reference) < len(faces):
        raise TalkingHeadError(f"reference_frame {reference} is outside 0..{len(faces) - 1}")
    generator = torch.Generator().manual_seed(seed)
    gen = DiTHeadGenerator(models, steps, float(opts.get("eta", 0.0)), device)
    stream = gen.frames(
        faces,
        windows,
        generator=generator,
        reference=int(reference),
        evolve=bool(opts.get("evolve", True)),
        progress=progress,
    )
    if fps == 50:
        interp = create_interpolator(opts.get("interpolation", "auto"), models.root, device)
        if interp is not None:
            stream = interpolate_2x(stream, interp)
        else:  # no interpolation asked for: each frame shown twice
            stream = (f for frame in stream for f in (frame, frame))
    with open_writer(output, fps=fps, audio=(wav, SAMPLE_RATE)) as writer:
        for frame in stream:
            writer.write(frame)
    path = writer.close()
    return Path(output) if path is None else path


__all__ = [
    "DEFAULT_STEPS",
    "DiTHeadGenerator",
    "DiTHeadModels",
    "SourceFace",
    "analyze_source",
    "audio_features",
    "generate_video",
    "paste_masked",
    "pingpong",
]
