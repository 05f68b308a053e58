"""The WebSocket session protocol: message formats, close codes, and their validation.

Client -> server
    text   {"type": "start", "avatar": ID, "controls": {...}}   first message, once
           (with "token": TOKEN when the server has one and the handshake had none)
    binary PCM16 little-endian mono 16 kHz audio, any length (an odd byte is kept
           for the next message)
    text   {"type": "end"}                                       end of speech (and session)
    text   {"type": "interrupt"}                                 conversation sessions: drop
           the speech not rendered yet and return to idle motion
    text   {"type": "ping"}                                      keeps an idle session open
    text   {"type": "timeline", "timeline": {...}, "relative": false}   per-frame controls
           from now on (a control timeline or the release's ctrl_info; null clears it)
    text   {"type": "offer", "sdp": SDP}                         sessions with the webrtc
           control: the WebRTC offer, once, answered on this socket

Server -> client
    text   {"type": "ready", ...}          the session is running; send audio
    binary frame: a 16-byte header then one JPEG (see `FRAME_HEADER`)
    text   {"type": "end", ...}            every frame was sent; the server closes (1000)
    text   {"type": "error", "code", "message"} then a close with the code in `CLOSE_CODES`
    text   {"type": "pong"}
    text   {"type": "speech"|"idle"|"interrupted", "at_s", ...}   conversation sessions:
           where on the session's timeline speech (from "offset_s" of the client's
           audio) or idle motion begins
    text   {"type": "stats", "realtime_factor", ...}   about once a second (controls.stats)
    text   {"type": "answer", "sdp": SDP}  the answer to the client's "offer"

`docs/serving.md` has the whole protocol with examples.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

# The server's time base is the toolkit's; `FPS` and `SAMPLE_RATE` are re-exported.
from talkinghead.timebase import FPS as FPS
from talkinghead.timebase import SAMPLE_RATE as SAMPLE_RATE
from talkinghead.timebase import frame_time

# Binary frame message: magic, frame index (uint32), audio timestamp in seconds (float64,
# = index / 25: the frame shows the face at that point of the audio), then the JPEG.
FRAME_MAGIC = b"THF1"
FRAME_HEADER = struct.Struct("<4sId")
FRAME_HEADER_BYTES = FRAME_HEADER.size  # 16

# Close codes. 1000/1011/1013 are the standard ones; 44xx mirror the HTTP statuses.
CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011
CLOSE_BUSY = 1013  # "try again later": the server is at its session limit
CLOSE_PROTOCOL_ERROR = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_IDLE_TIMEOUT = 4408  # also the end of a session that reached its maximum length
CLOSE_TOO_LARGE = 4413
CLOSE_CODES = {
    "busy": CLOSE_BUSY,
    "protocol_error": CLOSE_PROTOCOL_ERROR,
    "unauthorized": CLOSE_UNAUTHORIZED,
    "not_found": CLOSE_NOT_FOUND,
    "idle_timeout": CLOSE_IDLE_TIMEOUT,
    "max_duration": CLOSE_IDLE_TIMEOUT,
    "too_large": CLOSE_TOO_LARGE,
    "internal_error": CLOSE_INTERNAL_ERROR,
}


class ProtocolError(Exception):
    """A message the protocol does not allow; the session answers with an error and closes."""

    def __init__(self, message: str, code: str = "protocol_error") -> None:
        super().__init__(message)
        self.code = code

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self.code]


# ---------------------------------------------------------------------------- frames


def encode_frame(index: int, jpeg: bytes) -> bytes:
    return FRAME_HEADER.pack(FRAME_MAGIC, index, frame_time(index)) + jpeg


def decode_frame(message: bytes) -> tuple[int, float, bytes]:
    """(index, timestamp_s, jpeg) of a binary frame message."""
    if len(message) < FRAME_HEADER_BYTES:
        raise ProtocolError(f"a frame message of {len(message)} bytes is shorter than its header")
    magic, index, timestamp = FRAME_HEADER.unpack_from(message)
    if magic != FRAME_MAGIC:
        raise ProtocolError(f"not a frame message (magic {magic!r})")
    return index, timestamp, bytes(message[FRAME_HEADER_BYTES:])


# ---------------------------------------------------------------------------- controls


@dataclass(frozen=True)
class Control:
    """One session control: its type and bounds; `setting` names the pipeline setting."""

    kind: type
    low: float | None = None
    high: float | None = None
    setting: str | None = None  # None: a serving option, not passed to the pipeline


CONTROLS: dict[str, Control] = {
    "seed": Control(int, 0, 2**31 - 1, "seed"),
    "steps": Control(int, 1, 50, "steps"),
    "emotion": Control(object, setting="emotion"),
    "delta_pitch": Control(float, -90, 90, "delta_pitch"),
    "delta_yaw": Control(float, -90, 90, "delta_yaw"),
    "delta_roll": Control(float, -90, 90, "delta_roll"),
    "alpha_pitch": Control(float, 0, 5, "alpha_pitch"),
    "alpha_yaw": Control(float, 0, 5, "alpha_yaw"),
    "alpha_roll": Control(float, 0, 5, "alpha_roll"),
    "fade_in": Control(int, 0, 250, "fade_in"),
    "jpeg_quality": Control(int, 10, 100),
    # Never drop frames: a slow reader then slows the session (and its audio intake)
    # instead of losing video. For clients that record rather than play live.
    "lossless": Control(bool),
    # A session that lasts a conversation: between turns the server fills silence in
    # real time (idle motion, blinks), so frames keep coming until "end".
    "conversation": Control(bool),
    # {"type": "stats", "realtime_factor", ...} about once a second (opt-in: clients that
    # expect only frames between "ready" and "end" keep working).
    "stats": Control(bool),
    # Frames and speech as WebRTC tracks (an "offer" message on the session's socket, or
    # POST /webrtc/offer with the session id); the socket then carries each frame's header
    # without the JPEG. Needs the webrtc extra.
    "webrtc": Control(bool),
}
EMOTIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise", "contempt")


def _check_emotion(value: Any) -> Any:
    def one(v: Any) -> Any:
        if isinstance(v, bool):
            raise ProtocolError("controls.emotion: expected a label or 0-7")
        if isinstance(v, int) and 0 <= v < len(EMOTIONS):
            return v
        if isinstance(v, str) and v.lower() in EMOTIONS:
            return v.capitalize()
        raise ProtocolError(f"controls.emotion: {v!r} is not one of {', '.join(EMOTIONS)} or 0-7")

    if isinstance(value, list):
        if not 1 <= len(value) <= len(EMOTIONS):
            raise ProtocolError("controls.emotion: give 1 to 8 labels")
        return [one(v) for v in value]
    return one(value)


def check_controls(raw: Any, max_steps: int | None = None) -> dict[str, Any]:
    """Validated controls (only the known ones, of the right type and range)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ProtocolError("controls must be a JSON object")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        spec = CONTROLS.get(name)
        if spec is None:
            raise ProtocolError(f"unknown control {name!r}; known: {', '.join(sorted(CONTROLS))}")
        if name == "emotion":
            out[name] = _check_emotion(value)
            continue
        if spec.kind is bool:
            if not isinstance(value, bool):
                raise ProtocolError(f"controls.{name}: expected true or false")
        elif spec.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProtocolError(f"controls.{name}: expected an integer")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"controls.{name}: expected a number")
        if spec.kind is not bool:
            value = spec.kind(value)
            high = spec.high
            if name == "steps" and max_steps is not None:
                high = min(high or max_steps, max_steps)
            if not math.isfinite(value) or (spec.low is not None and value < spec.low):
                raise ProtocolError(f"controls.{name}: {value} is below {spec.low}")
            if high is not None and value > high:
                raise ProtocolError(f"controls.{name}: {value} is above {high}")
        out[name] = value
    return out


