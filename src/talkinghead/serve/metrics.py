"""Prometheus metrics of one server (its own registry, so several apps can live in a process)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# First-frame latency includes the model's own look-ahead (about 1 s of audio for Ditto's
# online windows), so the buckets reach well past that.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
FPS_WINDOW_S = 5.0


class ServeMetrics:
    """Counters the server updates; gauges of the live sessions are read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge(
            "talkinghead_sessions_active", "Streaming sessions running now.", registry=r
        )
        self.sessions_max = Gauge(
            "talkinghead_sessions_max", "Maximum concurrent sessions.", registry=r
        )
        self.sessions = Counter(
            "talkinghead_sessions",
            "Sessions by outcome (completed, disconnected, busy, protocol_error, "
            "unauthorized, idle_timeout, max_duration, not_found, too_large, internal_error).",
            ["outcome"],
            registry=r,
        )
        self.first_frame_latency = Histogram(
            "talkinghead_first_frame_latency_seconds",
            "Time from a session's first audio byte to its first frame sent.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frames_sent = Counter("talkinghead_frames_sent", "Frames sent to clients.", registry=r)
        self.frames_dropped = Counter(
            "talkinghead_frames_dropped",
            "Frames dropped because a client read them slower than they were rendered.",
            registry=r,
        )
        self.audio_seconds = Counter(
            "talkinghead_audio_seconds", "Seconds of audio received.", registry=r
        )
        self.fps = Gauge(
            "talkinghead_fps",
            f"Frames sent per second over the last {FPS_WINDOW_S:g} s, all sessions.",
            registry=r,
        )
        self.fps.set_function(self._fps)
        self.queue_depth = Gauge(
            "talkinghead_queue_depth",
            "Items waiting in session queues: audio (seconds not yet given to the model) "
            "and frames (rendered, not yet sent).",
            ["queue"],
            registry=r,
        )
        self.avatars = Gauge("talkinghead_avatars", "Registered avatars.", registry=r)
        self.uploads = Counter(
            "talkinghead_uploads", "Avatar uploads by HTTP status.", ["status"], registry=r
        )
        self._sent_times: deque[float] = deque(maxlen=10000)
        self._lock = threading.Lock()

    def bind_queues(self, audio_seconds: Callable[[], float], frames: Callable[[], float]) -> None:
        self.queue_depth.labels("audio_seconds").set_function(audio_seconds)
        self.queue_depth.labels("frames").set_function(frames)

    def frame_sent(self) -> None:
        self.frames_sent.inc()
        with self._lock:
            self._sent_times.append(time.monotonic())

    def _fps(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._sent_times and self._sent_times[0] < now - FPS_WINDOW_S:
                self._sent_times.popleft()
            return len(self._sent_times) / FPS_WINDOW_S

    def render(self) -> bytes:
        return generate_latest(self.registry)
