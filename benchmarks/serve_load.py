"""Load test of `talkinghead serve` on loopback: normal sessions streaming speech, with
abusive clients at the same time.

Starts the server as a subprocess on 127.0.0.1 (a free port), uploads the example
portrait, runs `--sessions` normal clients at once, each sending `--seconds` of speech in
`--chunk-ms` chunks (paced in real time unless --burst, keeping to the audio window), and,
alongside them, the abusers:

  --bombs N        upload a 17 KB PNG of 12000x12000 pixels (a decompression bomb), N at once
  --floods N       sessions that send audio as fast as they can, ignoring the audio window
  --non-readers N  sessions that send audio and never read a frame
  --reconnects N   clients that connect, start, send a little audio and drop, again and again
  --cross-site N   WebSocket handshakes from another web page's origin, again and again

It reports, for the normal sessions: frames delivered (and expected), dropped frames,
first-frame latency (first audio byte sent -> first frame received, p50/p95), frame lag,
throughput and the real-time factor; for each kind of abuser: attempts and how they
ended (HTTP status or close code); and the server's RSS (before the load, peak, after),
sampled every 50 ms.

Everything is bounded: every client has a deadline, the abusers stop when the normal
sessions are done, and the server is stopped at the end.

    # tiny networks of the release's architectures (built in a temp dir)
    python benchmarks/serve_load.py --tiny --sessions 2 --seconds 3 \\
        --bombs 2 --floods 1 --non-readers 1 --reconnects 1 --cross-site 1
    # the real release
    python benchmarks/serve_load.py --checkpoints ./checkpoints --sessions 2 --seconds 10 --steps 10
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("TALKINGHEAD_MEDIA_DIR", REPO.parent / "shared" / "media"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def speech(seconds: float) -> np.ndarray:
    from talkinghead.audio.io import load_audio

    pcm = load_audio(MEDIA / "ditto_example_speech.wav", 16000)
    reps = int(np.ceil(seconds * 16000 / len(pcm)))
    return np.tile(pcm, reps)[: round(seconds * 16000)]


def png_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """A 1-bit grey PNG of zeros: about 17 KB that decode to width x height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = b"\0" + bytes((width + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def start_server(args: argparse.Namespace, port: int, log_path: Path) -> subprocess.Popen:
    abusive_sessions = args.floods + args.non_readers + args.reconnects
    max_sessions = args.sessions + (args.extra_slots if abusive_sessions else 0)
    cmd = [
        sys.executable, "-m", "talkinghead", "serve",
        "--checkpoints", str(args.checkpoints), "--no-download",
        "--host", "127.0.0.1", "--port", str(port),
        "--max-sessions", str(max_sessions),
        "--idle-timeout", str(args.idle_timeout),
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


class RssSampler(threading.Thread):
    """The server's resident memory every `period` seconds (psutil), until stopped."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        import psutil

        super().__init__(name="rss-sampler", daemon=True)
        self.process = psutil.Process(pid)
        self.period = period
        self.peak = self.last = self.process.memory_info().rss
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.period):
            try:
                self.last = self.process.memory_info().rss
            except Exception:  # the process ended
                return
            self.peak = max(self.peak, self.last)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def closed_by(exc: Exception) -> str:
    """Who ended a WebSocket, and how, from a `ConnectionClosed`."""
    rcvd, sent = getattr(exc, "rcvd", None), getattr(exc, "sent", None)
    if rcvd is not None:
        return f"server closed {rcvd.code}"
    if sent is not None:  # e.g. 1011: the client's keepalive gave up while the server pushed back
        return f"client closed {sent.code} ({sent.reason})"
    return "connection dropped (server stopped)"


class QueueSampler(threading.Thread):
    """The most audio (seconds, all sessions) and frames waiting in the server's queues,
    from /metrics every `period` seconds."""

    def __init__(self, url: str, period: float = 0.5) -> None:
        super().__init__(name="queue-sampler", daemon=True)
        self.url, self.period = url, period
        self.audio_s = self.frames = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.period):
            try:
                with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith('talkinghead_queue_depth{queue="audio_seconds"}'):
                    self.audio_s = max(self.audio_s, float(line.split()[-1]))
                elif line.startswith('talkinghead_queue_depth{queue="frames"}'):
                    self.frames = max(self.frames, float(line.split()[-1]))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


class Abusers:
    """The abusive clients; each records how its attempts ended ("413", "close 4408", ...)."""

    def __init__(self, port: int, avatar: str, args: argparse.Namespace, stop: threading.Event):
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.http_url = f"http://127.0.0.1:{port}"
        self.avatar = avatar
        self.args = args
        self.stop = stop
        self.outcomes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.pcm = (np.random.default_rng(0).standard_normal(16000 * 60) * 3000).astype("<i2")
        self._lock = threading.Lock()

    def record(self, kind: str, outcome: str) -> None:
        with self._lock:
            self.outcomes[kind][outcome] += 1

    def threads(self) -> list[threading.Thread]:
        a = self.args
        plan = (
            [self.bomb] * a.bombs
            + [self.flood] * a.floods
            + [self.non_reader] * a.non_readers
            + [self.reconnect] * a.reconnects
            + [self.cross_site] * a.cross_site
        )
        threads = []
        for fn in plan:
            th = threading.Thread(target=self._guard, args=(fn,), daemon=True)
            th.kind = fn.__name__
            threads.append(th)
        return threads

    def _guard(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # an abuser's own failure is an outcome, not a crash
            self.record(fn.__name__, f"client error: {type(exc).__name__}")

    # ---- the kinds

    def bomb(self) -> None:
        from talkinghead.serve.client import auth_headers, multipart_file

        body, content_type = multipart_file(png_bomb())
        for _ in range(self.args.bomb_repeats):
            if self.stop.is_set():
                return
            request = urllib.request.Request(
                f"{self.http_url}/avatars",
                data=body,
                method="POST",
                headers={"Content-Type": content_type, **auth_headers(None)},
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    self.record("bomb", str(r.status))
            except urllib.error.HTTPError as exc:
                self.record("bomb", str(exc.code))

    def _session(self, kind: str, *, read: bool, window: bool) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        # A non-reader's client stops reading its socket once 1 message waits unread (and
        # sends no keepalive pings, whose answers it would not read either).
        queue, ping = (None, 20) if read else (1, None)
        with connect(
            self.ws_url, max_size=None, max_queue=queue, ping_interval=ping, open_timeout=30
        ) as ws:
            ws.send(json.dumps({"type": "start", "avatar": self.avatar}))
            first = json.loads(ws.recv(timeout=30))
            if first["type"] != "ready":
                self.record(kind, f"refused: {first.get('code')}")
                return
            frames = [0]

            def reader() -> None:
                try:
                    while True:
                        if isinstance(ws.recv(timeout=120), bytes):
                            frames[0] += 1
                except Exception:
                    pass

            if read:
                threading.Thread(target=reader, daemon=True).start()
            data = self.pcm[: int(self.args.abuse_seconds * 16000)].tobytes()
            step = 3200 * 2 if window else 32000 * 4  # 200 ms, or 4 s per message
            try:
                for offset in range(0, len(data), step):
                    if self.stop.is_set():
                        break
                    ws.send(data[offset : offset + step])  # blocks while the server pushes back
                ws.send(json.dumps({"type": "end"}))
                while not self.stop.is_set():
                    if ws.protocol.close_rcvd is not None:
                        break
                    time.sleep(0.1)
                # What the server said last (a non-reader reads only now).
                while True:
                    ws.recv(timeout=self.args.idle_timeout + 10)
            except ConnectionClosed as exc:
                self.record(kind, closed_by(exc))
            except TimeoutError:
                self.record(kind, "still open when the load ended")

    def flood(self) -> None:
        self._session("flood", read=True, window=False)

    def non_reader(self) -> None:
        self._session("non_reader", read=False, window=False)

    def reconnect(self) -> None:
        from websockets.sync.client import connect

        while not self.stop.is_set():
            with connect(self.ws_url, open_timeout=30) as ws:
                ws.send(json.dumps({"type": "start", "avatar": self.avatar}))
                first = json.loads(ws.recv(timeout=30))
                if first["type"] == "ready":
                    ws.send(self.pcm[:3200].tobytes())
                    self.record("reconnect", "ready, then dropped")
                else:
                    self.record("reconnect", f"refused: {first.get('code')}")
            time.sleep(0.05)

    def cross_site(self) -> None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        while not self.stop.is_set():
            try:
                with connect(self.ws_url, origin="https://evil.example", open_timeout=30):
                    self.record("cross_site", "accepted")
            except InvalidStatus as exc:
                self.record("cross_site", f"refused {exc.response.status_code}")
            time.sleep(0.05)


def run(args: argparse.Namespace) -> dict:
    from talkinghead.serve.client import stream_audio, upload_avatar

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    proc = start_server(args, port, work / "server.log")
    stop_abusers = threading.Event()
    try:
        t = time.perf_counter()
        wait_healthy(url, proc, args.startup_timeout)
        startup_s = time.perf_counter() - t
        avatar = upload_avatar(url, args.source)["id"]
        rss = RssSampler(proc.pid)
        rss_before = rss.peak
        rss.start()
        queues = QueueSampler(url)
        queues.start()
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
        abusers = Abusers(port, avatar, args, stop_abusers)
        abuse = abusers.threads()
        t = time.perf_counter()
        for th in threads:
            th.start()
        time.sleep(0.5)  # the normal sessions hold their slots first
        for th in abuse:
            th.start()
        for th in threads:
            th.join(args.session_timeout + 30)
        wall = time.perf_counter() - t
        stop_abusers.set()
        give_up = time.monotonic() + args.idle_timeout + 15
        for th in abuse:
            th.join(max(give_up - time.monotonic(), 0.1))
        for th in abuse:
            if th.is_alive():  # e.g. a flood blocked in send() while the server pushes back
                abusers.record(th.kind, "still running when the load ended")
        time.sleep(1.0)
        rss.stop()
        queues.stop()
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    finally:
        stop_abusers.set()
        stop_server(proc)

    ok = [r for r in results if "frames" in r]
    latencies = [r["first_frame_latency_s"] for r in ok if r["first_frame_latency_s"] is not None]
    lags = [lag for r in ok for lag in r["lags"]]
    frames = sum(r["frames"] for r in ok)

    def metric(name: str) -> float | None:
        return next(
            (float(line.split()[-1]) for line in metrics.splitlines()
             if line.split(" ")[0] == name),
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
        "server_dropped_frames_total": metric("talkinghead_frames_dropped_total"),
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
        "abusers": {kind: dict(c) for kind, c in abusers.outcomes.items()},
        "server_sessions_by_outcome": {
            outcome: metric(f'talkinghead_sessions_total{{outcome="{outcome}"}}')
            for outcome in ("completed", "disconnected", "busy", "idle_timeout", "too_large")
        },
        "server_queues_peak": {"audio_seconds": queues.audio_s, "frames": queues.frames},
        "server_rss_mb": {
            "before_load": round(rss_before / 2**20, 1),
            "peak": round(rss.peak / 2**20, 1),
            "after": round(rss.last / 2**20, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", type=Path, help="release checkpoints directory")
    parser.add_argument("--tiny", action="store_true", help="build and use tiny networks")
    parser.add_argument("--source", type=Path, default=MEDIA / "ditto_example_face.jpg")
    parser.add_argument("--sessions", type=int, default=4, help="normal sessions")
    parser.add_argument("--seconds", type=float, default=10.0, help="speech per session")
    parser.add_argument("--chunk-ms", type=float, default=100.0)
    parser.add_argument("--burst", action="store_true", help="send audio as fast as possible")
    parser.add_argument("--bombs", type=int, default=0, help="concurrent bomb uploaders")
    parser.add_argument("--bomb-repeats", type=int, default=3, help="uploads per bomb client")
    parser.add_argument("--floods", type=int, default=0, help="audio floods (no flow control)")
    parser.add_argument("--non-readers", type=int, default=0, help="sessions that never read")
    parser.add_argument(
        "--abuse-seconds", type=float, default=20.0, help="audio a flood / non-reader sends"
    )
    parser.add_argument("--reconnects", type=int, default=0, help="connect-and-drop loops")
    parser.add_argument("--cross-site", type=int, default=0, help="foreign-origin handshakes")
    parser.add_argument(
        "--extra-slots", type=int, default=1, help="session slots beyond --sessions (abusers)"
    )
    parser.add_argument("--idle-timeout", type=float, default=10.0, help="the server's")
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
