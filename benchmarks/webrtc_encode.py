"""Server CPU per frame of a WebRTC session: aiortc's software VP8 encoder on a portrait.

What `talkinghead serve` adds per frame for a session with the ``webrtc`` control (on
top of rendering and the JPEG the worker already makes), at a few frame sizes.

    python benchmarks/webrtc_encode.py --image face.jpg
"""

from __future__ import annotations

import argparse
import fractions
import time

import av
import cv2
import numpy as np
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters


def encode_ms(image: np.ndarray, size: int, frames: int, warmup: int = 10) -> float:
    """Median milliseconds to VP8-encode one `size` x `size` frame (the face drifting)."""
    encoder = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000))
    base = cv2.resize(image, (size, size))
    times = []
    for i in range(frames + warmup):
        frame = av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="bgr24")
        frame.pts, frame.time_base = i * 3600, fractions.Fraction(1, 90_000)
        began = time.perf_counter()
        encoder.encode(frame)
        times.append(time.perf_counter() - began)
    return 1000 * float(np.median(times[warmup:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="a portrait (any size)")
    parser.add_argument("--sizes", default="256,512", help="comma-separated frame sizes")
    parser.add_argument("--frames", type=int, default=50)
    args = parser.parse_args()
    image = cv2.imread(args.image)
    if image is None:
        raise SystemExit(f"cannot read {args.image}: give a JPEG or PNG portrait")
    for size in (int(s) for s in args.sizes.split(",")):
        ms = encode_ms(image, size, args.frames)
        print(f"{size} px: {ms:.1f} ms/frame, {ms * 25 / 10:.0f} % of a core at 25 fps")


if __name__ == "__main__":
    main()
