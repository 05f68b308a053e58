"""HuBERT speech features at 25 fps, chunked exactly as the release computes them.

Layout (16 kHz audio, one video frame = 40 ms = 640 samples, chunksize (past, new, future)
= (3, 5, 2) video frames):

* the encoder sees chunks of (3 + 5 + 2) * 640 + 80 = 6480 samples; the 80 extra samples
  complete the receptive field of HuBERT's convolutional front end (400 samples, hop 320),
  which turns 6480 samples into 20 frames of 20 ms;
* of those frames, [-14:-4] (skip the 3 past video frames = 6 HuBERT frames, and the
  2 look-ahead video frames = 4 HuBERT frames) are kept and pairs are averaged: 5 video frames;
* the whole file is prefixed with 6480 - (5 + 2) * 640 = 2000 zero samples and chunks start
  every 5 * 640 = 3200 samples, so video frame n is built from the HuBERT frames whose
  windows start at samples 640n - 80 and 640n + 240 of the original audio;
* N = ceil(samples / 640) frames, i.e. ceil(seconds * 25).

Deliberate differences from the release:

* N is computed in exact integer arithmetic. The release's float expression
  `ceil(len / 16000 * 25)` yields one spurious extra frame for some exact multiples of
  640 samples (4480, 8960, 17920, ...).
* `HubertStream` produces exactly the offline features (same 2000-sample prefix, same hop)
  and exactly N frames. The release's online mode prefixes 3 * 640 = 1920 zero samples
  instead, so its windows sit 80 samples (5 ms) later than its own offline ones, and it
  emits whole 5-frame groups for the zero-padded last chunk, so it may give more than N.
* Empty audio gives zero frames instead of an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from einops import rearrange

from talkinghead.audio.transformers_loading import from_pretrained_quietly, looks_local
from talkinghead.errors import CheckpointError
from talkinghead.timebase import SAMPLE_RATE as SAMPLE_RATE  # re-exported: the rate HuBERT takes
from talkinghead.timebase import SAMPLES_PER_FRAME, num_frames

HUBERT_FRAMES_PER_VIDEO_FRAME = 2  # HuBERT runs at 50 Hz (20 ms)
RECEPTIVE_FIELD_EXTRA = 80  # 400-sample conv window minus its 320-sample hop
DEFAULT_CHUNKSIZE = (3, 5, 2)
FEATURE_DIM = 1024  # hubert-large


@runtime_checkable
class SpeechEncoder(Protocol):
    """Maps one float32 chunk of 16 kHz audio, shape [L] (L = 6480 by default), to one
    feature row per 20 ms HuBERT frame, shape [T, D] (T = 20, D = 1024 for the release)."""

    def encode(self, chunk: np.ndarray) -> np.ndarray: ...


def _as_frames(out: np.ndarray) -> np.ndarray:
    """Accept [T, D] or [1, T, D] encoder outputs."""
    out = np.asarray(out)
    if out.ndim == 3 and out.shape[0] == 1:
        out = out[0]
    if out.ndim != 2:
        raise ValueError(f"a speech encoder must return [T, D] features, got {out.shape}")
    return out


def onnx_providers(device: str = "cpu") -> list[str]:
    """onnxruntime providers HuBERT's ONNX model runs on for `device`, best first: CUDA only
    with a CUDA device and onnxruntime-gpu installed (CPU onnxruntime has no CUDA provider)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if str(device).startswith("cuda") else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


