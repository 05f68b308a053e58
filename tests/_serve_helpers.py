"""Shared pieces of the serving tests: a fast stand-in pipeline and server helpers.

`FakePipeline` has the interface the server uses (`register`, `stream` -> push/close/
abort) and the streaming contract of `DittoStream` (ceil(samples / 640) frames, frame i
for audio time i/25, frames only after some look-ahead), but renders instantly, so
tests of timing-sensitive behaviour (drops, idle timeouts, the browser's microphone)
do not wait on the networks. The frame count, order, cleanup and browser tests use
the real pipeline on the tiny release.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _conformance import MEDIA_DIR
from talkinghead.serve.client import auth_headers, multipart_file

MEDIA = MEDIA_DIR
PORTRAIT = MEDIA / "ditto_example_face.jpg"
SPEECH = MEDIA / "ditto_example_speech.wav"
TINY_SETTINGS = {"steps": 2, "seed": 0, "max_size": 256, "batch_size": 4, "cache": False}


@dataclass
class FakeAvatar:
    frames: np.ndarray

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


class FakeStream:
    def __init__(self, pipe: FakePipeline, avatar: FakeAvatar, settings: dict[str, Any]) -> None:
        self.pipe = pipe
        self.avatar = avatar
        self.settings = settings
        self.samples = 0
        self.frames_out = 0
        self.closed = self.aborted = False

    def _frames(self, upto: int) -> list[np.ndarray]:
        out = []
        h, w = self.avatar.frame_size
        rng = np.random.default_rng(self.frames_out)
        while self.frames_out < upto:
            if self.pipe.noise:
                frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            else:
                frame = np.full((h, w, 3), (self.frames_out * 7) % 256, np.uint8)
            out.append(frame)
            self.frames_out += 1
        if self.pipe.delay_s and out:
            time.sleep(self.pipe.delay_s * len(out))
        return out

    def push(self, audio: np.ndarray | bytes) -> list[np.ndarray]:
        assert not self.closed
        n = len(audio) // 2 if isinstance(audio, (bytes, bytearray)) else len(audio)
        self.samples += n
        return self._frames(max(self.samples // 640 - self.pipe.lookahead, 0))

    def close(self) -> list[np.ndarray]:
        self.closed = True
        return self._frames(-(-self.samples // 640))

    def _finish(self):
        """Like `DittoStream.close`, but yielding each frame as soon as it is rendered."""
        self.closed = True
        while self.frames_out < -(-self.samples // 640):
            yield from self._frames(self.frames_out + 1)

    def abort(self) -> None:
        self.aborted = True


class FakePipeline:
    def __init__(
        self,
        size: tuple[int, int] = (48, 64),
        noise: bool = False,
        lookahead: int = 2,
        delay_s: float = 0.0,
        progressive_finish: bool = False,
    ) -> None:
        self.size = size
        self.noise = noise
        self.lookahead = lookahead  # frames held back until more audio (or the end) arrives
        self.delay_s = delay_s  # rendering time per frame
        self.progressive_finish = progressive_finish  # streams have a finish() generator
        self.streams: list[FakeStream] = []
        self.registered: list[Any] = []  # what register() was given
        self.register_hook: Any = None  # called inside register() (to hold it in tests)

    def register(self, source: Any, max_frames: int | None = None) -> FakeAvatar:
        self.registered.append(source)
        if self.register_hook is not None:
            self.register_hook()
        return FakeAvatar(np.zeros((1, *self.size, 3), np.uint8))

    def stream(self, avatar: FakeAvatar, **settings: Any) -> FakeStream:
        s = FakeStream(self, avatar, settings)
        if self.progressive_finish:
            s.finish = s._finish
        self.streams.append(s)
        return s


# ---------------------------------------------------------------------------- HTTP helpers


def http(
    method: str,
    url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    client_header: bool = True,
    token: str | None = None,
) -> tuple[int, bytes]:
    """(status, body); the request carries the server's CSRF header unless `client_header`
    is False, and `token` as a bearer token."""
    base = auth_headers(token) if client_header else {}
    if token and not client_header:
        base["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, data=data, method=method, headers={**base, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def upload_bytes(base_url: str, data: bytes, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """POST `data` as the "file" of a multipart form to /avatars: (status, JSON reply)."""
    body, content_type = multipart_file(data)
    headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}
    status, reply = http("POST", f"{base_url}/avatars", body, headers, **kwargs)
    return status, json.loads(reply or b"{}")


def get_json(url: str) -> Any:
    status, body = http("GET", url)
    assert status == 200, (status, body)
    return json.loads(body)


def wait_until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_idle(base_url: str, timeout: float = 60.0) -> None:
    """Until the server has no session, nor one whose threads are still stopping (the
    previous test's sessions have been cleaned up)."""

    def idle() -> bool:
        health = get_json(f"{base_url}/healthz")
        return health["sessions"] == 0 and health.get("draining", 0) == 0

    wait_until(idle, timeout, "no active session")


def session_threads() -> list[threading.Thread]:
    """Threads of streaming sessions: the workers and the renderer's stages."""
    return [t for t in threading.enumerate() if t.name.startswith(("serve-session", "stage-"))]


def speech_16k(seconds: float) -> np.ndarray:
    """The first `seconds` of the example speech, resampled to 16 kHz."""
    import soundfile as sf

    from talkinghead.audio.io import resample

    data, sr = sf.read(SPEECH, dtype="float32")
    if data.ndim > 1:
        data = data.mean(axis=1)
    pcm = resample(data, sr, 16000)
    return pcm[: round(seconds * 16000)]


def metric_value(text: str, name: str) -> float:
    """The value of one sample line of a Prometheus text exposition ("name{labels} value")."""
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# The page's conversation as the browser and WebRTC tests drive it (window.talkingheadEvents:
# the server's events; window.talkingheadFrames: the frame headers the page received).
EVENTS = "window.talkingheadEvents || []"
FRAMES_RECEIVED = "(window.talkingheadFrames || []).length"


def two_turns_with_an_interrupt(
    page, turn_one: Path, turn_two: Path, *, interrupt_after: int, idle_after: int, timeout_ms: int
) -> None:
    """The page-driving steps of the browser and WebRTC conversation tests. On a page in
    conversation mode with its portrait registered: turn one, interrupted
    `interrupt_after` frames into its speech; `idle_after` idle frames; turn two, played to
    its end and back to idle. The caller ends the conversation."""

    def speak(wav: Path) -> None:
        page.set_input_files("#audio-file", str(wav))
        page.wait_for_function("!document.getElementById('speak').disabled", timeout=30_000)
        page.click("#speak")

    def wait_frames_after(kind: str, frames: int) -> None:
        page.wait_for_function(
            f"(() => {{ const e = ({EVENTS}).find((e) => e.type === '{kind}');"
            f" return e && {FRAMES_RECEIVED} >= e.frame + {frames}; }})()",
            timeout=timeout_ms,
        )

    speak(turn_one)
    wait_frames_after("speech", interrupt_after)
    page.click("#interrupt")
    wait_frames_after("interrupted", idle_after)
    speak(turn_two)
    page.wait_for_function(
        f"(() => {{ const kinds = ({EVENTS}).map((e) => e.type).join(' ');"
        f" return kinds.endsWith('interrupted speech idle'); }})()",
        timeout=timeout_ms,
    )
