"""Warp and decoder per runtime on CPU, side by side with the official networks.

Run by hand, e.g.::

    python benchmarks/cpu_runtimes.py --official /path/to/ditto-talkinghead --repeats 3
    python benchmarks/cpu_runtimes.py --runtimes torch,onnx,auto --batch 4

Times ms per frame of the warp network and the decoder (full size, the release's
configuration, batch 1 as the release renders) for the official modules and for each of
our runtimes, the repeats interleaved so that load on a shared machine hits all alike;
figures are the minimum over the repeats. ``--official`` is a checkout of
antgroup/ditto-talkinghead: its `core.models.modules` are imported from there (nothing is
copied) and given our networks' weights (the parameter names are the same), so both run
the same numbers; the official ones run in float32 (the release's wrappers autocast to
float16 even on CPU, where one decoder frame takes over 10 minutes: RELEASE_BEHAVIOUR.md).
Every runtime's largest difference from the official (or our torch) output is printed.
``forms`` (a pseudo-runtime) times the networks' inference forms in PyTorch.
Weights do not change the speed: without ``--checkpoints`` they are random.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from talkinghead.export.runtime import inference_form, runtime_network
from talkinghead.models import OFFICIAL_NETWORKS, load_official

KINDS = ("warp_network", "decoder")
OFFICIAL_CLASSES = {"warp_network": "WarpingNetwork", "decoder": "SPADEDecoder"}


def build(kind: str, checkpoints: Path | None) -> nn.Module:
    if checkpoints is not None:
        path = checkpoints / "ditto_pytorch" / "models" / OFFICIAL_NETWORKS[kind].checkpoint_name
        return load_official(kind, path, device="cpu")
    return OFFICIAL_NETWORKS[kind].factory()().eval()


def official_network(kind: str, root: Path, ours: nn.Module) -> nn.Module:
    """The release's module class with our weights (its default arguments are the release's)."""
    sys.path.insert(0, str(root))
    from core.models import modules  # the official checkout's package

    net = getattr(modules, OFFICIAL_CLASSES[kind])()
    net.load_state_dict(ours.state_dict())
    return net.eval()


def inputs(kind: str, batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    if kind == "warp_network":
        kp = torch.rand(batch, 21, 3, generator=g) - 0.5
        return torch.randn(batch, 32, 16, 64, 64, generator=g) * 0.4, kp, kp + 0.02
    return (torch.randn(batch, 256, 64, 64, generator=g) * 0.2,)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--official", type=Path, default=None, help="official repo checkout")
    parser.add_argument("--checkpoints", type=Path, default=None)
    parser.add_argument("--runtimes", default="torch,compile,onnx,auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch}")

    columns: dict[str, dict[str, Callable[[], torch.Tensor]]] = {}
    errors: dict[tuple[str, str], float] = {}
    for kind in KINDS:
        ours = build(kind, args.checkpoints)
        x = inputs(kind, args.batch)
        runs: dict[str, Callable[[], torch.Tensor]] = {}
        if args.official is not None:
            official = official_network(kind, args.official, ours)
            runs["official"] = lambda net=official, x=x: net(*x)
        for runtime in args.runtimes.split(","):
            start = time.perf_counter()
            if runtime == "forms":
                net = inference_form(ours)
            else:
                net = runtime_network(ours, kind, runtime, x)
            runs[runtime] = lambda net=net, x=x: net(*x)
            with torch.inference_mode():
                runs[runtime]()  # export / compilation, reported apart from the timing
            print(f"{kind} {runtime}: ready in {time.perf_counter() - start:.1f} s", flush=True)
        with torch.inference_mode():
            reference = next(iter(runs.values()))()
            for name, run in runs.items():
                errors[kind, name] = (run().float() - reference).abs().max().item()
        columns[kind] = runs

    times: dict[tuple[str, str], list[float]] = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for kind, runs in columns.items():
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times.setdefault((kind, name), []).append(time.perf_counter() - start)

    names = list(columns["decoder"])
    base = names[0]
    per_frame = {
        name: {kind: min(times[kind, name]) * 1000 / args.batch for kind in KINDS} for name in names
    }
    print(f"\nms per frame (min of {args.repeats}); x = {base}'s time over this one's")
    print(
        f"{'runtime':10} {'warp':>9} {'decoder':>9} {'frame':>9} {'x':>6}   max |diff| warp, decoder"
    )
    for name in names:
        row = per_frame[name]
        total = sum(row.values())
        ratio = sum(per_frame[base].values()) / total
        diffs = ", ".join(f"{errors[kind, name]:.1e}" for kind in KINDS)
        print(
            f"{name:10} {row['warp_network']:9.0f} {row['decoder']:9.0f} {total:9.0f} {ratio:6.2f}"
            f"   {diffs}"
        )


if __name__ == "__main__":
    main()
