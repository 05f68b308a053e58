"""Ditto end to end: per-stage time, frames/s, real-time factor, streaming first-frame
latency and peak memory against audio length.

Run by hand, e.g.::

    # the real release (CPU is ~18 s per 512 px frame: keep --seconds small there)
    python benchmarks/pipeline.py --checkpoints ./checkpoints --seconds 2
    # tiny networks of the same architectures (builds them in a temp dir): pipeline
    # overheads, and whether memory grows with the audio length
    python benchmarks/pipeline.py --tiny --seconds 10,60

Each duration runs in its own process so that peak RSS (ru_maxrss) is per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"


def speech(seconds: float, path: Path) -> Path:
    import soundfile as sf

    data, sr = sf.read(MEDIA / "ditto_example_speech.wav", dtype="float32")
    reps = int(np.ceil(seconds * sr / len(data)))
    sf.write(path, np.tile(data, reps)[: int(seconds * sr)], sr)
    return path


def run_once(args: argparse.Namespace, seconds: float) -> dict:
    from talkinghead.audio.io import load_audio
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    tmp = Path(tempfile.mkdtemp())
    audio = speech(seconds, tmp / "speech.wav")
    settings = {"steps": args.steps, "seed": 0, "device": args.device, "cache": False}
    settings["batch_size"] = args.batch_size
    if args.max_size:
        settings["max_size"] = args.max_size
    pipe = DittoPipeline.from_pretrained(args.checkpoints, download=False, **settings)
    stamps: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int | None) -> None:
        stamps.setdefault(stage, []).append(time.perf_counter())

    start = time.perf_counter()
    result = pipe.generate(args.source, audio, tmp / "out.mp4", progress=progress)
    total_s = time.perf_counter() - start
    stages = {k: round(v[-1] - v[0], 3) for k, v in stamps.items() if len(v) > 1}

    # Streaming: time from the first audio chunk to the first frame, 200 ms chunks in real time.
    pcm = load_audio(audio, 16000)
    session = pipe.stream(args.source, seed=0)
    first = None
    t0 = time.perf_counter()
    for i in range(0, len(pcm), 3200):
        target = t0 + i / 16000
        time.sleep(max(0.0, target - time.perf_counter()))
        if session.push(pcm[i : i + 3200]) and first is None:
            first = time.perf_counter() - t0
    rest = session.close()
    if first is None and rest:
        first = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "frames": result.num_frames,
        "total_s": round(total_s, 2),
        "fps": round(result.num_frames / total_s, 2),
        "real_time_factor": round(total_s / seconds, 2),
        "stage_span_s": stages,
        "stream_first_frame_s": None if first is None else round(first, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", type=Path)
    parser.add_argument("--tiny", action="store_true", help="build and use tiny networks")
    parser.add_argument("--source", type=Path, default=MEDIA / "ditto_example_face.jpg")
    parser.add_argument("--seconds", default="10")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-size", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_once(args, args.one)))
        return
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from _tiny_release import build_tiny_release

        args.checkpoints = build_tiny_release(Path(tempfile.mkdtemp()))
    if args.checkpoints is None:
        parser.error("give --checkpoints DIR or --tiny")
    for seconds in (float(s) for s in args.seconds.split(",")):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(seconds),
            "--checkpoints",
            str(args.checkpoints),
            "--source",
            str(args.source),
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--max-size",
            str(args.max_size),
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if out.returncode:
            sys.exit(out.stderr)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
