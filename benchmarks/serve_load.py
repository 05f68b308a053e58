"""Load test of `talkinghead serve` on loopback: N concurrent sessions streaming speech.

Starts the server as a subprocess on 127.0.0.1 (a free port), uploads the example
portrait, runs `--sessions` clients at once, each sending `--seconds` of speech in
`--chunk-ms` chunks (paced in real time unless --burst), and reports:

  first-frame latency  first audio byte sent -> first frame received (p50/p95 over sessions)
  frame lag            how late each frame arrives after its audio was sent (p50/p95/max)
  throughput           frames/s over all sessions, and the real-time factor
  dropped frames       frames the server dropped for slow readers (from the end messages)

Everything is bounded: the server is stopped at the end, every session has a deadline.

    # tiny networks of the release's architectures (built in a temp dir)
    python benchmarks/serve_load.py --tiny --sessions 4 --seconds 10
    # the real release
    python benchmarks/serve_load.py --checkpoints ./checkpoints --sessions 2 --seconds 10 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def speech(seconds: float) -> np.ndarray:
    from talkinghead.audio.io import load_audio

    pcm = load_audio(MEDIA / "ditto_example_speech.wav", 16000)
    reps = int(np.ceil(seconds * 16000 / len(pcm)))
    return np.tile(pcm, reps)[: round(seconds * 16000)]


def start_server(args: argparse.Namespace, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "talkinghead", "serve",
        "--checkpoints", str(args.checkpoints), "--no-download",
        "--host", "127.0.0.1", "--port", str(port),
        "--max-sessions", str(args.sessions),
        "--device", args.device, "--batch-size", str(args.batch_size),
        "--log-level", "warning",
    ]  # fmt: skip
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.max_size:
        cmd += ["--max-size", str(args.max_size)]
    log = open(log_path, "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the server did not become healthy")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run(args: argparse.Namespace) -> dict:
    from talkinghead.serve.client import stream_audio, upload_avatar

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    proc = start_server(args, port, work / "server.log")
    try:
        t = time.perf_counter()
        wait_healthy(url, proc, args.startup_timeout)
        startup_s = time.perf_counter() - t
        avatar = upload_avatar(url, args.source)["id"]
        pcm = speech(args.seconds)
        results: list[dict] = [{} for _ in range(args.sessions)]

        def client(k: int) -> None:
            arrivals: list[tuple[int, float]] = []
            try:
                r = stream_audio(
                    f"ws://127.0.0.1:{port}/ws",
                    avatar,
                    pcm,
                    controls={"seed": k},
                    chunk_ms=args.chunk_ms,
                    realtime=not args.burst,
                    keep_frames=False,
                    on_frame=lambda i, ts, jpeg: arrivals.append((i, time.perf_counter())),
                    timeout=args.session_timeout,
                )
            except Exception as exc:
                results[k] = {"error": f"{type(exc).__name__}: {exc}"}
                return
            t0 = r.first_audio_at
            # Frame i's audio has all been sent at t0 + (i + 1) / 25 (real-time pacing).
            lags = [at - t0 - (i + 1) / 25 for i, at in arrivals]
            results[k] = {
                "frames": len(r.frames),
                "expected": r.end["expected_frames"],
                "dropped": r.end["dropped"],
                "first_frame_latency_s": r.first_frame_latency,
                "wall_s": r.finished_at - t0,
                "lags": lags,
            }

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.sessions)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join(args.session_timeout + 30)
        wall = time.perf_counter() - t
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        stop_server(proc)

    ok = [r for r in results if "frames" in r]
    latencies = [r["first_frame_latency_s"] for r in ok if r["first_frame_latency_s"] is not None]
    lags = [lag for r in ok for lag in r["lags"]]
    frames = sum(r["frames"] for r in ok)
    server_dropped = next(
        (float(line.split()[-1]) for line in metrics.splitlines()
         if line.startswith("talkinghead_frames_dropped_total")),
        None,
    )  # fmt: skip
    return {
        "sessions": args.sessions,
        "audio_seconds_per_session": args.seconds,
        "chunk_ms": args.chunk_ms,
        "pacing": "burst" if args.burst else "realtime",
        "server_startup_s": round(startup_s, 2),
        "completed": len(ok),
        "errors": [r["error"] for r in results if "error" in r],
        "frames": frames,
        "frames_expected": sum(r["expected"] for r in ok),
        "dropped_frames": sum(r["dropped"] for r in ok),
        "server_dropped_frames_total": server_dropped,
        "first_frame_latency_s": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "all": [round(x, 3) for x in latencies],
        },
        "frame_lag_s": {
            "p50": percentile(lags, 50),
            "p95": percentile(lags, 95),
            "max": max(lags) if lags else None,
        },
        "wall_s": round(wall, 2),
        "throughput_fps": round(frames / wall, 2) if wall else None,
        "realtime_factor": round(args.sessions * args.seconds / wall, 3) if wall else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", type=Path, help="release checkpoints directory")
    parser.add_argument("--tiny", action="store_true", help="build and use tiny networks")
    parser.add_argument("--source", type=Path, default=MEDIA / "ditto_example_face.jpg")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="speech per session")
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    parser.add_argument("--burst", action="store_true", help="send audio as fast as possible")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (tiny: 2)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-size", type=int, default=None, help="avatar size (tiny: 256)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--session-timeout", type=float, default=900.0)
    args = parser.parse_args()
    if args.sessions < 1 or args.seconds <= 0:
        parser.error("--sessions >= 1 and --seconds > 0")
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from _tiny_release import build_tiny_release

        args.checkpoints = build_tiny_release(Path(tempfile.mkdtemp()))
        args.steps = args.steps or 2
        args.max_size = args.max_size or 256
    elif args.checkpoints is None:
        parser.error("give --checkpoints DIR or --tiny")
    report = run(args)
    report["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
