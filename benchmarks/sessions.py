"""Many live sessions on one device: N concurrent streams with and without shared batching.

For each session count N, N streams (different sources: the portrait and its mirror image
in turn; different seeds) run concurrently in threads, fed 200 ms chunks as fast as they are
taken, once on a plain pipeline and once on the same networks with ``shared_batching``.
Printed per run: frames/s in all and per session (mean and slowest), the worker's calls
(motion windows and render requests, and how many streams each call held on average), and
how far the shared run's frames are from the plain run's (max grey levels, share of pixels
that differ). ``--motion-only`` times just the motion model: N streams' DDIM windows of the
full-size LMDM (random weights) through the shared worker against each stream sampling alone.

    python benchmarks/sessions.py --tiny --sessions 1,2,4 --seconds 2
    python benchmarks/sessions.py --motion-only --sessions 1,2,4,8 --steps 10 --windows 4
    python benchmarks/sessions.py --checkpoints ./checkpoints --device cuda --sessions 1,4,8,16

The GPU is what shared batching is for: there a stream alone leaves the device mostly idle
(small launches: 2 x 8 decoder layers per DDIM step at batch 2, warp and decode at batch 4),
and one batched call costs about as much as one stream's. On a CPU the cores are busy with
any batch, so batching gains little and the single worker thread serialises what the
streams' own threads would run side by side (and ``--runtime compile`` adds CUDA graphs only
on CUDA).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("TALKINGHEAD_MEDIA_DIR", REPO.parent / "shared" / "media"))
RATE = 16000
CHUNK = RATE // 5  # 200 ms pushes, as the server's clients send


def run_streams(pipe: Any, avatars: list, pcm: np.ndarray, n: int) -> dict[str, Any]:
    """N concurrent streams pushed as fast as they go; their frames and times."""
    barrier = threading.Barrier(n + 1)
    results: list[dict[str, Any]] = [{} for _ in range(n)]

    def one(k: int) -> None:
        session = pipe.stream(avatars[k % len(avatars)], seed=k)
        barrier.wait()
        start = time.perf_counter()
        frames: list[np.ndarray] = []
        for i in range(0, len(pcm), CHUNK):
            frames += session.push(pcm[i : i + CHUNK])
        frames += session.close()
        results[k] = {"frames": frames, "seconds": time.perf_counter() - start}

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    per = [len(r["frames"]) / r["seconds"] for r in results]
    return {
        "results": results,
        "total_fps": sum(len(r["frames"]) for r in results) / wall,
        "session_fps_mean": statistics.mean(per),
        "session_fps_min": min(per),
    }


def frame_difference(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[int, float]:
    """Max grey-level difference and the share of differing pixels between two runs."""
    diff = np.stack([np.abs(x.astype(int) - y.astype(int)) for x, y in zip(a, b, strict=True)])
    return int(diff.max()), float((diff > 0).mean())


def pipelines(args: argparse.Namespace) -> tuple[Any, Any, list]:
    from PIL import Image

    from talkinghead.methods.ditto.pipeline import DittoPipeline

    checkpoints = args.checkpoints
    if checkpoints is None:
        sys.path.insert(0, str(REPO / "tests"))
        from _tiny_release import build_tiny_release

        checkpoints = build_tiny_release(Path(tempfile.mkdtemp()))
    settings = {"steps": args.steps, "seed": 0, "device": args.device, "cache": False}
    settings |= {"batch_size": args.batch_size, "runtime": args.runtime}
    if args.max_size:
        settings["max_size"] = args.max_size
    plain = DittoPipeline.from_pretrained(
        checkpoints, download=False, hubert=args.hubert, **settings
    )
    batching = {"max_batch": args.max_batch, "gather_ms": args.gather_ms}
    shared = DittoPipeline(plain.models, plain.config, shared_batching=batching)
    image = np.asarray(Image.open(args.source).convert("RGB"))
    avatars = [plain.register(image), plain.register(np.ascontiguousarray(image[:, ::-1]))]
    return plain, shared, avatars


def sessions(args: argparse.Namespace) -> None:
    import soundfile as sf

    from talkinghead.audio.io import resample

    plain, shared, avatars = pipelines(args)
    data, sr = sf.read(MEDIA / "ditto_example_speech.wav", dtype="float32")
    pcm = resample(data, sr, RATE)[: int(args.seconds * RATE)]
    print(
        f"networks: {'tiny' if args.checkpoints is None else args.checkpoints}, device "
        f"{plain.device}, steps {args.steps}, batch {args.batch_size}, {args.seconds} s of "
        f"speech per session, torch {torch.get_num_threads()} CPU threads"
    )
    print(
        f"{'sessions':>8} {'mode':>7} {'fps all':>8} {'fps/session':>12} {'slowest':>8} "
        f"{'windows/call':>13} {'renders/call':>13} {'max diff':>9} {'pixels diff':>12}"
    )
    for n in args.sessions:
        base = run_streams(plain, avatars, pcm, n)
        before = shared.batcher.stats
        got = run_streams(shared, avatars, pcm, n)
        after = shared.batcher.stats
        diffs = [
            frame_difference(a["frames"], b["frames"])
            for a, b in zip(base["results"], got["results"], strict=True)
        ]
        per_call = {}
        for kind in ("window", "render"):
            calls = getattr(after, kind).batches - getattr(before, kind).batches
            reqs = getattr(after, kind).requests - getattr(before, kind).requests
            per_call[kind] = reqs / calls if calls else 0.0
        for mode, row in (("plain", base), ("shared", got)):
            extra = (
                f"{per_call['window']:>13.2f} {per_call['render']:>13.2f} "
                f"{max(d[0] for d in diffs):>9d} {max(d[1] for d in diffs):>12.2e}"
                if mode == "shared"
                else ""
            )
            print(
                f"{n:>8} {mode:>7} {row['total_fps']:>8.2f} {row['session_fps_mean']:>12.2f} "
                f"{row['session_fps_min']:>8.2f} {extra}",
                flush=True,
            )
    print(f"CUDA graphs for the motion model: {shared.batcher.cuda_graphs}")


def time_windows(
    model: Any, sampler: Any, conds: list, args: argparse.Namespace, batcher: Any
) -> tuple[float, list[torch.Tensor]]:
    """Each stream (a thread) samples ``--windows`` windows, alone or through ``batcher``;
    windows per second in all, and each stream's windows."""
    device = torch.device(args.device)
    n = len(conds)
    outputs: list[torch.Tensor] = [torch.empty(0)] * n
    barrier = threading.Barrier(n + 1)

    def stream(k: int) -> None:
        g = torch.Generator().manual_seed(k)
        client = batcher.connect() if batcher is not None else None
        cf, c = conds[k]
        barrier.wait()
        out = []
        for _ in range(args.windows):
            if client is None:
                out.append(sampler(model, cf.to(device), c.to(device), generator=g).cpu())
            else:
                graphs = args.runtime == "compile"
                out.append(
                    client.sample_window(model, sampler, cf, c, g, device=device, graphs=graphs)
                )
        if client is not None:
            client.close()
        outputs[k] = torch.cat(out)

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return n * args.windows / (time.perf_counter() - start), outputs


