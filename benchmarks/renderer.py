"""Renderer speed: ms/frame of extract (appearance + motion), warp and decode.

Run by hand, e.g.::

    python benchmarks/renderer.py                       # CPU, fp32, batch 1 and 8
    python benchmarks/renderer.py --device cuda --variants fp32,fp16,bf16,channels_last,compile
    python benchmarks/renderer.py --checkpoints ./checkpoints --batch-sizes 1 --repeats 3

Weights do not change the speed, so without --checkpoints the networks keep their
random initialisation. Figures are medians over --repeats timed runs after one warm-up.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from talkinghead.models import OFFICIAL_NETWORKS, load_official

STAGES = {
    "extract": ("appearance_extractor", "motion_extractor"),
    "warp": ("warp_network",),
    "decode": ("decoder",),
}


def build(kind: str, checkpoints: Path | None, device: str) -> nn.Module:
    if checkpoints is not None:
        path = checkpoints / "ditto_pytorch" / "models" / OFFICIAL_NETWORKS[kind].checkpoint_name
        return load_official(kind, path, device=device)
    return OFFICIAL_NETWORKS[kind].factory()().to(device).eval()


def inputs(stage: str, batch: int, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    if stage == "extract":
        return (torch.rand(batch, 3, 256, 256, generator=g).to(device),)
    if stage == "warp":
        kp = (torch.rand(batch, 21, 3, generator=g) - 0.5).to(device)
        return torch.randn(batch, 32, 16, 64, 64, generator=g).to(device) * 0.4, kp, kp + 0.02
    return (torch.randn(batch, 256, 64, 64, generator=g).to(device) * 0.2,)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, repeats: int) -> float:
    fn()  # warm-up (and compilation for torch.compile)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--stages", default="extract,warp,decode")
    parser.add_argument(
        "--variants", default="fp32", help="comma list of fp32, fp16, bf16, channels_last, compile"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoints", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        # fp32 figures should be real fp32; TF32 is a separate speed/accuracy trade.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'stage':8} {'variant':14} {'batch':>5} {'ms/batch':>10} {'ms/frame':>10}")
    for stage in args.stages.split(","):
        for variant in args.variants.split(","):
            nets = [build(k, args.checkpoints, args.device) for k in STAGES[stage]]
            if (
                variant == "channels_last" and stage != "warp"
            ):  # the warp is 3-D; NDHWC is no help there
                nets = [n.to(memory_format=torch.channels_last) for n in nets]
            if variant == "compile":
                nets = [torch.compile(n) for n in nets]
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(variant)
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                x = inputs(stage, batch, args.device)
                if variant == "channels_last" and x[0].ndim == 4:
                    x = (x[0].contiguous(memory_format=torch.channels_last), *x[1:])

                def run(nets=nets, x=x, dtype=dtype) -> None:
                    autocast = (
                        torch.autocast(args.device.split(":")[0], dtype=dtype)
                        if dtype is not None
                        else contextlib.nullcontext()
                    )
                    with torch.inference_mode(), autocast:
                        for net in nets:
                            net(*x)

                ms = time_ms(run, args.device, args.repeats)
                print(
                    f"{stage:8} {variant:14} {batch:5d} {ms:10.1f} {ms / batch:10.1f}", flush=True
                )


if __name__ == "__main__":
    main()
