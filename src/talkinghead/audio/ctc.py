"""DeepSpeech-style character probabilities at 50 Hz, and DiffTalk's per-frame windows of them.

DiffTalk (after VOCA) feeds its audio encoder, for each video frame, a window of 16
consecutive 20 ms steps of a speech recogniser's per-character output (DeepSpeech 0.1:
29 characters). DeepSpeech's TensorFlow graph is not something we can ship or load,
so the default here is a CTC-trained wav2vec2 (``facebook/wav2vec2-base-960h``,
transformers' `Wav2Vec2ForCTC`): it also emits one distribution over characters every
20 ms (hop 320 samples at 16 kHz), over 32 tokens (pad/blank, 3 specials, word
separator, 26 letters, apostrophe) instead of DeepSpeech's 29. We use the softmax
probabilities, which are bounded, rather than DeepSpeech's raw logits; a model
trained on one kind of feature cannot use the other.

Any object with ``name``, ``feature_dim``, ``rate`` and ``probabilities(audio_16k)``
(`CharProbabilityEncoder`) can replace it, e.g. a wrapper around a DeepSpeech export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from talkinghead.errors import CheckpointError

SAMPLE_RATE = 16000
HOP = 320  # samples per 20 ms step
FEATURE_RATE = SAMPLE_RATE / HOP  # 50 Hz
RECEPTIVE_FIELD_EXTRA = 80  # wav2vec2's first conv window (400) minus the hop
DEFAULT_CTC_MODEL = "facebook/wav2vec2-base-960h"
WINDOW = 16  # steps per video frame (VOCA / DiffTalk)


@runtime_checkable
class CharProbabilityEncoder(Protocol):
    """16 kHz float32 mono audio [L] -> per-step character distributions [ceil(L / 320), C]."""

    name: str
    feature_dim: int
    rate: float

    def probabilities(self, audio_16k: np.ndarray) -> np.ndarray: ...


def _looks_local(name: str | Path) -> bool:
    s = str(name)
    return isinstance(name, Path) or s.startswith((".", "/", "~")) or "\\" in s


class Wav2Vec2CTCEncoder:
    """`Wav2Vec2ForCTC` -> softmax over its vocabulary, one row per 20 ms.

    Long audio runs in chunks of ``chunk_seconds`` that each see ``context_seconds`` of
    audio on both sides (attention cost grows with the square of the length); only
    the chunk's own rows are kept. normalize: zero-mean/unit-variance over the whole
    input, as `Wav2Vec2FeatureExtractor` does; None reads ``do_normalize`` from the
    checkpoint's preprocessor config, defaulting to True (the 960h models want it).
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
                f"{model_id_or_path}: character features need the 'transformers' package "
                "(pip install transformers)"
            ) from None
        self._torch = torch
        self.name = str(model_id_or_path)
        if _looks_local(model_id_or_path) and not Path(model_id_or_path).expanduser().exists():
            raise CheckpointError(f"{self.name}: wav2vec2 CTC model directory not found")
        try:
            self.model = Wav2Vec2ForCTC.from_pretrained(self.name).to(device).eval()
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.name}: cannot load a wav2vec2 CTC model ({e})") from None
        self.device = torch.device(device)
        self.feature_dim = int(self.model.config.vocab_size)
        self.normalize = self._read_normalize(self.name) if normalize is None else normalize
        self.chunk_steps = max(1, round(chunk_seconds * FEATURE_RATE))
        self.context_steps = max(0, round(context_seconds * FEATURE_RATE))

    @staticmethod
    def _read_normalize(name: str) -> bool:
        try:
            from transformers import Wav2Vec2FeatureExtractor

            return bool(Wav2Vec2FeatureExtractor.from_pretrained(name).do_normalize)
        except (OSError, ValueError):
            return True

    def _run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
            logits = self.model(t[None]).logits[0]
            return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def probabilities(self, audio_16k: np.ndarray) -> np.ndarray:
        x = np.asarray(audio_16k, dtype=np.float32).reshape(-1)
        n = -(-x.shape[0] // HOP)
        if n == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        if self.normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        # Zero padding so that exactly n windows of 400 samples fit.
        x = np.concatenate([x, np.zeros(n * HOP + RECEPTIVE_FIELD_EXTRA - x.shape[0], np.float32)])
        out = np.empty((n, self.feature_dim), np.float32)
        for f0 in range(0, n, self.chunk_steps):
            f1 = min(n, f0 + self.chunk_steps)
            a = max(0, f0 - self.context_steps)
            b = min(n, f1 + self.context_steps)
            rows = self._run(x[a * HOP : b * HOP + RECEPTIVE_FIELD_EXTRA])
            out[f0:f1] = rows[f0 - a : f1 - a]
        return out


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
    "WINDOW",
    "CharProbabilityEncoder",
    "Wav2Vec2CTCEncoder",
    "frame_windows",
    "neighbour_indices",
    "neighbour_windows",
]
