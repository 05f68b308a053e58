"""WebRTC playback of a session (aiortc): the rendered frames and the client's own speech
as two media tracks, paced together at 25 fps by the server.

A WebSocket session started with ``"controls": {"webrtc": true}`` gets a `WebRTCPeer`:
the session's frames go to its video track instead of the socket (the socket then gets
each frame's 16-byte header with no JPEG, so a client still knows how far rendering
has got and keeps its audio window), and the speech the client sends is kept on the
session's timeline for the audio track. The client sends its SDP offer on the session's
own socket (``{"type": "offer", "sdp": ...}``, answered there), so it reaches the process
holding the session even behind a proxy with several replicas (Ray Serve); a single
server also takes it at ``POST /webrtc/offer`` with the session id from "ready".

Sync: frame i shows audio time i/25. The video track stamps frame i with pts i x 3600
on the 90 kHz clock, the audio track stamps 20 ms frame k with pts k x 960 at 48 kHz
(the same time origin), and both wait on one `MediaClock`: audio k goes out only once
the frames covering it have been rendered, so a slow renderer delays both together.

ICE uses host candidates only (``RTCConfiguration(iceServers=[])``): no STUN/TURN
server is contacted, which fits a server on the same machine or LAN as its viewers.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fractions
import logging
import time
from typing import Any

import numpy as np

from talkinghead.serve.timeouts import within
from talkinghead.timebase import FPS, SAMPLE_RATE

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
VIDEO_PTS_STEP = VIDEO_CLOCK_RATE // FPS  # 3600
AUDIO_RATE = 48_000  # what WebRTC's Opus carries
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
AUDIO_FRAME_SAMPLES = AUDIO_RATE // 50  # 20 ms
AUDIO_FRAME_S = AUDIO_FRAME_SAMPLES / AUDIO_RATE
UPSAMPLE = AUDIO_RATE // SAMPLE_RATE  # 3
# Frames waiting for the video track, by default; the server sizes it to the client's
# audio window (plus a second), so frames rendered ahead of playback always fit and a
# renderer faster than real time never makes the session drop frames.
VIDEO_QUEUE_FRAMES = 6 * FPS
LATE_TOLERANCE_S = 0.005  # a frame later than this moves the clock (both tracks) back


def available() -> bool:
    """Whether the `webrtc` extra (aiortc) is installed."""
    try:
        import aiortc  # noqa: F401
    except ImportError:
        return False
    return True


class MediaClock:
    """Wall-clock time of media time t, shared by the tracks of one peer.

    Starts when the first frame is due; when a frame is late (the renderer fell
    behind), the clock moves back by as much, so both tracks pause together.
    """

    def __init__(self) -> None:
        self.start: float | None = None

    def due(self, media_s: float) -> float:
        if self.start is None:
            self.start = time.monotonic() - media_s
        return self.start + media_s

    def late_by(self, media_s: float, seconds: float) -> None:
        if self.start is not None and seconds > LATE_TOLERANCE_S:
            self.start += seconds

    async def wait(self, media_s: float) -> None:
        delay = self.due(media_s) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self.late_by(media_s, -delay)


class SpeechTimeline:
    """The client's speech on the session's timeline, as 16 kHz PCM16.

    A plain session's timeline is its speech. A conversation's is speech and silence:
    the server's events say where each stretch of speech begins ("speech": at ``at_s``,
    from ``offset_s`` of the client's audio) and where it stops ("idle", "interrupted").
    """

    def __init__(self, conversation: bool) -> None:
        self.conversation = conversation
        self._speech = bytearray()
        # (timeline sample where it starts, speech sample it starts from or None: silence)
        self._starts: list[int] = [0]
        self._offsets: list[int | None] = [None if conversation else 0]

    def add_speech(self, pcm16: bytes) -> None:
        self._speech += pcm16

    def add_event(self, kind: str, fields: dict[str, Any]) -> None:
        at = round(float(fields.get("at_s", 0.0)) * SAMPLE_RATE)
        if kind == "speech":
            offset: int | None = round(float(fields.get("offset_s", 0.0)) * SAMPLE_RATE)
        elif kind in ("idle", "interrupted"):
            offset = None
        else:
            return
        if at < self._starts[-1]:
            at = self._starts[-1]
        if at == self._starts[-1]:
            self._offsets[-1] = offset
        else:
            self._starts.append(at)
            self._offsets.append(offset)

    def samples(self, start: int, count: int) -> np.ndarray:
        """`count` int16 samples of the timeline from sample `start` (silence where none)."""
        out = np.zeros(count, np.int16)
        end = start + count
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        have = len(self._speech) // 2
        speech = np.frombuffer(self._speech, np.int16, count=have)
        while i < len(self._starts) and self._starts[i] < end:
            seg_from = max(self._starts[i], start)
            seg_to = min(self._starts[i + 1] if i + 1 < len(self._starts) else end, end)
            offset = self._offsets[i]
            if offset is not None and seg_to > seg_from:
                src = offset + seg_from - self._starts[i]
                n = max(min(seg_to - seg_from, have - src), 0)
                out[seg_from - start : seg_from - start + n] = speech[src : src + n]
            i += 1
        return out


def _tracks() -> tuple[type, type]:
    """The track classes (aiortc is imported only when a session uses WebRTC)."""
    import av
    from aiortc import AudioStreamTrack, VideoStreamTrack
    from aiortc.mediastreams import MediaStreamError

    class SessionVideoTrack(VideoStreamTrack):
        """The session's frames (JPEG from the worker) as `av.VideoFrame`s at 25 fps."""

        def __init__(self, peer: WebRTCPeer) -> None:
            super().__init__()
            self.peer = peer

        async def recv(self) -> av.VideoFrame:
            import cv2

            item = await self.peer.frames.get()
            if item is None:  # the session ended and every frame was played
                self.peer.played_all.set()
                self.stop()
                raise MediaStreamError
            index, jpeg = item
            if self.peer.video_origin is None:  # where the audio track starts too
                self.peer.video_origin = index / FPS
                self.peer.progress.set()
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = index * VIDEO_PTS_STEP
            frame.time_base = VIDEO_TIME_BASE
            await self.peer.clock.wait(index / FPS)
            self.peer.frames_played = index + 1
            self.peer.frames_sent += 1
            return frame

    class SessionAudioTrack(AudioStreamTrack):
        """The session's speech at 48 kHz in 20 ms frames, released with the frames."""

        def __init__(self, peer: WebRTCPeer) -> None:
            super().__init__()
            self.peer = peer
            self.index = 0
            self.resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
            self.fifo = av.AudioFifo()
            self.source_samples = 0  # 16 kHz samples given to the resampler
            self.started = False

        async def recv(self) -> av.AudioFrame:
            peer = self.peer
            if not self.started:
                # From the video's first frame: frames older than the queue were dropped
                # for a client that offered late.
                while peer.video_origin is None and not peer.ended:
                    await peer.progress.wait()
                    peer.progress.clear()
                self.started = True
                self.index = round((peer.video_origin or 0.0) / AUDIO_FRAME_S)
                self.source_samples = self.index * (SAMPLE_RATE // 50)
            media_s = self.index * AUDIO_FRAME_S
            # Released only once the video covering it exists (or the session ended).
            while peer.frames_rendered / FPS < media_s + AUDIO_FRAME_S and not peer.ended:
                await peer.progress.wait()
                peer.progress.clear()
            if peer.ended and media_s >= peer.frames_rendered / FPS:
                peer.audio_done.set()
                self.stop()
                raise MediaStreamError
            while self.fifo.samples < AUDIO_FRAME_SAMPLES:
                pcm = peer.timeline.samples(self.source_samples, SAMPLE_RATE // 50)
                self.source_samples += len(pcm)
                chunk = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
                chunk.sample_rate = SAMPLE_RATE
                for out in self.resampler.resample(chunk):
                    self.fifo.write(out)
            frame = self.fifo.read(AUDIO_FRAME_SAMPLES)
            frame.pts = self.index * AUDIO_FRAME_SAMPLES
            frame.time_base = AUDIO_TIME_BASE
            frame.sample_rate = AUDIO_RATE
            await peer.clock.wait(media_s)
            self.index += 1
            peer.audio_frames_sent += 1
            return frame

    return SessionVideoTrack, SessionAudioTrack


class WebRTCPeer:
    """The WebRTC side of one session: its tracks, fed by the session's sender."""

    def __init__(
        self, session_id: str, conversation: bool, max_frames: int = VIDEO_QUEUE_FRAMES
    ) -> None:
        self.session_id = session_id
        self.timeline = SpeechTimeline(conversation)
        self.clock = MediaClock()
        self.max_frames = max(int(max_frames), 1)
        self.frames: asyncio.Queue = asyncio.Queue(self.max_frames)
        self.progress = asyncio.Event()  # a frame was rendered, or the session ended
        self.played_all = asyncio.Event()  # the video track has sent every frame
        self.audio_done = asyncio.Event()  # the audio track has sent the speech under them
        self.frames_rendered = 0  # index of the newest frame + 1
        self.video_origin: float | None = None  # media time of the first frame played
        self.frames_played = 0
        self.frames_sent = 0
        self.audio_frames_sent = 0
        self.ended = False
        self.pc: Any = None

    @property
    def connected(self) -> bool:
        return self.pc is not None

    async def answer(self, sdp: str, kind: str = "offer") -> dict[str, str]:
        """Accept the browser's offer; returns the answer (ICE gathered: no trickle).

        ValueError for an offer that cannot be accepted (malformed, or without video); the
        peer then has no connection and takes another offer.
        """
        if self.pc is not None:
            raise RuntimeError("this session already has a WebRTC connection")
        from aiortc import RTCConfiguration, RTCPeerConnection

        # No STUN/TURN: host candidates only, nothing outside this machine is contacted.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc = pc  # taken now: a second offer arriving meanwhile is refused
        try:
            return await self._accept(pc, sdp, kind)
        except BaseException:
            self.pc = None
            await pc.close()
            raise

    async def _accept(self, pc: Any, sdp: str, kind: str) -> dict[str, str]:
        from aiortc import RTCSessionDescription

        video_cls, audio_cls = _tracks()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("session %s: WebRTC %s", self.session_id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                self.played_all.set()
                self.audio_done.set()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except Exception as exc:  # aiortc's parser also fails with AssertionError, KeyError...
            raise ValueError(f"malformed offer ({type(exc).__name__}: {exc})") from None
        if not any(t.kind == "video" for t in pc.getTransceivers()):
            # aiortc accepts any text as an offer; without a video section nothing plays.
            raise ValueError("the offer has no video section: add a recvonly video transceiver")
        video, audio = video_cls(self), audio_cls(self)
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                pc.addTrack(video)
            elif transceiver.kind == "audio":
                pc.addTrack(audio)
        await pc.setLocalDescription(await pc.createAnswer())
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def put_frame(self, index: int, jpeg: bytes) -> None:
        """A rendered frame for the video track (waits while it holds `max_frames`).

        Before a connection, the newest `max_frames` are kept instead: a client that never
        sends its offer (or is still sending it) does not stall its session.
        """
        if self.pc is None and self.frames.full():
            self.frames.get_nowait()
        await self.frames.put((index, jpeg))
        self.frames_rendered = index + 1
        self.progress.set()

    async def end(self, timeout: float) -> None:
        """No more frames: wait (at most `timeout`) until the tracks have played them."""
        self.ended = True
        self.progress.set()
        if self.pc is None:  # nobody ever connected: nothing to play
            return
        with contextlib.suppress(TimeoutError):
            await within(self.frames.put(None), timeout)
        with contextlib.suppress(TimeoutError):
            await within(asyncio.gather(self.played_all.wait(), self.audio_done.wait()), timeout)

    async def close(self) -> None:
        self.ended = True
        self.progress.set()
        self.played_all.set()
        self.audio_done.set()
        if self.pc is not None:
            await self.pc.close()
