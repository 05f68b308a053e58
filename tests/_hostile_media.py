"""Broken and hostile media for the decoding tests: decompression bombs, truncated files.

Everything is made small and fast: the bomb is written row by row through zlib (never
held decoded in memory), so a test can measure what decoding it would cost.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import av
import numpy as np


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A 1-bit grey PNG of `width` x `height` zero pixels: ~17 KB for 12000x12000 (144 Mpx),
    which a decoder that trusts it expands to 144 MB (and 432 MB as RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\0" + bytes((width + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grey
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def truncated(source: Path, fraction: float, path: Path) -> Path:
    """The first `fraction` of `source`'s bytes, as a download cut short leaves them."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def noise_video(path: Path, frames: int = 30, codec: str = "libx264", size=(320, 240)) -> Path:
    """An mp4 of random frames with its index first (faststart), so that a cut-off copy
    still opens and shows its first frames: the case that must not pass as whole."""
    w, h = size
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        stream = c.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    return path
