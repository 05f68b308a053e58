"""Batch generation throughput: videos per hour and frames per second with 1 and 2 workers,
and what each job costs besides rendering (model load, registration, encoding).

Run by hand, e.g.::

    # tiny networks of the release's architectures (built in a temp dir), on the CPU
    python benchmarks/batch.py --tiny --jobs 8 --seconds 1 --workers 1,2
    # the same over a local Ray instance
    python benchmarks/batch.py --tiny --jobs 8 --workers 1,2 --ray
    # full-size networks with random weights (speed does not depend on the values) on GPUs
    python benchmarks/batch.py --full --devices cuda:0 --workers 1,2 --seconds 4
    # the real release
    python benchmarks/batch.py --checkpoints ./checkpoints --devices cuda:0,cuda:1 --workers 1,2

Each worker count runs the same job file (`--jobs` jobs over `--sources` portraits: the
example face and mirrored copies, `--seconds` of the example speech each) into a fresh
output folder with a fresh avatar cache, through `talkinghead.batch.run_batch`. Reported:
wall time, videos/hour and frames/s (model loading included, as a user sees it); per job
the model load (once per worker), registration (first sight of a portrait vs. reuse),
motion and render+encode seconds; and encoding alone (the H.264/AAC writer re-encoding
one finished video's frames with the pipeline's settings).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("TALKINGHEAD_MEDIA_DIR", REPO.parent / "shared" / "media"))


def speech(seconds: float, path: Path) -> Path:
    import soundfile as sf

    data, sr = sf.read(MEDIA / "ditto_example_speech.wav", dtype="float32")
    reps = int(np.ceil(seconds * sr / len(data)))
    sf.write(path, np.tile(data, reps)[: int(seconds * sr)], sr)
    return path


def full_size_release(root: Path) -> Path:
    """The release's layout with full-size networks, random weights, and a stand-in HuBERT
    of the real feature size (a strided convolution: its cost is not HuBERT's)."""
    sys.path.insert(0, str(REPO / "tests"))
    import torch

    from _tiny_release import tiny_hubert_onnx
    from talkinghead.models import OFFICIAL_NETWORKS, save_official

    models = root / "ditto_pytorch" / "models"
    aux = root / "ditto_pytorch" / "aux_models"
    models.mkdir(parents=True, exist_ok=True)
    aux.mkdir(parents=True, exist_ok=True)
    for i, (kind, spec) in enumerate(OFFICIAL_NETWORKS.items()):
        torch.manual_seed(i)
        save_official(spec.factory()(), kind, models / spec.checkpoint_name)
    tiny_hubert_onnx(aux / "hubert_streaming_fix_kv.onnx", dim=1024)
    return root


def make_jobs(folder: Path, args: argparse.Namespace) -> Path:
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    audio = speech(args.seconds, folder / "speech.wav")
    sources = [args.source]
    with Image.open(args.source) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        for k in range(1, args.sources):
            # Another portrait to the cache: mirrored, and one pixel column less per copy.
            copy = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k % 2 else im
            copy = copy.crop((0, 0, copy.width - k, copy.height))
            copy.save(folder / f"source{k}.png")
            sources.append(folder / f"source{k}.png")
    rows = ["source,audio,output,steps,seed,max_size"]
    for j in range(args.jobs):
        rows.append(
            f"{sources[j % len(sources)]},{audio},out/video{j:03d}.mp4,{args.steps},{j},"
            f"{args.max_size}"
        )
    jobs = folder / "jobs.csv"
    jobs.write_text("\n".join(rows) + "\n")
    return jobs


def encode_seconds(video: Path) -> tuple[float, int]:
    """Seconds to write `video`'s frames and audio again with the pipeline's writer."""
    import av

    from talkinghead.audio.io import load_audio
    from talkinghead.media.writer import open_writer
    from talkinghead.methods.ditto.pipeline import MUX_RATE, video_options

    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    audio = load_audio(video, MUX_RATE)
    target = video.with_name("reencoded.mp4")
    start = time.perf_counter()
    writer = open_writer(target, fps=25, audio=(audio, MUX_RATE), **video_options(target))
    for frame in frames:
        writer.write(frame)
    writer.close()
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds, len(frames)


def run_once(args: argparse.Namespace, workers: int, checkpoints: Path, work: Path) -> dict:
    from talkinghead.batch import run_batch

    folder = work / f"run-{workers}-workers"
    os.environ["TALKINGHEAD_CACHE"] = str(folder / "cache")  # every run registers afresh
    jobs = make_jobs(folder, args)
    report = run_batch(
        jobs,
        checkpoints=checkpoints,
        download=False,
        workers=workers,
        devices=args.devices.split(",") if args.devices else None,
        ray=True if args.ray else None,
        ditto={"batch_size": args.batch_size, "fp16": args.fp16},
    )
    done = report.done
    if report.failed:
        raise SystemExit(f"jobs failed: {[(r.key, r.reason) for r in report.failed]}")

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 3) if values else None

    first = [r.timings["register"] for r in done if not r.timings.get("avatar_cached")]
    reused = [r.timings["register"] for r in done if r.timings.get("avatar_cached")]
    enc_s, enc_frames = encode_seconds(Path(done[0].output))
    return {
        "workers": workers,
        "backend": report.backend,
        "devices": sorted({w.device for w in report.workers}),
        "jobs": len(done),
        "frames_per_job": done[0].frames,
        "wall_s": round(report.seconds, 2),
        "videos_per_hour": round(report.videos_per_hour, 1),
        "frames_per_s": round(report.frames_per_second, 2),
        "model_load_s": median([w.load_seconds for w in report.workers if w.load_seconds]),
        "register_first_s": median(first),
        "register_reused_s": median(reused),
        "motion_s": median([r.timings["motion"] for r in done]),
        "render_and_encode_s": median([r.timings["render"] for r in done]),
        "job_s": median([r.seconds for r in done]),
        "encode_only_s": round(enc_s, 3),
        "encode_ms_per_frame": round(1000 * enc_s / enc_frames, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--tiny", action="store_true", help="build and use tiny networks")
    what.add_argument("--full", action="store_true", help="full-size networks, random weights")
    what.add_argument("--checkpoints", type=Path, help="a release folder")
    parser.add_argument("--source", type=Path, default=MEDIA / "ditto_example_face.jpg")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--sources", type=int, default=2, help="distinct portraits")
    parser.add_argument("--seconds", type=float, default=1.0, help="speech per job")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--devices", default=None, help="e.g. cuda:0,cuda:1 (default: auto)")
    parser.add_argument("--ray", action="store_true", help="run on a local Ray instance")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not (args.tiny or args.full or args.checkpoints):
        parser.error("give --tiny, --full or --checkpoints DIR")
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:  # removed at the end
        work = Path(tmp)
        if args.tiny:
            sys.path.insert(0, str(REPO / "tests"))
            from _tiny_release import build_tiny_release

            checkpoints = build_tiny_release(work / "release")
        elif args.full:
            checkpoints = full_size_release(work / "release")
        else:
            checkpoints = args.checkpoints
        results = [run_once(args, int(w), checkpoints, work) for w in args.workers.split(",")]
    for r in results:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
