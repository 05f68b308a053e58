"""The one wav2vec2 CTC wrapper: per-step CTC outputs at 50 Hz, for DiT-Head and DiffTalk.

A CTC-trained wav2vec2 (transformers' `Wav2Vec2ForCTC`) emits one distribution over
characters every 20 ms (hop 320 samples at 16 kHz). `Wav2Vec2CTCEncoder` gives them
in the two forms the methods use:

* DiT-Head (`frame_logits`): the raw logits averaged over the two 20 ms steps of each
  40 ms video frame (the paper's ``jonatasgrosman/wav2vec2-large-xlsr-53-english``,
  33 tokens); an 11-frame window of them is its 363-value audio vector.
* DiffTalk (`probabilities`): softmax probabilities per step. DiffTalk (after VOCA)
  feeds its audio encoder, for each video frame, a window of 16 consecutive steps of
  a speech recogniser's per-character output (DeepSpeech 0.1: 29 characters).
  DeepSpeech's TensorFlow graph is not something we can ship or load, so the default
  is ``facebook/wav2vec2-base-960h``: 32 tokens (pad/blank, 3 specials, word separator,
  26 letters, apostrophe) instead of DeepSpeech's 29. Probabilities are bounded,
  unlike DeepSpeech's raw logits; a model trained on one kind cannot use the other.
  Any object with ``name``, ``feature_dim``, ``rate`` and ``probabilities(audio_16k)``
  (`CharProbabilityEncoder`) can replace it, e.g. a wrapper around a DeepSpeech export.

Both methods look for a local copy of their model in ``<checkpoints>/wav2vec2``
(`resolve_ctc_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from talkinghead.audio.transformers_loading import from_pretrained_quietly, looks_local
from talkinghead.errors import CheckpointError
from talkinghead.timebase import SAMPLE_RATE, num_frames

HOP = 320  # samples per 20 ms step
FEATURE_RATE = SAMPLE_RATE / HOP  # 50 Hz
RECEPTIVE_FIELD_EXTRA = 80  # wav2vec2's first conv window (400) minus the hop
STEPS_PER_VIDEO_FRAME = 2  # 40 ms frames at 25 fps
DEFAULT_CTC_MODEL = "facebook/wav2vec2-base-960h"
LOCAL_MODEL_DIRNAME = "wav2vec2"  # <checkpoints>/wav2vec2/ holds a local copy
WINDOW = 16  # steps per video frame (VOCA / DiffTalk)


@runtime_checkable
class CharProbabilityEncoder(Protocol):
    """16 kHz float32 mono audio [L] -> per-step character distributions [ceil(L / 320), C]."""

    name: str
    feature_dim: int
    rate: float

    def probabilities(self, audio_16k: np.ndarray) -> np.ndarray: ...


def _check_local(name: str | Path) -> None:
    if looks_local(name) and not Path(name).expanduser().exists():
        raise CheckpointError(f"{name}: wav2vec2 CTC model directory not found")


def resolve_ctc_model(
    checkpoints: str | Path | None, override: str | Path | None, default: str
) -> str:
    """The model to load: `override`, else ``<checkpoints>/wav2vec2`` when it exists,
    else `default` (a hub id)."""
    if override:
        return str(override)
    if checkpoints is not None and (Path(checkpoints) / LOCAL_MODEL_DIRNAME).is_dir():
        return str(Path(checkpoints) / LOCAL_MODEL_DIRNAME)
    return default


def ctc_vocab_size(model: str | Path) -> int:
    """The CTC vocabulary size of a model, read from its config (no weights loaded)."""
    _check_local(model)
    try:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(str(model)).vocab_size)
    except ImportError:
        raise CheckpointError(
            f"{model}: wav2vec2 CTC features need the 'transformers' package"
        ) from None
    except (OSError, ValueError, AttributeError) as e:
        reason = " ".join(str(e).split())  # transformers' offline message spans lines
        hint = (
            ""
            if looks_local(model)
            else (
                f"; without network access, put a copy of {model} in <checkpoints>/"
                f"{LOCAL_MODEL_DIRNAME}/ or name a local folder (prepare-data: --option audio_model=DIR)"
            )
        )
        raise CheckpointError(
            f"{model}: cannot read the wav2vec2 config ({reason}){hint}"
        ) from None


class Wav2Vec2CTCEncoder:
    """`Wav2Vec2ForCTC` -> its CTC logits (or softmax probabilities), one row per 20 ms.

    Long audio runs in chunks of ``chunk_seconds`` that each see ``context_seconds`` of
    audio on both sides (attention cost grows with the square of the length); only
    the chunk's own rows are kept. normalize: zero-mean/unit-variance over the whole
    input, as `Wav2Vec2FeatureExtractor` does; None reads ``do_normalize`` from the
    checkpoint's preprocessor config, defaulting to True (what the 960h models and
    the xlsr fine-tunes expect).
    """

    rate = FEATURE_RATE

    def __init__(
        self,
        model_id_or_path: str | Path = DEFAULT_CTC_MODEL,
        device: str = "cpu",
        normalize: bool | None = None,
        chunk_seconds: float = 20.0,
        context_seconds: float = 1.0,
    ) -> None:
        try:
            import torch
            from transformers import Wav2Vec2ForCTC
        except ImportError:
            raise CheckpointError(
                f"{model_id_or_path}: wav2vec2 CTC features need the 'transformers' package "
                "(pip install transformers)"
            ) from None
        self._torch = torch
        self.name = str(model_id_or_path)
        _check_local(model_id_or_path)
        try:
            self.model = from_pretrained_quietly(Wav2Vec2ForCTC, self.name).to(device).eval()
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.name}: cannot load a wav2vec2 CTC model ({e})") from None
        self.device = torch.device(device)
        self.feature_dim = int(self.model.config.vocab_size)
        self.normalize = self._read_normalize(self.name) if normalize is None else normalize
        self.chunk_steps = max(1, round(chunk_seconds * FEATURE_RATE))
        self.context_steps = max(0, round(context_seconds * FEATURE_RATE))

    @property
    def vocab_size(self) -> int:
        """CTC tokens per step (= `feature_dim`)."""
        return self.feature_dim

    @staticmethod
    def _read_normalize(name: str) -> bool:
        try:
            from transformers import Wav2Vec2FeatureExtractor

            return bool(Wav2Vec2FeatureExtractor.from_pretrained(name).do_normalize)
        except (OSError, ValueError):
            return True

    def _run(self, x: np.ndarray) -> np.ndarray:
        """Logits [steps, vocab] of one chunk of (normalised, padded) samples."""
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            return self.model(t[None]).logits[0].float().cpu().numpy()

    def logits(self, audio_16k: np.ndarray, num_steps: int | None = None) -> np.ndarray:
        """CTC logits [num_steps, vocab]; step k covers samples 320k ... 320k + 400.

        num_steps defaults to ceil(L / 320); audio past it is dropped, short audio is
        padded with silence.
        """
        x = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
        n = -(-x.shape[0] // HOP) if num_steps is None else int(num_steps)
        if n == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        if self.normalize and x.size:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        # Zero padding so that exactly n windows of 400 samples fit.
        need = n * HOP + RECEPTIVE_FIELD_EXTRA
        x = np.concatenate([x[:need], np.zeros(max(0, need - x.shape[0]), np.float32)])
        out = np.empty((n, self.feature_dim), np.float32)
        for f0 in range(0, n, self.chunk_steps):
            f1 = min(n, f0 + self.chunk_steps)
            a = max(0, f0 - self.context_steps)
            b = min(n, f1 + self.context_steps)
            rows = self._run(x[a * HOP : b * HOP + RECEPTIVE_FIELD_EXTRA])
            out[f0:f1] = rows[f0 - a : f1 - a]
        return out

    def probabilities(self, audio_16k: np.ndarray) -> np.ndarray:
        """Softmax over the vocabulary, [ceil(L / 320), vocab] (DiffTalk's features)."""
        torch = self._torch
        return torch.softmax(torch.from_numpy(self.logits(audio_16k)), dim=-1).numpy()

    def frame_logits(self, audio_16k: np.ndarray, frames: int | None = None) -> np.ndarray:
        """Per 25 fps video frame, the mean of its two steps' logits: [frames, vocab]
        (DiT-Head's features); frames defaults to ceil(seconds x 25)."""
        if frames is None:
            frames = num_frames(len(audio_16k))
        logits = self.logits(audio_16k, STEPS_PER_VIDEO_FRAME * frames)
        return logits.reshape(frames, STEPS_PER_VIDEO_FRAME, self.feature_dim).mean(axis=1)


def frame_windows(
    features: np.ndarray,
    num_frames: int,
    fps: float,
    rate: float = FEATURE_RATE,
    window: int = WINDOW,
) -> np.ndarray:
    """Per video frame, the `window` feature rows centred on it: [N, C] -> [F, window, C].

    Frame i sits at i / fps seconds, i.e. row round(i * rate / fps); its window covers rows
    [centre - window // 2, centre + window - window // 2). Rows past either end repeat
    the first/last one (silence at the edges of a clip reads as silence).
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"expected features [N > 0, C], got {features.shape}")
    centres = np.rint(np.arange(num_frames) * (rate / fps)).astype(np.int64)
    idx = centres[:, None] + np.arange(window)[None, :] - window // 2
    return features[np.clip(idx, 0, features.shape[0] - 1)]


def neighbour_indices(num_frames: int, radius: int, frames: np.ndarray | None = None) -> np.ndarray:
    """Indices of the 2 * radius + 1 frames around each frame (clamped at the ends): [F, 2r + 1]."""
    centre = np.arange(num_frames) if frames is None else np.asarray(frames, dtype=np.int64)
    idx = centre[:, None] + np.arange(-radius, radius + 1)[None, :]
    return np.clip(idx, 0, max(num_frames - 1, 0))


def neighbour_windows(windows: np.ndarray, radius: int = 8) -> np.ndarray:
    """Stack each frame's neighbours for the temporal filter: [F, W, C] -> [F, 2r + 1, W, C]."""
    windows = np.asarray(windows)
    return windows[neighbour_indices(windows.shape[0], radius)]


__all__ = [
    "DEFAULT_CTC_MODEL",
    "FEATURE_RATE",
    "LOCAL_MODEL_DIRNAME",
    "WINDOW",
    "CharProbabilityEncoder",
    "Wav2Vec2CTCEncoder",
    "ctc_vocab_size",
    "frame_windows",
    "neighbour_indices",
    "neighbour_windows",
    "resolve_ctc_model",
]
