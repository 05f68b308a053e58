"""Time Ditto's motion model: milliseconds per 80-frame window, DDIM sampling end to end.

Uses randomly initialised full-size LMDM weights (speed does not depend on the
values). Each configuration is warmed up with `--warmup` single denoiser calls, then the
whole sampling is timed `--repeats` times; the median and minimum are reported per
window (a call on a batch of B windows is divided by B).

    python benchmarks/motion.py                           # CPU (+ CUDA if present), 50/10 steps, batch 1/8
    python benchmarks/motion.py --devices cpu --steps 10 --batch 1 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from talkinghead.diffusion import DDIMSampler
from talkinghead.models.lmdm import LMDM


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_window(
    model: LMDM, steps: int, batch: int, device: torch.device, repeats: int, warmup: int
) -> tuple[float, float]:
    """Median and minimum milliseconds per window for `steps`-step sampling at `batch`."""
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    cond_frame = torch.randn(batch, cfg.motion_feat_dim, generator=g).to(device)
    cond = torch.randn(batch, cfg.seq_frames, cfg.audio_feat_dim, generator=g).to(device)
    sampler = DDIMSampler(num_steps=steps)
    x = torch.randn(batch, cfg.seq_frames, cfg.motion_feat_dim, generator=g).to(device)
    t = torch.full((batch,), cfg.n_timestep - 1, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):  # one denoiser call per warm-up: kernels, allocator, caches
            model(x, cond_frame, cond, t)
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            sampler(model, cond_frame, cond, generator=g)
            _sync(device)
            times.append((time.perf_counter() - start) * 1000 / batch)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 10], help="DDIM step counts")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="windows per call")
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, plus cuda if available"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per configuration")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed denoiser calls per configuration"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--audio-feat-dim", type=int, default=1103, help="condition width (1103 or 1059)"
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    # TF32 would change the numbers by ~1e-3; time what the conformance tests check.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'device':<8}{'steps':>6}{'batch':>6}{'ms/window':>12}{'min':>10}")
    for name in devices:
        device = torch.device(name)
        model = LMDM(audio_feat_dim=args.audio_feat_dim).to(device).eval()
        for steps in args.steps:
            for batch in args.batch:
                med, best = time_window(model, steps, batch, device, args.repeats, args.warmup)
                print(f"{name:<8}{steps:>6}{batch:>6}{med:>12.1f}{best:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
