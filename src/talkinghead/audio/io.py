"""Decoding audio files to float32 mono at one sample rate (16 kHz for the speech encoder).

libsndfile (soundfile) reads wav/flac/ogg and friends exactly; anything else (mp3, m4a/aac,
opus, the audio track of a video...) goes through FFmpeg (PyAV). Channels are averaged
and the result resampled with soxr at high quality, which is what the release's
`librosa.load(path, sr=16000)` does, including its output length ceil(n * sr_out / sr_in).

In-memory audio is accepted wherever a file is: an ``(array, sample_rate)`` pair, or a
bare array, which means 16 kHz. Arrays are mono ``[n]`` or multichannel with the
channel axis the shorter one (``[n, channels]`` as soundfile gives, or ``[channels, n]``
as torchaudio does); float samples are taken as they are, int16/int32 are scaled to [-1, 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr

from talkinghead.errors import MediaError
from talkinghead.media.video import ffmpeg_reason  # FFmpeg's words, no errno number

# What every audio argument accepts: a file, an (array, rate) pair, or a 16 kHz array.
AudioInput = str | os.PathLike | np.ndarray | tuple[np.ndarray, int]
DEFAULT_ARRAY_RATE = 16000
_MAX_CHANNELS = 16  # a 2-D array's channel axis is the shorter one, and at most this long
# An AAC track in MP4 decodes to whole 1024-sample frames, up to a frame (and its encoder
# delay) past the length the container declares; that much is cut, never more.
MAX_END_PADDING = 2048


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


def chunk_to_mono(
    chunk: np.ndarray | bytes | bytearray | memoryview, where: str = "audio chunk"
) -> np.ndarray:
    """A streamed chunk -> float32 mono in [-1, 1], as `load_audio` makes a whole file:
    PCM16 bytes, or an array as `read_audio` takes one (float, int16 or int32 samples;
    [n], [n, channels] or [channels, n]). The caller gives it at 16 kHz."""
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        x = pcm16_to_float32(chunk)
    else:
        x = _array_to_mono(chunk, where)
    if not np.all(np.isfinite(x)):
        raise MediaError(f"{where}: the audio contains NaN or infinite samples")
    return np.clip(x, -1.0, 1.0)


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
        raise MediaError(f"{path}: not a readable audio file ({ffmpeg_reason(e)})") from None
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
                raise MediaError(f"{path}: cannot decode the audio ({ffmpeg_reason(e)})") from None
        declared = _declared_samples(container, stream, sr)
    if not chunks:
        return np.zeros((0, 1), np.float32), int(sr or 0)
    channels = min(c.shape[0] for c in chunks)  # a layout change mid-stream is not supported
    x = np.concatenate([c[:channels] for c in chunks], axis=1).T
    if declared is not None and declared < len(x) <= declared + MAX_END_PADDING:
        x = x[:declared]  # the codec's last-frame padding, past the track's length
    return np.ascontiguousarray(x, dtype=np.float32), int(sr)


def _declared_samples(container: Any, stream: Any, sr: int | None) -> int | None:
    """The track's length in samples as an MP4/MOV container states it (exact there, unlike
    the estimates other formats give), or None."""
    if not sr or not stream.duration or not stream.time_base:
        return None
    if "mp4" not in (container.format.name or "").split(","):
        return None
    return round(stream.duration * stream.time_base * sr)


def _array_to_mono(samples: np.ndarray, where: str) -> np.ndarray:
    """A float/int16/int32 array [n], [n, ch] or [ch, n] -> float32 mono [n]."""
    x = np.asarray(samples)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32768.0
    elif x.dtype == np.int32:
        x = x.astype(np.float32) / 2147483648.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32, copy=False)
    else:
        raise MediaError(f"{where}: samples must be float, int16 or int32, got {x.dtype}")
    if x.ndim == 2 and min(x.shape) <= _MAX_CHANNELS:
        channel_axis = 1 if x.shape[1] <= x.shape[0] else 0
        return x.mean(axis=channel_axis, dtype=np.float32)
    if x.ndim != 1:
        raise MediaError(
            f"{where}: expected mono samples [n] or [n, channels], got an array of shape {x.shape}"
        )
    return x


def _check_audio_file(path: Path) -> None:
    """A `MediaError` naming the problem when `path` is not a non-empty regular file."""
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if not path.is_file():
        what = "a folder, not an audio file" if path.is_dir() else "not a regular file"
        raise MediaError(f"{path}: {what}; give a speech file (wav, mp3, ...)")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty")


def read_audio(source: AudioInput) -> tuple[np.ndarray, int]:
    """Audio as float32 mono at its own sample rate: (samples [n], rate).

    `source` is a file, an ``(array, sample_rate)`` pair or a bare array (16 kHz).
    Channels are averaged; nothing is resampled or clipped.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_audio_file(path)
        decoded = _read_soundfile(path)
        x, sr = decoded if decoded is not None else _read_ffmpeg(path)
        if x.shape[0] == 0:
            raise MediaError(f"{path}: the file contains no audio samples")
        if sr <= 0:
            raise MediaError(f"{path}: unknown sample rate")
        return (x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]), sr
    if isinstance(source, tuple):
        if len(source) != 2:
            raise MediaError("audio: expected an (array, sample_rate) pair")
        samples, sr = source
        if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
            raise MediaError(f"audio: the sample rate must be a positive integer, got {sr!r}")
    else:
        samples, sr = source, DEFAULT_ARRAY_RATE
    where = "audio array"
    mono = _array_to_mono(samples, where)
    if mono.shape[0] == 0:
        raise MediaError(f"{where}: no samples")
    if not np.all(np.isfinite(mono)):
        raise MediaError(f"{where}: the audio contains NaN or infinite samples")
    return mono, int(sr)