def pipeline_settings(controls: dict[str, Any]) -> dict[str, Any]:
    """The controls that are pipeline settings, under the pipeline's names."""
    return {CONTROLS[k].setting: v for k, v in controls.items() if CONTROLS[k].setting is not None}


# ---------------------------------------------------------------------------- client messages


@dataclass(frozen=True)
class Start:
    avatar: str
    controls: dict[str, Any]
    token: str | None = None  # for clients that cannot send an Authorization header


@dataclass(frozen=True)
class End:
    pass


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Interrupt:
    pass


@dataclass(frozen=True)
class Timeline:
    """A live session's new control timeline (None clears it); see `DittoStream.set_controls`."""

    timeline: Any
    relative: bool = False


@dataclass(frozen=True)
class Offer:
    """A WebRTC session's SDP offer (ICE gathered: every candidate in it)."""

    sdp: str


MAX_TEXT_BYTES = 16 * 1024
# A browser's offer lists every codec it has (Chromium 156's: 6.9 KB as JSON); room to spare.
MAX_OFFER_BYTES = 64 * 1024


def parse_text(
    text: str, max_steps: int | None = None
) -> Start | End | Ping | Interrupt | Timeline | Offer:
    """A client's text message; raises `ProtocolError` for anything the protocol does not allow."""
    if len(text) > MAX_OFFER_BYTES:  # the largest message: checked before parsing
        raise ProtocolError(f"text message of {len(text)} characters (at most {MAX_OFFER_BYTES})")
    try:
        msg = json.loads(text)
    except ValueError:
        raise ProtocolError("text messages must be JSON objects") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError('text messages must be JSON objects with a "type"')
    kind = msg["type"]
    if kind == "offer":
        return _parse_offer(msg)
    if len(text) > MAX_TEXT_BYTES:
        raise ProtocolError(f"text message of {len(text)} characters (at most {MAX_TEXT_BYTES})")
    if kind == "start":
        avatar = msg.get("avatar")
        if not isinstance(avatar, str) or not avatar:
            raise ProtocolError('"start" needs "avatar": the id POST /avatars returned')
        extra = set(msg) - {"type", "avatar", "controls", "token"}
        if extra:
            raise ProtocolError(f'unknown field(s) in "start": {", ".join(sorted(extra))}')
        token = msg.get("token")
        if token is not None and not isinstance(token, str):
            raise ProtocolError('"start": "token" must be a string')
        return Start(avatar, check_controls(msg.get("controls"), max_steps), token)
    if kind == "end":
        return End()
    if kind == "ping":
        return Ping()
    if kind == "interrupt":
        return Interrupt()
    if kind == "timeline":
        return _parse_timeline(msg)
    raise ProtocolError(
        f"unknown message type {kind!r} (expected start, end, interrupt, ping, timeline or offer)"
    )


