"""Conversation sessions: turns, idle motion between them, interrupt, and the limits that
end a session (maximum length, maximum time without speech, pings or not).

The protocol tests use the instant stand-in pipeline; the motion-continuity test runs
the tiny Ditto release.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from _conformance import skip_missing
from _serve_helpers import PORTRAIT, TINY_SETTINGS, FakePipeline, speech_16k, upload_bytes
from talkinghead.serve import ServeSettings, create_app
from talkinghead.serve.background import BackgroundServer
from talkinghead.serve.client import to_pcm16
from talkinghead.serve.protocol import CLOSE_IDLE_TIMEOUT, CLOSE_PROTOCOL_ERROR, decode_frame
from talkinghead.serve.sessions import RateMeter

FRAME_S = 1 / 25


@contextlib.contextmanager
def server_with_avatar(tmp_path: Path, pipe=None, **settings):
    pipe = pipe or FakePipeline()
    app = create_app(pipe, ServeSettings(avatar_dir=tmp_path / "avatars", **settings))
    with BackgroundServer(app) as srv:
        status, record = upload_bytes(srv.url, PORTRAIT.read_bytes())
        assert status == 201, record
        srv.pipe = pipe
        yield srv, record["id"]


class Conversation:
    """A client of one session that records every message with its arrival time."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.frames: list[tuple[int, float, bytes]] = []  # (index, arrival, jpeg)
        self.events: list[dict] = []
        self.close_code: int | None = None

    def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.ws.recv(timeout=left)
            except TimeoutError:
                return
            self._record(message)

    def read_until_closed(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self._record(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
        except TimeoutError:
            pass  # still open: close_code stays None

    def _record(self, message) -> None:
        if isinstance(message, bytes):
            index, _, jpeg = decode_frame(message)
            self.frames.append((index, time.monotonic(), jpeg))
        else:
            self.events.append(json.loads(message))

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


def start(ws, avatar: str, **controls) -> dict:
    ws.send(json.dumps({"type": "start", "avatar": avatar, "controls": controls}))
    ready = json.loads(ws.recv(timeout=30))
    assert ready["type"] == "ready", ready
    return ready


def send_speech(ws, pcm: np.ndarray) -> None:
    data = to_pcm16(pcm)
    for i in range(0, len(data), 3200):
        ws.send(data[i : i + 3200])


def test_idle_motion_between_turns_and_two_turns_on_one_timeline(tmp_path) -> None:
    with server_with_avatar(tmp_path) as (srv, avatar), connect(srv.ws_url) as ws:
        ready = start(ws, avatar, conversation=True)
        assert ready["conversation"] is True
        talk = Conversation(ws)
        talk.read_for(0.6)  # nobody speaks: idle frames keep coming, in real time
        idle_frames = len(talk.frames)
        assert 5 <= idle_frames <= 40
        speech = np.full(8000, 0.1, np.float32)  # 0.5 s per turn
        for _turn in range(2):
            send_speech(ws, speech)
            talk.read_for(0.8)
        ws.send(json.dumps({"type": "end"}))
        talk.read_until_closed()
    assert talk.close_code == 1000
    indices = [i for i, _, _ in talk.frames]
    assert indices == list(range(len(indices)))  # one timeline, no gap
    speeches = talk.of_type("speech")
    assert [s["offset_s"] for s in speeches] == [0.0, 0.5]  # where in the client's audio
    idles = talk.of_type("idle")
    assert len(idles) >= 1
    # Turn two starts after the idle that followed turn one, later on the timeline.
    assert speeches[0]["at_s"] < idles[0]["at_s"] <= speeches[1]["at_s"]
    assert idles[0]["at_s"] - speeches[0]["at_s"] == pytest.approx(0.5)
    end = talk.of_type("end")[0]
    assert end["frames"] == end["expected_frames"] == len(indices)
    assert end["audio_seconds"] == pytest.approx(1.0)
    assert end["silence_seconds"] > 0 and end["interrupts"] == 0
    # The stream itself saw speech and silence, all of it, in one session.
    stream = srv.pipe.streams[-1]
    assert stream.samples == round((end["audio_seconds"] + end["silence_seconds"]) * 16000)


def test_interrupt_drops_the_queued_speech_and_returns_to_idle(tmp_path) -> None:
    # A slow renderer keeps most of a long turn queued when the interrupt comes.
    pipe = FakePipeline(delay_s=0.01)
    with server_with_avatar(tmp_path, pipe) as (srv, avatar), connect(srv.ws_url) as ws:
        start(ws, avatar, conversation=True)
        talk = Conversation(ws)
        send_speech(ws, np.full(16000 * 10, 0.1, np.float32))  # 10 s turn, sent at once
        talk.read_for(0.5)
        ws.send(json.dumps({"type": "interrupt"}))
        talk.read_for(1.0)
        ws.send(json.dumps({"type": "end"}))
        talk.read_until_closed()
    assert talk.close_code == 1000
    interrupted = talk.of_type("interrupted")
    assert len(interrupted) == 1 and interrupted[0]["dropped_s"] > 5
    end = talk.of_type("end")[0]
    assert end["interrupts"] == 1
    # What was pushed before the interrupt is what plays; the rest was dropped.
    spoken = end["audio_seconds"] - interrupted[0]["dropped_s"]
    began = talk.of_type("speech")[0]["at_s"]
    assert spoken == pytest.approx(interrupted[0]["at_s"] - began, abs=1e-3)
    assert spoken < 5
    # "interrupted" starts an idle stretch: silence fills the timeline and frames go on.
    assert not [e for e in talk.of_type("idle") if e["at_s"] > interrupted[0]["at_s"]]
    assert end["expected_frames"] > interrupted[0]["frame"] + 10
    indices = [i for i, _, _ in talk.frames]
    assert indices == list(range(len(indices))) and end["frames"] == len(indices)


def test_interrupt_needs_a_conversation_session(tmp_path) -> None:
    with server_with_avatar(tmp_path) as (srv, avatar), connect(srv.ws_url) as ws:
        start(ws, avatar)
        ws.send(json.dumps({"type": "interrupt"}))
        talk = Conversation(ws)
        talk.read_until_closed()
    assert talk.close_code == CLOSE_PROTOCOL_ERROR
    assert "conversation" in talk.of_type("error")[0]["message"]


def test_a_ping_alone_does_not_hold_a_slot_past_the_idle_speech_limit(tmp_path) -> None:
    with (
        server_with_avatar(tmp_path, max_idle_speech_s=1.0, idle_timeout_s=30) as (srv, avatar),
        connect(srv.ws_url) as ws,
    ):
        start(ws, avatar, conversation=True)
        talk = Conversation(ws)
        with contextlib.suppress(ConnectionClosed):
            for _ in range(40):  # bounded: 4 s of pings at most
                ws.send(json.dumps({"type": "ping"}))
                talk.read_for(0.1)
        talk.read_until_closed(timeout=30)
    # Closed by the 1 s no-speech limit: the 30 s idle timeout would neither close it within
    # the reads above nor say "no speech" (no timing assertion: this machine may be loaded).
    assert talk.close_code == CLOSE_IDLE_TIMEOUT
    error = talk.of_type("error")[0]
    assert error["code"] == "idle_timeout" and "no speech" in error["message"]
    assert talk.of_type("pong") and talk.frames  # it idled (frames) while it pinged


def test_speech_resets_the_idle_speech_limit(tmp_path) -> None:
    with (
        server_with_avatar(tmp_path, max_idle_speech_s=1.0) as (srv, avatar),
        connect(srv.ws_url) as ws,
    ):
        start(ws, avatar, conversation=True)
        talk = Conversation(ws)
        for _ in range(4):  # a short turn every 0.6 s for 2.4 s: never 1 s without speech
            send_speech(ws, np.full(1600, 0.1, np.float32))
            talk.read_for(0.6)
        ws.send(json.dumps({"type": "end"}))
        talk.read_until_closed()
    assert talk.close_code == 1000
    assert len(talk.of_type("speech")) == 4


def test_a_conversation_ends_at_the_maximum_session_length(tmp_path) -> None:
    with (
        server_with_avatar(tmp_path, max_session_s=1.0) as (srv, avatar),
        connect(srv.ws_url) as ws,
    ):
        start(ws, avatar, conversation=True)
        talk = Conversation(ws)
        with contextlib.suppress(ConnectionClosed):
            for _ in range(30):  # bounded: 3 s of speech at most
                send_speech(ws, np.full(1600, 0.1, np.float32))
                talk.read_for(0.1)
        talk.read_until_closed(timeout=30)
    assert talk.close_code == CLOSE_IDLE_TIMEOUT
    assert talk.of_type("error")[0]["code"] == "max_duration"


def test_stats_report_a_realtime_factor(tmp_path) -> None:
    # 20 ms of rendering per 40 ms frame: about twice real time.
    pipe = FakePipeline(delay_s=0.02)
    with server_with_avatar(tmp_path, pipe) as (srv, avatar), connect(srv.ws_url) as ws:
        start(ws, avatar, stats=True)
        talk = Conversation(ws)
        send_speech(ws, np.full(16000 * 3, 0.1, np.float32))
        ws.send(json.dumps({"type": "end"}))
        talk.read_until_closed()
    stats = talk.of_type("stats")
    assert stats, talk.events
    factors = [s["realtime_factor"] for s in stats if s["realtime_factor"] is not None]
    assert factors and all(0.5 < f < 2.5 for f in factors), factors
    end = talk.of_type("end")[0]
    assert 0.5 < end["realtime_factor"] < 2.5


def test_rate_meter_counts_only_busy_time() -> None:
    meter = RateMeter(window_s=60)
    assert meter.realtime_factor is None
    meter.add(0.4, 5)  # 5 frames (0.2 s of media) in 0.4 s of work
    meter.add(0.0, 0)
    assert meter.realtime_factor == pytest.approx(0.5)


# ---------------------------------------------------------------------------- real motion


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    if not PORTRAIT.is_file():
        skip_missing(f"{PORTRAIT}")
    from _tiny_release import build_tiny_release
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    release = build_tiny_release(tmp_path_factory.mktemp("release"))
    return DittoPipeline.from_pretrained(release, download=False, **TINY_SETTINGS)


def test_turns_and_interrupt_continue_the_motion_without_a_jump(tiny_pipeline, tmp_path) -> None:
    """Two turns with an interrupt in the middle of the first: frames are continuous on
    the server's timeline, and no idle/speech boundary moves the face more than
    consecutive speaking frames do."""
    with (
        server_with_avatar(tmp_path, tiny_pipeline) as (srv, avatar),
        connect(srv.ws_url, max_size=None) as ws,
    ):
        start(ws, avatar, conversation=True, seed=0)
        talk = Conversation(ws)
        talk.read_for(1.0)
        send_speech(ws, speech_16k(3.0))
        talk.read_for(1.0)
        ws.send(json.dumps({"type": "interrupt"}))
        talk.read_for(1.0)
        send_speech(ws, speech_16k(1.0))
        talk.read_for(2.0)
        ws.send(json.dumps({"type": "end"}))
        talk.read_until_closed(timeout=60)
    assert talk.close_code == 1000
    indices = [i for i, _, _ in talk.frames]
    assert indices == list(range(len(indices)))
    end = talk.of_type("end")[0]
    assert end["frames"] == end["expected_frames"] == len(indices) and end["interrupts"] == 1
    images = [
        cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.float32)
        for _, _, j in talk.frames
    ]
    step = [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(images)]
    speaking = np.zeros(len(images), bool)
    marks = sorted(
        (e["frame"], e["type"])
        for e in talk.events
        if e["type"] in ("speech", "idle", "interrupted")
    )
    for (frame, kind), nxt in zip(marks, [*marks[1:], (len(images), "")], strict=False):
        if kind == "speech":
            speaking[frame : nxt[0]] = True
    speaking_steps = [s for i, s in enumerate(step) if speaking[i] and speaking[i + 1]]
    boundaries = [f for f, _ in marks if 0 < f < len(images)]
    assert speaking_steps and boundaries
    largest_speaking = max(speaking_steps)
    for f in boundaries:
        assert step[f - 1] <= largest_speaking, (f, step[f - 1], largest_speaking)


def test_a_quiet_client_is_not_idle_while_its_speech_plays(tmp_path) -> None:
    # Conversation speech plays in real time: 2.5 s sent at once, then the client only
    # listens, longer than the 1 s idle timeout. It is closed only once the speech is over.
    with (
        server_with_avatar(tmp_path, idle_timeout_s=1.0) as (srv, avatar),
        connect(srv.ws_url) as ws,
    ):
        start(ws, avatar, conversation=True)
        talk = Conversation(ws)
        send_speech(ws, np.full(40000, 0.1, np.float32))
        # Bounded wait, not a timing assertion: on a loaded CPU the tiny pipeline renders
        # 2.5 s of speech slower than real time, and the close comes only after it played.
        talk.read_until_closed(timeout=60)
    assert talk.close_code == CLOSE_IDLE_TIMEOUT
    idle = talk.of_type("idle")
    assert idle and idle[0]["at_s"] - talk.of_type("speech")[0]["at_s"] == pytest.approx(2.5)
    # Every speech frame was sent before the idle timeout closed the session.
    assert len(talk.frames) >= idle[0]["frame"]