def motion_only(args: argparse.Namespace) -> None:
    """N streams' windows of the full-size LMDM: sampled alone (each in its thread) or shared."""
    from talkinghead.diffusion import DDIMSampler
    from talkinghead.methods.ditto.batching import BatchingConfig, SharedBatcher
    from talkinghead.models.lmdm import LMDM

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = LMDM().eval().to(device)
    sampler = DDIMSampler(num_steps=args.steps)
    cfg = model.config
    batcher = SharedBatcher(
        BatchingConfig(max_batch=args.max_batch, gather_ms=args.gather_ms), lambda *a: (None, None)
    )

    def conds(n: int) -> list:
        return [
            (
                torch.randn(1, cfg.motion_feat_dim),
                torch.randn(1, cfg.seq_frames, cfg.audio_feat_dim),
            )
            for _ in range(n)
        ]

    # Warm-up (allocator, kernels; CUDA graph capture for every batch size to come).
    for n in sorted({1 << (k - 1).bit_length() for k in args.sessions}):
        time_windows(
            model, sampler, conds(n), argparse.Namespace(**{**vars(args), "windows": 1}), batcher
        )
    print(
        f"full-size LMDM (random weights), {device}, {args.steps} steps, {args.windows} windows "
        f"per stream, torch {torch.get_num_threads()} CPU threads"
    )
    print(
        f"{'streams':>7} {'alone w/s':>10} {'shared w/s':>11} {'max |diff|':>11} {'windows/call':>13}"
    )
    for n in args.sessions:
        inputs = conds(n)
        alone_rate, alone = time_windows(model, sampler, inputs, args, None)
        before = batcher.stats.window
        shared_rate, shared = time_windows(model, sampler, inputs, args, batcher)
        after = batcher.stats.window
        diff = max((a - b).abs().max().item() for a, b in zip(alone, shared, strict=True))
        per_call = (after.requests - before.requests) / max(after.batches - before.batches, 1)
        print(
            f"{n:>7} {alone_rate:>10.2f} {shared_rate:>11.2f} {diff:>11.1e} {per_call:>13.2f}",
            flush=True,
        )
    print(f"CUDA graphs for the motion model: {batcher.cuda_graphs}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoints", type=Path, help="a release folder (default: tiny networks)"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny networks (the default)")
    parser.add_argument("--motion-only", action="store_true", help="time the LMDM windows only")
    parser.add_argument("--hubert", help="a HuBERT id/path when the release's ONNX is absent")
    parser.add_argument("--source", type=Path, default=MEDIA / "ditto_example_face.jpg")
    parser.add_argument("--sessions", default="1,2,4", help="session counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=2.0, help="speech per session")
    parser.add_argument("--windows", type=int, default=4, help="--motion-only: windows per stream")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="torch", help="compile: CUDA graphs for the LMDM")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--gather-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.sessions = [int(s) for s in args.sessions.split(",")]
    torch.backends.cuda.matmul.allow_tf32 = False  # time what the tests check
    torch.backends.cudnn.allow_tf32 = False
    if args.motion_only:
        motion_only(args)
    else:
        sessions(args)


if __name__ == "__main__":
    main()
