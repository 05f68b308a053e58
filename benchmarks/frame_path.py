"""Ditto's frame path, stage by stage: paste-back (cv2 on the host vs torch on the device),
RGB -> YUV 4:2:0 on the device, encode (NVENC or x264; from RGB, or from the device's
4:2:0 planes), then warp and decode per runtime, in ms per frame (the quick host-side
figures first, kept if a slow runtime runs out of time).

Run by hand, e.g.::

    python benchmarks/frame_path.py                                   # CPU
    python benchmarks/frame_path.py --device cuda --runtimes torch,compile,onnx --fp16
    python benchmarks/frame_path.py --tiny --frame-sizes 512x512 --encode-frames 3  # smoke run

Full-size networks with random weights (weights do not change the speed; --tiny: the
tests' tiny sizes, to check the script in seconds); medians over
--repeats runs after a warm-up. Prints one JSON line per figure. Besides the runtimes,
``forms`` runs the networks' inference forms in PyTorch (what ``auto`` runs on CPU), to
tell whether they pay on this device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from talkinghead.export.onnx import example_inputs
from talkinghead.export.runtime import inference_form, runtime_network
from talkinghead.face import PasteBack
from talkinghead.face.device_paste import DevicePasteBack
from talkinghead.media.writer import VideoWriter
from talkinghead.media.yuv import rgb_to_yuv420
from talkinghead.models import OFFICIAL_NETWORKS


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def build(kind: str, tiny: bool) -> torch.nn.Module:
    sizes: dict = {}
    if tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from _tiny_release import SIZES

        sizes = SIZES[kind]
    return OFFICIAL_NETWORKS[kind].factory()(**sizes)


def emit(**row: object) -> None:
    print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runtimes", default="torch,onnx")
    p.add_argument("--fp16", action="store_true", help="autocast warp/decode (CUDA)")
    p.add_argument("--frame-sizes", default="512x512,1080x1920")
    p.add_argument("--encode-frames", type=int, default=50)
    p.add_argument("--tiny", action="store_true", help="the tests' tiny sizes (smoke run)")
    args = p.parse_args()
    device = torch.device(args.device)
    b = args.batch
    warp = build("warp_network", args.tiny).to(device).eval()
    decoder = build("decoder", args.tiny).to(device).eval()
    f_s, kp_s, kp_d = (x.to(device) for x in example_inputs("warp_network", 1, warp))
    f_b = f_s.expand(b, -1, -1, -1, -1)
    kp_s, kp_d = kp_s.expand(b, -1, -1), kp_d.expand(b, -1, -1)
    with torch.inference_mode():
        feature = warp(f_s, kp_s[:1], kp_d[:1])
    # The host-side stages first: quick, and kept if a slow runtime runs out of time.
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (b, 512, 512, 3), dtype=np.uint8)
    for size in args.frame_sizes.split(","):
        h, w_ = (int(v) for v in size.split("x"))
        frame = rng.integers(0, 256, (h, w_, 3), dtype=np.uint8)
        scale = min(h, w_) / 512 * 0.8
        M = np.array(
            [[scale, 0, (w_ - 512 * scale) / 2], [0, scale, (h - 512 * scale) / 2], [0, 0, 1]]
        )
        host = PasteBack()
        s = timed(
            lambda host=host, frame=frame, M=M: [host(frame, c, M) for c in crops],
            args.repeats,
            device,
        )
        emit(stage="paste", path="cv2 host", frame=size, ms_per_frame=round(s * 1e3 / b, 2))
        dev = DevicePasteBack()
        ft = torch.from_numpy(frame).to(device)[None].expand(b, -1, -1, -1)
        ct = torch.from_numpy(crops).to(device)
        s = timed(lambda dev=dev, ft=ft, ct=ct, M=M: dev(ft, ct, M).cpu(), args.repeats, device)
        emit(
            stage="paste",
            path=f"torch {device.type} (incl. uint8 download)",
            frame=size,
            ms_per_frame=round(s * 1e3 / b, 2),
        )
        pasted = dev(ft, ct, M)
        s = timed(lambda p=pasted: rgb_to_yuv420(p).cpu(), args.repeats, device)
        emit(
            stage="rgb->yuv420",
            path=f"torch {device.type} (incl. download, 1.5 B/px)",
            frame=size,
            ms_per_frame=round(s * 1e3 / b, 2),
        )
        planes = rgb_to_yuv420(torch.from_numpy(frame)[None])[0].numpy()
        for given in ("rgb", "yuv420"):
            out = Path(tempfile.mkdtemp()) / "enc.mp4"
            writer = VideoWriter(out, fps=25, preset="veryfast")
            t = time.perf_counter()
            for i in range(args.encode_frames):
                if given == "rgb":  # libswscale converts in the writer
                    writer.write(np.roll(frame, i * 3, axis=1))
                else:
                    writer.write_yuv420(np.roll(planes, i * 2, axis=1), (h, w_))
            writer.close()
            wall = time.perf_counter() - t
            emit(
                stage="encode",
                encoder=writer.encoder,
                given=given,
                frame=size,
                ms_per_frame=round(writer.encode_seconds * 1e3 / args.encode_frames, 2),
                wall_ms_per_frame=round(wall * 1e3 / args.encode_frames, 2),
            )
    cache = Path(tempfile.mkdtemp())
    reference = None
    for runtime in filter(None, args.runtimes.split(",")):  # "": host-side stages only
        if runtime == "forms":
            w, d = inference_form(warp), inference_form(decoder)
        else:
            w = runtime_network(
                warp, "warp_network", runtime, (f_s, kp_s[:1], kp_d[:1]), cache_dir=cache
            )
            d = runtime_network(decoder, "decoder", runtime, (feature,), cache_dir=cache)
        amp = args.fp16 and device.type == "cuda"

        def run_warp(w=w, amp=amp):
            with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=amp):
                return w(f_b, kp_s, kp_d)

        feat_b = run_warp()

        def run_decode(d=d, amp=amp, feat_b=feat_b):
            with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=amp):
                return d(feat_b)

        out = run_decode().float()
        if reference is None:
            reference = out
        err = float((out - reference).abs().max())
        for stage, fn in (("warp", run_warp), ("decode", run_decode)):
            s = timed(fn, args.repeats, device)
            emit(
                stage=stage,
                runtime=runtime,
                fp16=amp,
                batch=b,
                ms_per_frame=round(s * 1e3 / b, 2),
                max_abs_err_vs_first_runtime=err,
            )


if __name__ == "__main__":
    main()
