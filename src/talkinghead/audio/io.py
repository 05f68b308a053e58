"""Decoding audio files to float32 mono at one sample rate (16 kHz for the speech encoder).

libsndfile (soundfile) reads wav/flac/ogg and friends exactly; anything else (mp3, m4a/aac,
opus, the audio track of a video...) goes through FFmpeg (PyAV). Channels are averaged
and the result resampled with soxr at high quality, which is what the release's
`librosa.load(path, sr=16000)` does, including its output length ceil(n * sr_out / sr_in).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from talkinghead.errors import MediaError


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample float audio [n] or [n, channels] with soxr (high quality).

    The length is ceil(n * sr_out / sr_in), as librosa's `resample(..., fix=True)` gives.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if sr_in == sr_out:
        return x.copy()
    n_out = -(-x.shape[0] * sr_out // sr_in)
    if x.shape[0] == 0:
        return np.zeros((0, *x.shape[1:]), dtype=np.float32)
    y = soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)
    if y.shape[0] > n_out:
        y = y[:n_out]
    elif y.shape[0] < n_out:
        y = np.concatenate([y, np.zeros((n_out - y.shape[0], *y.shape[1:]), np.float32)])
    return y


def pcm16_to_float32(data: bytes | bytearray | memoryview, channels: int = 1) -> np.ndarray:
    """Little-endian 16-bit PCM bytes (interleaved if channels > 1) -> float32 mono in [-1, 1)."""
    frame_bytes = 2 * channels
    if len(data) % frame_bytes:
        raise MediaError(
            f"PCM16 data of {len(data)} bytes is not a whole number of {channels}-channel samples"
        )
    x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return x


def _read_soundfile(path: Path) -> tuple[np.ndarray, int] | None:
    """[n, channels] float32 and the rate, or None if libsndfile does not know the format."""
    try:
        x, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    return x, int(sr)


def _read_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """[n, channels] float32 and the rate of the first audio stream, decoded by FFmpeg."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"{path}: not a readable audio file ({e})") from None
    with container:
        if not container.streams.audio:
            raise MediaError(f"{path}: the file has no audio stream")
        stream = container.streams.audio[0]
        # Planar float keeps each channel separate so they can be averaged like librosa does.
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        sr = stream.rate or stream.sample_rate
        try:
            for frame in container.decode(stream):
                sr = frame.sample_rate or sr
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        except (av.FFmpegError, OSError, ValueError) as e:
            if not chunks:
                raise MediaError(f"{path}: cannot decode the audio ({e})") from None
    if not chunks:
        return np.zeros((0, 1), np.float32), int(sr or 0)
    channels = min(c.shape[0] for c in chunks)  # a layout change mid-stream is not supported
    x = np.concatenate([c[:channels] for c in chunks], axis=1).T
    return np.ascontiguousarray(x, dtype=np.float32), int(sr)


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode an audio file to float32 mono in [-1, 1] at `sample_rate`."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if not path.is_file():
        raise MediaError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty")
    decoded = _read_soundfile(path)
    x, sr = decoded if decoded is not None else _read_ffmpeg(path)
    if x.shape[0] == 0:
        raise MediaError(f"{path}: the file contains no audio samples")
    if sr <= 0:
        raise MediaError(f"{path}: unknown sample rate")
    mono = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    y = resample(mono, sr, sample_rate)
    if not np.all(np.isfinite(y)):
        raise MediaError(f"{path}: the audio contains NaN or infinite samples")
    # Float files may exceed full scale and soxr may overshoot it slightly.
    return np.clip(y, -1.0, 1.0, out=y)