class OnnxHubertEncoder:
    """The release's `hubert_streaming_fix_kv.onnx`: input `input_values` float32 [1, L],
    first output [T, D] (named `encoding_out` in the release's TensorRT build)."""

    INPUT_NAME = "input_values"

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: HuBERT ONNX model not found")
        providers = onnx_providers(device)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            raise CheckpointError(f"{self.path}: cannot load the HuBERT ONNX model ({e})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        if self.INPUT_NAME not in inputs:
            raise CheckpointError(
                f"{self.path}: expected an ONNX input named {self.INPUT_NAME!r}, found {inputs}"
            )
        dim = self.session.get_outputs()[0].shape[-1]
        self.feat_dim = dim if isinstance(dim, int) else FEATURE_DIM

    @property
    def where(self) -> str:
        """What runs it: "onnxruntime, CUDAExecutionProvider" or "..., CPUExecutionProvider"."""
        return f"onnxruntime, {self.session.get_providers()[0]}"

    def encode(self, chunk: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(chunk, dtype=np.float32).reshape(1, -1)
        return _as_frames(self.session.run(None, {self.INPUT_NAME: x})[0])


class TransformersHubertEncoder:
    """A HuggingFace `HubertModel` (last hidden state) run on each chunk on its own, giving
    the ONNX model's per-chunk frame layout. Needs the optional `transformers` package.

    normalize: zero-mean/unit-variance per chunk, as `Wav2Vec2FeatureExtractor` does for
    checkpoints trained that way. None reads `do_normalize` from the checkpoint's
    preprocessor config when it has one, else does not normalize.
    """

    def __init__(
        self, model_id_or_path: str | Path, device: str = "cpu", normalize: bool | None = None
    ) -> None:
        try:
            import torch
            from transformers import HubertModel
        except ImportError:
            raise CheckpointError(
                f"{model_id_or_path}: loading a HuBERT checkpoint with transformers needs the "
                "'transformers' package (pip install transformers)"
            ) from None
        self._torch = torch
        self.name = str(model_id_or_path)
        if looks_local(model_id_or_path) and not Path(model_id_or_path).expanduser().exists():
            raise CheckpointError(f"{self.name}: HuBERT model directory not found")
        try:
            self.model = from_pretrained_quietly(HubertModel, self.name).to(device).eval()
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.name}: cannot load a HuBERT model ({e})") from None
        self.device = torch.device(device)
        self.where = f"transformers, {self.device}"
        self.feat_dim = int(self.model.config.hidden_size)
        self.normalize = self._read_normalize(self.name) if normalize is None else normalize

    @staticmethod
    def _read_normalize(name: str) -> bool:
        try:
            from transformers import Wav2Vec2FeatureExtractor

            return bool(Wav2Vec2FeatureExtractor.from_pretrained(name).do_normalize)
        except (OSError, ValueError):
            return False

    def encode(self, chunk: np.ndarray) -> np.ndarray:
        x = np.asarray(chunk, dtype=np.float32)
        if self.normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        with self._torch.inference_mode():
            t = self._torch.from_numpy(np.ascontiguousarray(x)).to(self.device)[None]
            out = self.model(t).last_hidden_state[0]
        return out.float().cpu().numpy()


class HubertFeatureExtractor:
    """Speech features [N, D] at 25 fps from 16 kHz audio, through any `SpeechEncoder`."""

    def __init__(
        self, encoder: SpeechEncoder, chunksize: Sequence[int] = DEFAULT_CHUNKSIZE
    ) -> None:
        past, new, future = (int(c) for c in chunksize)
        if past < 0 or new < 1 or future < 0:
            raise ValueError(f"invalid chunksize {tuple(chunksize)}")
        self.encoder = encoder
        self.chunksize = (past, new, future)
        self.chunk_len = (past + new + future) * SAMPLES_PER_FRAME + RECEPTIVE_FIELD_EXTRA
        # Zeros before the audio so that the first chunk's "new" frames start at sample 0.
        self.front_pad = self.chunk_len - (new + future) * SAMPLES_PER_FRAME
        self.hop = new * SAMPLES_PER_FRAME
        self._keep = slice(
            -(new + future) * HUBERT_FRAMES_PER_VIDEO_FRAME,
            -future * HUBERT_FRAMES_PER_VIDEO_FRAME if future else None,
        )

    @property
    def feat_dim(self) -> int:
        return int(getattr(self.encoder, "feat_dim", FEATURE_DIM))

    def chunk_features(self, chunk: np.ndarray) -> np.ndarray:
        """One encoder chunk [chunk_len] -> its `new` video frames [new, D]."""
        if chunk.shape != (self.chunk_len,):
            raise ValueError(f"expected a chunk of {self.chunk_len} samples, got {chunk.shape}")
        frames = _as_frames(self.encoder.encode(chunk.astype(np.float32, copy=False)))
        needed = (sum(self.chunksize)) * HUBERT_FRAMES_PER_VIDEO_FRAME
        if frames.shape[0] < needed:
            raise ValueError(
                f"the speech encoder returned {frames.shape[0]} frames for "
                f"{self.chunk_len} samples, expected at least {needed}"
            )
        kept = rearrange(frames[self._keep], "(f two) d -> f two d", two=2)
        return kept.mean(axis=1)

    def _chunk_at(self, padded: np.ndarray, start: int) -> np.ndarray:
        """padded[start : start + chunk_len], zero-filled past the end."""
        chunk = padded[start : start + self.chunk_len]
        if chunk.shape[0] < self.chunk_len:
            chunk = np.concatenate([chunk, np.zeros(self.chunk_len - chunk.shape[0], np.float32)])
        return chunk

    def features(self, audio_16k: np.ndarray) -> np.ndarray:
        """Whole-file features [ceil(len / 640), D]."""
        audio = np.asarray(audio_16k, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected mono audio [n], got {audio.shape}")
        n = num_frames(audio.shape[0])
        padded = np.concatenate([np.zeros(self.front_pad, np.float32), audio])
        groups = [
            self.chunk_features(self._chunk_at(padded, i * SAMPLES_PER_FRAME))
            for i in range(0, n, self.chunksize[1])
        ]
        if not groups:
            return np.zeros((0, self.feat_dim), np.float32)
        return np.concatenate(groups)[:n]

    def stream(self) -> HubertStream:
        return HubertStream(self)


class HubertStream:
    """Incremental features: `push` audio of any length, get every frame whose chunk is
    complete; `flush` at the end for the rest. The concatenated output equals
    `HubertFeatureExtractor.features` of the concatenated audio, bit for bit.

    Latency: the first 5 frames need 4480 samples (280 ms), then 5 more per 3200 samples.
    """

    def __init__(self, extractor: HubertFeatureExtractor) -> None:
        self.extractor = extractor
        self.num_samples = 0  # audio received
        self.num_emitted = 0  # video frames returned so far
        self._closed = False
        # Padded-stream samples from `_buf_start` on, kept as pieces to make tiny pushes cheap.
        self._pieces: list[np.ndarray] = [np.zeros(extractor.front_pad, np.float32)]
        self._buffered = extractor.front_pad
        self._buf_start = 0

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.extractor.feat_dim), np.float32)

    def _buffer(self) -> np.ndarray:
        if len(self._pieces) > 1:
            self._pieces = [np.concatenate(self._pieces)]
        return self._pieces[0]

    def _next_start(self) -> int:
        """Start, in padded samples, of the chunk for the next frame group."""
        return self.num_emitted * SAMPLES_PER_FRAME

    def _emit(self, limit: int | None) -> np.ndarray:
        ex = self.extractor
        start = self._next_start()
        buf = self._buffer()
        feats = ex.chunk_features(ex._chunk_at(buf, start - self._buf_start))
        if limit is not None:
            feats = feats[:limit]
        self.num_emitted += feats.shape[0]
        # Drop what no later chunk needs.
        drop = self._next_start() - self._buf_start
        if drop > 0:
            self._pieces = [buf[drop:]]
            self._buffered -= min(drop, buf.shape[0])
            self._buf_start += drop
        return feats

    def push(self, pcm_16k: np.ndarray) -> np.ndarray:
        """Add mono 16 kHz float audio; returns the newly completed frames [k, D] (k may be 0)."""
        if self._closed:
            raise RuntimeError("push() after flush()")
        x = np.asarray(pcm_16k, dtype=np.float32).reshape(-1)
        if x.size:
            self._pieces.append(x)
            self._buffered += x.shape[0]
            self.num_samples += x.shape[0]
        out = []
        chunk_len = self.extractor.chunk_len
        while self._buf_start + self._buffered >= self._next_start() + chunk_len:
            out.append(self._emit(None))
        return np.concatenate(out) if out else self._empty()

    def flush(self) -> np.ndarray:
        """End of audio: the remaining frames (zero-padded chunks), up to N in total."""
        if self._closed:
            raise RuntimeError("flush() called twice")
        self._closed = True
        total = num_frames(self.num_samples)
        out = []
        while self.num_emitted < total:
            out.append(self._emit(total - self.num_emitted))
        return np.concatenate(out) if out else self._empty()
