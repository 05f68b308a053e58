"""A Python client of the session protocol (used by `talkinghead stream-client`, the tests
and `benchmarks/serve_load.py`).

    result = stream_audio("ws://127.0.0.1:8000/ws", avatar_id, pcm_16k, realtime=True)
    result.frames  # [(index, timestamp_s, jpeg bytes)], in arrival order
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from talkinghead.serve.protocol import FPS, SAMPLE_RATE, decode_frame
from talkinghead.serve.security import CSRF_HEADER

FrameCallback = Callable[[int, float, bytes], None]


class SessionError(RuntimeError):
    """The server refused or ended the session with an error."""

    def __init__(self, message: str, code: str | None = None, close_code: int | None = None):
        super().__init__(message)
        self.code = code
        self.close_code = close_code


@dataclass
class StreamResult:
    ready: dict[str, Any] = field(default_factory=dict)
    end: dict[str, Any] | None = None
    frames: list[tuple[int, float, bytes]] = field(default_factory=list)
    first_audio_at: float | None = None  # time.perf_counter() of the first audio sent
    first_frame_at: float | None = None
    finished_at: float | None = None
    close_code: int | None = None

    @property
    def first_frame_latency(self) -> float | None:
        if self.first_audio_at is None or self.first_frame_at is None:
            return None
        return self.first_frame_at - self.first_audio_at


def to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(np.asarray(audio, np.float32), -1, 1) * 32767).astype("<i2").tobytes()


def http_base(ws_url: str) -> str:
    """http(s)://host:port of a ws(s):// session URL."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def auth_headers(token: str | None) -> dict[str, str]:
    """The headers a request to the server carries: the CSRF header, and the token if any."""
    headers = {CSRF_HEADER: "python"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def multipart_file(data: bytes, field: str = "file") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data form holding one file."""
    boundary = f"talkinghead-{secrets.token_hex(16)}"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="upload"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def upload_avatar(
    base_url: str, path: str | Path, timeout: float = 300.0, token: str | None = None
) -> dict[str, Any]:
    """POST a portrait or video to `base_url`/avatars; returns the avatar's description."""
    body, content_type = multipart_file(Path(path).read_bytes())
    request = urllib.request.Request(
        f"{base_url.rstrip('/')}/avatars",
        data=body,
        method="POST",
        headers={"Content-Type": content_type, **auth_headers(token)},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("detail", detail)
        raise SessionError(f"upload refused ({exc.code}): {detail}") from None


def stream_audio(
    url: str,
    avatar: str,
    pcm_16k: np.ndarray | bytes,
    *,
    controls: dict[str, Any] | None = None,
    chunk_ms: float = 100.0,
    realtime: bool = False,
    on_frame: FrameCallback | None = None,
    keep_frames: bool = True,
    timeout: float = 600.0,
    token: str | None = None,
) -> StreamResult:
    """Run one session: send the audio in `chunk_ms` chunks (paced in real time when
    `realtime`) then "end", and collect every frame until the server's end message.
    `token`: the server's token (sent as an Authorization header)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    pcm = pcm_16k if isinstance(pcm_16k, bytes) else to_pcm16(pcm_16k)
    step = max(int(SAMPLE_RATE * chunk_ms / 1000) * 2, 2)
    result = StreamResult()
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"} if token else None
    with connect(
        url, max_size=None, open_timeout=30, close_timeout=5, additional_headers=headers
    ) as ws:
        ws.send(json.dumps({"type": "start", "avatar": avatar, "controls": controls or {}}))
        ready = _read_json(ws, result, deadline)
        if ready.get("type") != "ready":
            raise SessionError(f"expected ready, got {ready}")
        result.ready = ready
        send_error: list[BaseException] = []
        # Flow control: stay at most `window` seconds of audio ahead of the newest frame.
        window = float(ready.get("audio_window_s") or 0)
        newest = [-1]
        stop = threading.Event()

        def send() -> None:
            try:
                start = time.perf_counter()
                for offset in range(0, len(pcm), step):
                    if realtime:
                        due = start + offset / 2 / SAMPLE_RATE
                        time.sleep(max(due - time.perf_counter(), 0))
                    ahead = (offset + step) / 2 / SAMPLE_RATE
                    while window and ahead - (newest[0] + 1) / FPS > window:
                        if stop.wait(0.005):
                            return
                    if result.first_audio_at is None:
                        result.first_audio_at = time.perf_counter()
                    ws.send(pcm[offset : offset + step])
                ws.send(json.dumps({"type": "end"}))
            except ConnectionClosed:
                pass  # the reader reports why
            except BaseException as exc:
                send_error.append(exc)

        sender = threading.Thread(target=send, name="stream-client-send", daemon=True)
        sender.start()
        try:
            while True:
                message = _recv(ws, result, deadline)
                if isinstance(message, bytes):
                    if result.first_frame_at is None:
                        result.first_frame_at = time.perf_counter()
                    index, timestamp, jpeg = decode_frame(message)
                    newest[0] = index
                    if on_frame is not None:
                        on_frame(index, timestamp, jpeg)
                    result.frames.append((index, timestamp, jpeg if keep_frames else b""))
                    continue
                msg = json.loads(message)
                if msg.get("type") == "end":
                    result.end = msg
                    result.finished_at = time.perf_counter()
                    break
                if msg.get("type") == "error":
                    raise SessionError(msg.get("message", ""), msg.get("code"))
        finally:
            stop.set()
            sender.join(timeout=5)
        if send_error:
            raise send_error[0]
        try:
            ws.recv(timeout=5)  # the server closes after "end"
        except ConnectionClosed as exc:
            result.close_code = exc.rcvd.code if exc.rcvd else None
        except TimeoutError:
            pass
    return result


def _recv(ws: Any, result: StreamResult, deadline: float) -> str | bytes:
    from websockets.exceptions import ConnectionClosed

    try:
        return ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
    except TimeoutError:
        raise SessionError("timed out waiting for the server") from None
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else None
        reason = exc.rcvd.reason if exc.rcvd else ""
        result.close_code = code
        raise SessionError(
            f"the server closed the session ({code}: {reason})", None, code
        ) from None


def _read_json(ws: Any, result: StreamResult, deadline: float) -> dict[str, Any]:
    message = _recv(ws, result, deadline)
    if isinstance(message, bytes):
        raise SessionError("expected a JSON message, got binary")
    msg = json.loads(message)
    if msg.get("type") == "error":
        code = msg.get("code")
        try:
            ws.recv(timeout=2)
        except Exception as exc:
            close = getattr(getattr(exc, "rcvd", None), "code", None)
            raise SessionError(msg.get("message", ""), code, close) from None
        raise SessionError(msg.get("message", ""), code)
    return msg
