"""fp16 and bf16 against fp32, network by network, on the same inputs.

For each Ditto network (appearance extractor, motion extractor, warp, decoder,
stitching, LMDM) this runs the fp32 network once and then each reduced precision, in
two ways: ``cast`` (weights and floating inputs converted to the dtype, as a
half-precision export runs) and ``autocast`` (``torch.autocast``, as the pipeline's
``fp16`` setting runs the renderer). It prints the max and mean absolute error of the
outputs against fp32, the largest fp32 output magnitude for scale, and the time.
A precision with no kernels on the device (fp16 convolutions on many CPUs) is reported
as ``unsupported`` with the error torch gave: run it on a GPU.

    python benchmarks/precision.py                          # CPU, full-size random weights
    python benchmarks/precision.py --device cuda
    python benchmarks/precision.py --tiny --networks decoder,lmdm   # seconds, for a smoke run

Random weights (default init, the seed fixed) and the export's example inputs of the
release's shapes; trained weights change the figures somewhat, not their order.
Prints one JSON line per (network, dtype, mode).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from talkinghead.export.onnx import example_inputs
from talkinghead.models import OFFICIAL_NETWORKS

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
NETWORKS = (
    "appearance_extractor",
    "motion_extractor",
    "warp_network",
    "decoder",
    "stitch_network",
    "lmdm",
)


def tensors(out: object) -> Iterator[torch.Tensor]:
    """Every tensor in a network's output (a tensor, a tuple/list or a dict of them)."""
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for key in sorted(out):
            yield from tensors(out[key])
    elif isinstance(out, list | tuple):
        for item in out:
            yield from tensors(item)


def flat(out: object) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten().cpu() for t in tensors(out)])


def build(kind: str, tiny: bool, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = tiny_sizes()[kind] if tiny else {}
    return OFFICIAL_NETWORKS[kind].factory()(**kwargs).to(device).eval()


def tiny_sizes() -> dict[str, dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _tiny_release import SIZES

    return SIZES


def run(net: torch.nn.Module, inputs: tuple, device: torch.device, dtype, mode: str):
    """(output, seconds) of `net` at `dtype` (None: fp32) in `mode` (cast or autocast)."""
    if dtype is not None and mode == "cast":
        net = net.to(dtype)
        inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    start = time.perf_counter()
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype or torch.float32, enabled=mode == "autocast"),
    ):
        out = net(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if dtype is not None and mode == "cast":
        net.float()  # back to fp32 for the next run
    return out, seconds


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--networks", default=",".join(NETWORKS))
    p.add_argument("--dtypes", default="bf16,fp16")
    p.add_argument("--modes", default="cast,autocast")
    p.add_argument("--tiny", action="store_true", help="the tests' tiny sizes (smoke run)")
    p.add_argument(
        "--cpu-fp16",
        default="motion_extractor,stitch_network,lmdm",
        help="networks to run in fp16 on CPU (its fp16 conv3d/conv2d fall back to slow "
        "reference kernels: the tiny warp takes 41 s against 0.15 s in fp32, the full-size appearance extractor over 5 min against 2.6 s)",
    )
    args = p.parse_args()
    device = torch.device(args.device)
    for kind in args.networks.split(","):
        net = build(kind, args.tiny, device)
        inputs = tuple(x.to(device) for x in example_inputs(kind, 1, net))
        if args.tiny and kind == "warp_network":  # the tiny feature volume's shape
            spec = tiny_sizes()[kind]
            c, d = spec["reshape_channel"], spec["dense_motion"]["reshape_depth"]
            inputs = (torch.rand(1, c, d, 64, 64, device=device), *inputs[1:])
        if args.tiny and kind == "decoder":
            inputs = (torch.rand(1, net.fc.in_channels, 64, 64, device=device),)
        ref, ref_s = run(net, inputs, device, None, "fp32")
        ref = flat(ref)
        scale = float(ref.abs().max())
        for name in args.dtypes.split(","):
            for mode in args.modes.split(","):
                row = {"network": kind, "dtype": name, "mode": mode, "device": device.type}
                if device.type == "cpu" and name == "fp16" and kind not in args.cpu_fp16:
                    print(json.dumps({**row, "skipped": "CPU fp16 too slow: GPU"}), flush=True)
                    continue
                try:
                    out, s = run(net, inputs, device, DTYPES[name], mode)
                except (RuntimeError, NotImplementedError) as exc:
                    net.float()
                    msg = str(exc).splitlines()[0][:120]
                    print(json.dumps({**row, "unsupported": msg}), flush=True)
                    continue
                err = (flat(out) - ref).abs()
                row |= {
                    "max_abs_err": float(err.max()),
                    "mean_abs_err": float(err.mean()),
                    "fp32_max_abs": scale,
                    "nonfinite": int((~torch.isfinite(flat(out))).sum()),
                    "seconds": round(s, 3),
                    "fp32_seconds": round(ref_s, 3),
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
