"""Streaming sessions: a bounded pool of slots, and one worker thread per session.

The model is CPU/GPU-bound, so it never runs on the event loop. Each session's
worker thread owns its `DittoStream`: it takes the audio the connection has
received so far (at most one HuBERT hop, 200 ms, per step, so frames are
collected between steps), pushes it, JPEG-encodes the frames that came back and
hands them to the event loop, which sends them. When no audio is waiting, the
worker polls the stream every `POLL_S` for frames that finished in between. So
the serving layer adds at most one chunk (plus `POLL_S`) to what the model
itself needs.

`push` would block inside the renderer's bounded queues when rendering falls
behind, and frames finished meanwhile would wait for it to return. So the worker
takes no more audio while `max_in_flight` frames are in the renderer (submitted,
`stream.frames_out`, minus collected); it only polls until they drain.

Both directions are bounded. Audio: at most `audio_buffer_bytes` wait for the model
(a larger message goes in as room frees up), and the connection stops reading from
its socket meanwhile (TCP backpressure; that is also how a renderer that falls
behind slows the client down). Frames: at most
`frame_buffer` rendered frames wait to be sent; a live client that reads slower
than frames are rendered loses the oldest ones (counted as dropped), a
``lossless`` one slows the session instead.

Conversation sessions (the ``conversation`` control) last across turns: whenever no
speech is waiting and the session's timeline is less than `IDLE_LEAD_S` ahead of the
wall clock, the worker pushes one step of silence into the same stream, so the
motion generator continues from its current state (idle motion, blinks) and the next
turn's speech continues from there without a jump. `interrupt` drops the speech not
yet pushed; what was pushed (at most one step) still renders, then silence follows.
The worker tells the client where each speech or idle stretch begins on the
session's timeline (`EventItem`), so it can play its own audio at the right frames.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from talkinghead.timebase import FPS, SAMPLE_RATE, num_frames

log = logging.getLogger(__name__)

POLL_S = 0.01  # how often an idle worker looks for finished frames
STEP_BYTES = 3200 * 2  # audio per push: one HuBERT hop (5 frames, 200 ms) of PCM16
# Frames in the renderer before the worker stops feeding it. One 200 ms step adds at
# most ~12 (a motion window emits 10, plus a partial batch), so in-flight frames stay
# within the renderer's first queue (4 batches + 1 in work): `push` never blocks there.
MAX_IN_FLIGHT = 8
# Conversation sessions: how far the timeline runs ahead of the wall clock on silence.
# One step (200 ms) of lead keeps the renderer fed without delaying the next turn much.
IDLE_LEAD_S = 0.2
SPEECH_LEAD_S = 0.4  # speech may run a little further ahead: a jitter buffer for the client
SILENCE_STEP = np.zeros(STEP_BYTES // 2, np.float32)
RATE_WINDOW_S = 3.0  # the realtime factor is measured over this much recent work
_EMPTY = np.zeros(0, np.float32)


class _Stopped(Exception):
    """Internal: the session was stopped while the worker waited."""


# ---------------------------------------------------------------------------- audio in


class AudioInbox:
    """PCM16 bytes from the event loop to the worker thread, never more than `max_bytes`.

    `put` (event loop) adds what fits and waits for room for the rest, so one large
    message cannot overfill the buffer; `take` (worker) returns what has arrived, at
    most `step` bytes at a time.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_bytes: int) -> None:
        self.loop = loop
        self.max_bytes = max(int(max_bytes), 1)
        self._cond = threading.Condition()
        self._buf = bytearray()
        self._ended = False
        self._closed = False
        self._space = asyncio.Event()
        self._space.set()
        self.total_bytes = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def put(self, data: bytes) -> None:
        view = memoryview(data)
        while True:
            with self._cond:
                if self._closed:
                    return
                room = self.max_bytes - len(self._buf)
                if room > 0:
                    part = view[:room]
                    self._buf += part
                    self.total_bytes += len(part)
                    view = view[room:]
                    self._cond.notify_all()
                    if not view:
                        return
                self._space.clear()
            await self._space.wait()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop: wake both sides for good (call from the event loop)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._space.set()

    def drop(self) -> int:
        """Discard the audio not taken yet (an interrupt); returns how many bytes."""
        with self._cond:
            dropped = len(self._buf)
            self._buf.clear()
        self._space.set()
        return dropped

    def take(self, timeout: float, step: int = STEP_BYTES) -> tuple[bytes, bool]:
        """(audio, ended): up to `step` bytes; `ended` once the last of it has been taken."""
        with self._cond:
            if not self._buf and not self._ended and not self._closed:
                self._cond.wait(timeout)
            if self._closed:
                raise _Stopped
            data = bytes(self._buf[:step])
            del self._buf[:step]
            ended = self._ended and not self._buf
        if data:
            try:
                self.loop.call_soon_threadsafe(self._space.set)
            except RuntimeError:  # the loop is gone: the server is shutting down
                raise _Stopped from None
        return data, ended