def to_sample_rate(
    mono: np.ndarray, rate: int, sample_rate: int, where: str = "audio"
) -> np.ndarray:
    """`read_audio`'s samples resampled to `sample_rate` and clipped to [-1, 1]."""
    y = resample(mono, rate, sample_rate)
    if not np.all(np.isfinite(y)):
        raise MediaError(f"{where}: the audio contains NaN or infinite samples")
    # Float files may exceed full scale and soxr may overshoot it slightly.
    return np.clip(y, -1.0, 1.0, out=y)


def audio_name(source: AudioInput) -> str:
    """How error messages name an audio argument."""
    return str(source) if isinstance(source, (str, os.PathLike)) else "audio array"


def load_audio(source: AudioInput, sample_rate: int = 16000) -> np.ndarray:
    """Decode a file (or take an in-memory array) to float32 mono in [-1, 1] at `sample_rate`."""
    mono, rate = read_audio(source)
    return to_sample_rate(mono, rate, sample_rate, audio_name(source))


def probe_audio(source: AudioInput) -> float:
    """Seconds of audio in `source`, after checking that it decodes and is not empty.

    Cheaper than `load_audio` for checking inputs up front: libsndfile formats are
    read from their header, and FFmpeg decodes only up to the first non-empty frame,
    so a long mp3 is not decoded twice. Raises `MediaError` like `load_audio`.
    """
    if not isinstance(source, (str, os.PathLike)):
        mono, rate = read_audio(source)
        return len(mono) / rate
    path = Path(source)
    _check_audio_file(path)
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        return _probe_ffmpeg(path)
    if info.frames <= 0 or info.samplerate <= 0:
        raise MediaError(f"{path}: the file contains no audio samples")
    return info.frames / info.samplerate


def _probe_ffmpeg(path: Path) -> float:
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"{path}: not a readable audio file ({ffmpeg_reason(e)})") from None
    with container:
        if not container.streams.audio:
            raise MediaError(f"{path}: the file has no audio stream")
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                if frame.samples:
                    if stream.duration and stream.time_base:
                        return float(stream.duration * stream.time_base)
                    if container.duration:
                        return container.duration / av.time_base
                    return frame.samples / frame.sample_rate  # at least this much
        except (av.FFmpegError, OSError, ValueError) as e:
            raise MediaError(f"{path}: cannot decode the audio ({ffmpeg_reason(e)})") from None
    raise MediaError(f"{path}: the file contains no audio samples")