def _parse_offer(msg: dict[str, Any]) -> Offer:
    extra = set(msg) - {"type", "sdp"}
    if extra:
        raise ProtocolError(f'unknown field(s) in "offer": {", ".join(sorted(extra))}')
    sdp = msg.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ProtocolError('"offer" needs "sdp": the RTCPeerConnection\'s local description')
    return Offer(sdp)


def _parse_timeline(msg: dict[str, Any]) -> Timeline:
    from talkinghead.errors import TalkingHeadError
    from talkinghead.methods.ditto.controls import ControlTimeline

    extra = set(msg) - {"type", "timeline", "relative"}
    if extra:
        raise ProtocolError(f'unknown field(s) in "timeline": {", ".join(sorted(extra))}')
    relative = msg.get("relative", False)
    if not isinstance(relative, bool):
        raise ProtocolError('"timeline": "relative" must be true or false')
    raw = msg.get("timeline")
    if raw is not None and not isinstance(raw, dict | list):
        raise ProtocolError('"timeline" must be {"keyframes": [...]}, a ctrl_info, or null')
    try:
        timeline = ControlTimeline.coerce(raw)
    except (TalkingHeadError, ValueError, TypeError) as exc:
        raise ProtocolError(f'"timeline": {exc}') from None
    return Timeline(timeline, relative)


def error_message(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})