# ---------------------------------------------------------------------------- frames out


@dataclass
class FrameItem:
    index: int
    jpeg: bytes


@dataclass
class EndItem:
    frames: int
    audio_samples: int


@dataclass
class ErrorItem:
    error: BaseException


@dataclass
class EventItem:
    """A conversation event for the client: {"type": kind, "at_s": ..., **fields}."""

    kind: str  # "speech", "idle" or "interrupted"
    fields: dict[str, Any]


class RateMeter:
    """The realtime factor of a worker: media seconds rendered per second of work.

    Only time with work pending counts (audio waiting or frames in the renderer), so a
    client that sends in real time does not make a fast server look slow.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: list[tuple[float, float, int]] = []  # (end time, busy s, frames)
        self._lock = threading.Lock()

    def add(self, busy_s: float, frames: int) -> None:
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, busy_s, frames))
            cut = now - self.window_s
            while self._samples and self._samples[0][0] < cut:
                self._samples.pop(0)

    @property
    def realtime_factor(self) -> float | None:
        """None until some frames were rendered while work was pending."""
        with self._lock:
            busy = sum(b for _, b, _ in self._samples)
            frames = sum(f for _, _, f in self._samples)
        if frames == 0 or busy <= 0:
            return None
        return frames / FPS / busy


class SessionWorker:
    """Runs one `DittoStream` in a thread: PCM16 in through `inbox`, JPEG frames out
    through `outbox` (an asyncio.Queue read on the event loop)."""

    def __init__(
        self,
        stream: Any,
        loop: asyncio.AbstractEventLoop,
        *,
        audio_buffer_bytes: int,
        frame_buffer: int,
        lossless: bool = False,
        jpeg_quality: int = 80,
        on_drop: Callable[[], None] | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        conversation: bool = False,
        name: str = "session",
    ) -> None:
        self.stream = stream
        self.loop = loop
        self.inbox = AudioInbox(loop, audio_buffer_bytes)
        self.outbox: asyncio.Queue = asyncio.Queue(max(frame_buffer, 1))
        self.lossless = lossless
        self.jpeg_quality = jpeg_quality
        self.on_drop = on_drop
        self.max_in_flight = max_in_flight
        self.frames_rendered = 0
        self.frames_dropped = 0  # updated on the event loop
        self.conversation = conversation
        self.rate = RateMeter()
        # Conversation timeline (worker thread): samples pushed (speech and silence),
        # speech samples pushed or dropped (the client's audio offset), the state.
        self.timeline_samples = 0
        self.speech_samples = 0
        self.silence_samples = 0
        self.speaking = False
        self.interrupts = 0
        self._interrupt_lock = threading.Lock()
        self._interrupt_dropped: int | None = None  # bytes dropped by a pending interrupt
        self._waited_s = 0.0  # time of this step spent waiting for the clock, not working
        self._stop = threading.Event()
        self._finished = False
        # A timeline message's (timeline, relative), applied by the worker before its next push.
        self._timeline: tuple[Any, bool] | None = None
        self._timeline_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"serve-{name}", daemon=True)

    # ---- control (event loop side)

    def start(self) -> SessionWorker:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """Work is pending for the client: audio not taken yet, or frames not sent yet."""
        return bool(self.inbox.buffered or self._in_flight() > 0 or not self.outbox.empty())

    @property
    def owes_client(self) -> bool:
        """The client waits for this session (it is not idle): pending work, or for a
        conversation (which always renders idle motion) speech queued or being spoken."""
        if self.conversation:
            return bool(self.inbox.buffered or self.speaking)
        return self.busy

    def interrupt(self) -> None:
        """Drop the speech not pushed yet and return to idle (event loop side)."""
        dropped = self.inbox.drop()
        with self._interrupt_lock:
            self._interrupt_dropped = (self._interrupt_dropped or 0) + dropped

    def set_timeline(self, timeline: Any, relative: bool = False) -> None:
        """Use this control timeline from the next audio on (event loop side; non-blocking)."""
        with self._timeline_lock:
            self._timeline = (timeline, relative)

    def _apply_timeline(self) -> None:
        with self._timeline_lock:
            pending, self._timeline = self._timeline, None
        if pending is not None:
            self.stream.set_controls(pending[0], relative=pending[1])

    def stop(self) -> None:
        """Ask the worker to stop (non-blocking); `shutdown` also waits for it."""
        self._stop.set()
        self.inbox.close()

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the worker, abort its stream and wait until every thread of it has ended."""
        self.stop()
        await asyncio.to_thread(self._abort_and_join, timeout)

    def _abort_and_join(self, timeout: float) -> None:
        if not self._finished:
            # Unblocks a worker waiting on the renderer's full queue; the worker aborts
            # again on its way out in case it had just started the renderer.
            self.stream.abort()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("session worker %s still running after %.0f s", self._thread.name, timeout)

    # ---- the worker thread

    def _in_flight(self) -> int:
        """Frames given to the renderer and not collected yet."""
        return int(getattr(self.stream, "frames_out", 0)) - self.frames_rendered

    def _drain(self, limit: int) -> None:
        """Poll (an empty push feeds nothing) until at most `limit` frames are in flight."""
        while self._in_flight() > limit:
            if self._stop.is_set():
                raise _Stopped
            frames = self.stream.push(_EMPTY)
            if frames:
                self._emit(frames)
            else:
                time.sleep(POLL_S)

    def _run(self) -> None:
        odd = b""
        clock = time.monotonic()  # conversation sessions: wall time of timeline 0
        try:
            while not self._stop.is_set():
                step_began = time.monotonic()
                self._waited_s = 0.0
                rendered_before = self.frames_rendered
                had_work = self.inbox.buffered > 0 or self._in_flight() > 0
                self._drain(self.max_in_flight - 1)
                if self.conversation and self._ahead(clock) >= SPEECH_LEAD_S:
                    # Speech, too, is paced in a conversation: the timeline stays within
                    # `SPEECH_LEAD_S` of real time, so an interrupt reaches the picture
                    # that soon, not an audio window later.
                    data, ended = b"", False
                else:
                    data, ended = self.inbox.take(0 if self.conversation else POLL_S)
                if self._stop.is_set():
                    break
                if data:
                    data = odd + data
                    cut = len(data) - len(data) % 2
                    data, odd = data[:cut], data[cut:]
                self._apply_timeline()
                audio: bytes | np.ndarray = data if data else _EMPTY
                if self.conversation:
                    audio = self._conversation_step(audio, ended, clock)
                # An empty push returns the frames finished since the last call.
                self._emit(self.stream.push(audio))
                if had_work or len(audio):
                    rendered = self.frames_rendered - rendered_before
                    self.rate.add(time.monotonic() - step_began - self._waited_s, rendered)
                if ended:
                    self._finish_stream()
                    self._finished = True
                    self._deliver(EndItem(self.frames_rendered, self.inbox.total_bytes // 2))
                    return
        except _Stopped:
            pass
        except BaseException as exc:
            if not self._stop.is_set():
                log.exception("session %s failed", self._thread.name)
                with contextlib.suppress(_Stopped):
                    self._deliver(ErrorItem(exc))
        finally:
            if not self._finished:
                self.stream.abort()

    def _conversation_step(
        self, speech: bytes | np.ndarray, ended: bool, clock: float
    ) -> bytes | np.ndarray:
        """What a conversation session pushes now: the speech, silence, or nothing yet."""
        with self._interrupt_lock:
            dropped, self._interrupt_dropped = self._interrupt_dropped, None
        if dropped is not None:
            self.speech_samples += dropped // 2
            self.interrupts += 1
            self.speaking = False
            self._event("interrupted", dropped_s=round(dropped / 2 / SAMPLE_RATE, 4))
        ahead = self._ahead(clock)
        if len(speech):
            if not self.speaking:
                self.speaking = True
                self._event("speech", offset_s=round(self.speech_samples / SAMPLE_RATE, 4))
            n = len(speech) // 2
            self.speech_samples += n
            self.timeline_samples += n
            return speech
        if ended:
            return _EMPTY
        if ahead >= IDLE_LEAD_S:
            time.sleep(POLL_S)  # nothing due yet: poll for frames, then look for speech again
            self._waited_s += POLL_S
            return _EMPTY
        if self.speaking:
            self.speaking = False
            self._event("idle")
        self.timeline_samples += len(SILENCE_STEP)
        self.silence_samples += len(SILENCE_STEP)
        return SILENCE_STEP

    def _ahead(self, clock: float) -> float:
        """How far the conversation's timeline runs ahead of the wall clock (s)."""
        return self.timeline_samples / SAMPLE_RATE - (time.monotonic() - clock)

    def _event(self, kind: str, **fields: Any) -> None:
        at = round(self.timeline_samples / SAMPLE_RATE, 4)
        frame = num_frames(self.timeline_samples)  # the first frame of what follows
        self._deliver(EventItem(kind, {"at_s": at, "frame": frame, **fields}))

    def _finish_stream(self) -> None:
        """End of speech: the remaining frames.

        `DittoStream.close()` returns the frames of the final flush (the last motion
        window) only once all of them are rendered; a stream with a ``finish()``
        generator (the same frames, yielded as they are rendered) avoids that.
        """
        # What is in flight leaves as it is rendered; only the final flush is held back.
        self._drain(0)
        finish = getattr(self.stream, "finish", None)
        if callable(finish):
            for frame in finish():
                if self._stop.is_set():
                    raise _Stopped
                self._emit([frame])
        else:
            self._emit(self.stream.close())

    def _emit(self, frames: list[np.ndarray]) -> None:
        import cv2

        for frame in frames:
            ok, jpeg = cv2.imencode(
                ".jpg",
                np.ascontiguousarray(frame[..., ::-1]),
                [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality],
            )
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            item = FrameItem(self.frames_rendered, jpeg.tobytes())
            self.frames_rendered += 1
            if self.lossless:
                self._deliver(item)
            else:
                self._call_in_loop(self._put_dropping_oldest, item)

    def _call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed
            raise _Stopped from None

    def _put_dropping_oldest(self, item: FrameItem) -> None:
        q = self.outbox
        while q.full():
            # Only frames are ever dropped (end/error items come last; events are kept).
            kept = []
            dropped = False
            while not q.empty():
                old = q.get_nowait()
                if not dropped and isinstance(old, FrameItem):
                    dropped = True
                    continue
                kept.append(old)
            for old in kept:
                q.put_nowait(old)
            self.frames_dropped += 1
            if self.on_drop:
                self.on_drop()
            if not dropped:
                return  # a queue full of events only: the new frame is the one dropped
        q.put_nowait(item)

    def _deliver(self, item: Any) -> None:
        """Put `item` in the outbox, waiting for room (backpressure), unless stopped."""
        try:
            fut = asyncio.run_coroutine_threadsafe(self.outbox.put(item), self.loop)
        except RuntimeError:
            raise _Stopped from None
        while True:
            try:
                fut.result(timeout=0.1)
                return
            except concurrent.futures.TimeoutError:
                if self._stop.is_set():
                    fut.cancel()
                    raise _Stopped from None


# ---------------------------------------------------------------------------- the pool


@dataclass
class SessionInfo:
    """What the server knows of a session (for metrics and `/healthz`)."""

    id: str
    opened: float = field(default_factory=time.monotonic)
    avatar: str | None = None
    controls: dict[str, Any] = field(default_factory=dict)
    worker: SessionWorker | None = None
    first_audio: float | None = None  # monotonic time of the first audio byte
    first_frame: float | None = None
    frames_sent: int = 0
    last_activity: float = field(default_factory=time.monotonic)  # a client message or a frame
    last_speech: float = field(default_factory=time.monotonic)  # audio received or pending

    @property
    def audio_samples(self) -> int:
        return self.worker.inbox.total_bytes // 2 if self.worker else 0

    def summary(self) -> dict[str, Any]:
        worker = self.worker
        rtf = worker.rate.realtime_factor if worker else None
        out: dict[str, Any] = {
            "frames": self.frames_sent,
            "dropped": worker.frames_dropped if worker else 0,
            "audio_seconds": round(self.audio_samples / SAMPLE_RATE, 4),
            "expected_frames": num_frames(self.audio_samples),
            "first_frame_latency_s": (
                None
                if self.first_frame is None or self.first_audio is None
                else round(self.first_frame - self.first_audio, 4)
            ),
            "realtime_factor": None if rtf is None else round(rtf, 3),
        }
        if worker is not None and worker.conversation:
            # The timeline is speech plus the silence filled in between turns.
            out["expected_frames"] = num_frames(worker.timeline_samples)
            out["silence_seconds"] = round(worker.silence_samples / SAMPLE_RATE, 4)
            out["interrupts"] = worker.interrupts
        return out


class SessionManager:
    """At most `max_sessions` sessions at once; one more is refused, never queued.

    A slot is held from a session's start to its end (`release`): the moment its last
    message is sent, its error is known or its client is gone, not once its threads
    have been joined. The threads of released sessions are still joined (`finish`,
    and `stop_all` at shutdown); until then the session is "draining".
    """

    def __init__(self, max_sessions: int) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: dict[str, SessionInfo] = {}
        self._draining: dict[str, SessionInfo] = {}
        self._ids = itertools.count(1)

    def try_open(self) -> SessionInfo | None:
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                return None
            info = SessionInfo(f"{next(self._ids)}-{uuid.uuid4().hex[:8]}")
            self._sessions[info.id] = info
            return info

    def release(self, info: SessionInfo) -> None:
        """Free the session's slot (idempotent); its worker, if any, is asked to stop."""
        with self._lock:
            if self._sessions.pop(info.id, None) is not None and info.worker is not None:
                self._draining[info.id] = info
        if info.worker is not None:
            info.worker.stop()

    async def finish(self, info: SessionInfo) -> None:
        """Release the slot, then wait until the session's threads have ended."""
        self.release(info)
        try:
            if info.worker is not None:
                await info.worker.shutdown()
        finally:
            with self._lock:
                self._draining.pop(info.id, None)

    @property
    def active(self) -> int:
        return len(self._sessions)

    @property
    def draining(self) -> int:
        return len(self._draining)

    def sessions(self) -> list[SessionInfo]:
        with self._lock:
            return list(self._sessions.values())

    def queued_audio_seconds(self) -> float:
        return sum(s.worker.inbox.buffered / 2 / SAMPLE_RATE for s in self.sessions() if s.worker)

    def queued_frames(self) -> float:
        return float(sum(s.worker.outbox.qsize() for s in self.sessions() if s.worker))

    async def stop_all(self) -> None:
        with self._lock:
            everyone = [*self._sessions.values(), *self._draining.values()]
        await asyncio.gather(*(s.worker.shutdown() for s in everyone if s.worker is not None))
