"""Audio files made for the tests: tones, and encodings of them with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode_with_pyav(path: Path, x: np.ndarray, sr: int, codec: str, fmt: str) -> None:
    """Float audio [n] or [2, n] -> a compressed file (the encoder's own sample format)."""
    layout = "stereo" if x.ndim == 2 else "mono"
    planes = x if x.ndim == 2 else x[None]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=sr, layout=layout)
        encoder_format = stream.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=encoder_format, layout=layout, rate=sr)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(planes), format="fltp", layout=layout
        )
        frame.sample_rate = sr
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(f):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
