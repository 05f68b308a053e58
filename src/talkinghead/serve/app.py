"""The FastAPI application: avatar registry, WebSocket sessions, health, metrics, the page.

    create_app(pipeline_or_factory, ServeSettings(...)) -> FastAPI

`pipeline_or_factory` is a loaded pipeline (anything with `register(frames,
max_frames=...)` and `stream(avatar, **settings)`, e.g. `DittoPipeline`) or a
callable returning one, called once at startup in a worker thread.

Access is checked by `serve.security` (Host, Origin, the CSRF header, the optional
token) before a request reaches a route. What the server stores lives in its own
temporary folder (0700), removed at shutdown: uploads (unless `avatar_dir`) and the
registered avatars derived from them (unless `use_cache`: then the pipeline's avatar
cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.websockets import WebSocketDisconnect, WebSocketState

from talkinghead.errors import TalkingHeadError
from talkinghead.media.source import DEFAULT_MAX_PIXELS
from talkinghead.serve import protocol, webrtc
from talkinghead.serve.avatars import AvatarRegistry, UploadError
from talkinghead.serve.metrics import ServeMetrics
from talkinghead.serve.protocol import ProtocolError
from talkinghead.serve.security import (
    CSRF_HEADER,
    AccessGuard,
    AccessPolicy,
    websocket_authenticated,
)
from talkinghead.serve.sessions import (
    EndItem,
    ErrorItem,
    EventItem,
    FrameItem,
    SessionInfo,
    SessionManager,
    SessionWorker,
)
from talkinghead.serve.timeouts import within

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
# Room for the multipart envelope around a file of exactly `max_upload_bytes`.
MULTIPART_SLACK = 64 * 1024
STATS_INTERVAL_S = 1.0  # how often a session's client hears its realtime factor
# Answering a WebRTC offer gathers host candidates only (no STUN): well under a second.
OFFER_ANSWER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServeSettings:
    """Limits and defaults of a server (the CLI's options)."""

    max_sessions: int = 2
    max_upload_bytes: int = 20 * 2**20
    max_avatars: int = 32
    max_avatar_frames: int = 50  # frames of a video avatar that are registered
    max_loaded_avatars: int = 4
    # Decoded pixels of an upload, checked from its header before decoding.
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    # Uploads being received or waiting for their turn to be decoded (one at a time).
    max_pending_uploads: int = 4
    avatar_dir: Path | None = None  # None: the server's temporary folder, removed at shutdown
    # Registered avatars in the pipeline's avatar cache (the user's cache folder, kept
    # across restarts) instead of the server's temporary folder.
    use_cache: bool = False
    preload: Sequence[Path] = ()  # operator-provided sources registered at startup
    idle_timeout_s: float = 30.0  # no client message for this long (before "end") closes
    max_session_s: float = 900.0  # a session ends after this long, whatever it does
    # No speech for this long (audio received or waiting for the model) closes a session
    # before "end", pings or not: a client that only pings cannot hold a slot forever.
    max_idle_speech_s: float = 120.0
    max_session_audio_s: float = 600.0
    # Clients keep the audio they have sent at most this far ahead of the newest frame
    # they received (announced in "ready"), so the server never has to stop reading.
    audio_window_s: float = 5.0
    # Audio waiting for the model before the server stops reading the socket (TCP
    # backpressure for clients that ignore the window; keepalive pings stall meanwhile).
    audio_buffer_s: float = 30.0
    frame_buffer: int = 25  # rendered frames waiting to be sent before the oldest drop
    jpeg_quality: int = 80
    max_steps: int = 50
    default_controls: dict[str, Any] = field(default_factory=dict)
    # Access (see `serve.security`): the address the server is bound to and other names
    # it answers to (the Host check), web origins besides its own, an optional token.
    host: str = "127.0.0.1"
    allowed_hosts: Sequence[str] = ()
    cors_origins: Sequence[str] = ()
    token: str | None = None
    docs: bool = False  # the API docs at /docs and /openapi.json


@dataclass
class _State:
    settings: ServeSettings
    metrics: ServeMetrics
    sessions: SessionManager
    pipeline: Any = None
    registry: AvatarRegistry | None = None
    temp_dir: Path | None = None
    uploads_pending: int = 0
    peers: dict[str, webrtc.WebRTCPeer] = field(default_factory=dict)  # by session id
    started: float = field(default_factory=time.time)


class _TooLarge(Exception):
    pass


def create_app(
    pipeline: Any | Callable[[], Any],
    settings: ServeSettings | None = None,
    *,
    registry_factory: Callable[..., AvatarRegistry] = AvatarRegistry,
) -> FastAPI:
    """The server's app; ValueError for settings that cannot work (e.g. a malformed origin).

    `registry_factory`: the avatar registry's class (Ray Serve's replicas share theirs).
    """
    settings = settings or ServeSettings()
    protocol.check_controls(settings.default_controls, settings.max_steps)
    policy = AccessPolicy.create(
        settings.host, settings.allowed_hosts, settings.cors_origins, settings.token
    )
    metrics = ServeMetrics()
    state = _State(settings, metrics, SessionManager(settings.max_sessions))
    metrics.sessions_max.set(settings.max_sessions)
    metrics.sessions_active.set_function(lambda: state.sessions.active)
    metrics.avatars.set_function(lambda: len(state.registry) if state.registry else 0)
    metrics.bind_queues(state.sessions.queued_audio_seconds, state.sessions.queued_frames)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if callable(pipeline) and not hasattr(pipeline, "stream"):
            state.pipeline = await asyncio.to_thread(pipeline)
        else:
            state.pipeline = pipeline
        # The server's own store (mkdtemp: 0700, only this user): uploads without
        # --avatar-dir, and the avatars registered from them. Gone at shutdown.
        state.temp_dir = Path(tempfile.mkdtemp(prefix="talkinghead-serve-"))
        try:
            state.registry = registry_factory(
                state.pipeline,
                settings.avatar_dir or state.temp_dir / "avatars",
                derived_dir=state.temp_dir / "derived",
                use_pipeline_cache=settings.use_cache,
                max_avatars=settings.max_avatars,
                max_frames=settings.max_avatar_frames,
                max_loaded=settings.max_loaded_avatars,
                max_pixels=settings.max_pixels,
            )
            registry = state.registry
            registry.cleanup_uploads()
            if settings.avatar_dir is not None:
                n = await asyncio.to_thread(registry.load_existing)
                log.info("%d stored avatar(s) registered", n)
            for path in settings.preload:
                record = await asyncio.to_thread(registry.add_local, Path(path))
                log.info("avatar %s: %s", record.id, path)
            yield
        finally:
            await state.sessions.stop_all()
            shutil.rmtree(state.temp_dir, ignore_errors=True)

    # Outermost first: the Host check, then CORS (answers preflights), then the rest.
    middleware = [Middleware(AccessGuard, policy=policy, stage="host")]
    if policy.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(policy.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", CSRF_HEADER],
            )
        )
    middleware.append(Middleware(AccessGuard, policy=policy, stage="request"))
    app = FastAPI(
        title="talkinghead",
        lifespan=lifespan,
        middleware=middleware,
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.serve = state

    # ------------------------------------------------------------------ pages and status

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "sessions": state.sessions.active,
            "max_sessions": settings.max_sessions,
            "draining": state.sessions.draining,  # ended sessions whose threads still stop
            "avatars": len(state.registry) if state.registry else 0,
            "uptime_s": round(time.time() - state.started, 1),
            "token_required": settings.token is not None,
        }

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------------ avatars

    @app.get("/avatars")
    async def list_avatars() -> dict[str, Any]:
        return {"avatars": _registry().list()}

    @app.post("/avatars", status_code=201)
    async def upload_avatar(request: Request) -> JSONResponse:
        """An image or short video: the "file" field of a multipart/form-data form."""
        registry = _registry()
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return _upload_refused(
                415,
                'send the file as multipart/form-data in a "file" field '
                f"(curl -F file=@face.jpg -H '{CSRF_HEADER}: curl' ...)",
            )
        limit = settings.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + MULTIPART_SLACK:
            return _upload_refused(413, f"the upload is larger than {limit} bytes")
        if state.uploads_pending >= settings.max_pending_uploads:
            response = _upload_refused(
                503, f"{state.uploads_pending} uploads are in progress; try again shortly"
            )
            response.headers["Retry-After"] = "5"
            return response
        state.uploads_pending += 1
        tmp = registry.new_upload_file()
        try:
            try:
                size = await _receive_upload(request, tmp, limit)
            except _TooLarge:
                return _upload_refused(413, f"the upload is larger than {limit} bytes")
            except ClientDisconnect:
                return Response(status_code=400)  # nobody is left to read it
            if size == 0:
                return _upload_refused(415, "the upload is empty")
            try:
                record, created = await asyncio.to_thread(registry.add_file, tmp)
            except UploadError as exc:
                return _upload_refused(exc.status, str(exc))
        finally:
            state.uploads_pending -= 1
            tmp.unlink(missing_ok=True)
        metrics.uploads.labels(str(201 if created else 200)).inc()
        return JSONResponse(record.public(), status_code=201 if created else 200)

    def _upload_refused(status: int, message: str) -> JSONResponse:
        metrics.uploads.labels(str(status)).inc()
        return JSONResponse({"detail": message}, status_code=status)

    @app.get("/avatars/{avatar_id}")
    async def get_avatar(avatar_id: str) -> dict[str, Any]:
        return _record(avatar_id).public()

    @app.get("/avatars/{avatar_id}/thumbnail")
    async def avatar_thumbnail(avatar_id: str) -> Response:
        return Response(_record(avatar_id).thumbnail, media_type="image/jpeg")

    @app.delete("/avatars/{avatar_id}", status_code=204)
    async def delete_avatar(avatar_id: str) -> Response:
        if not _registry().delete(avatar_id):
            raise HTTPException(404, f"no avatar {avatar_id!r}")
        return Response(status_code=204)

    def _registry() -> AvatarRegistry:
        if state.registry is None:
            raise HTTPException(503, "the server is starting")
        return state.registry

    def _record(avatar_id: str):
        record = _registry().get(avatar_id)
        if record is None:
            raise HTTPException(404, f"no avatar {avatar_id!r}")
        return record

    # ------------------------------------------------------------------ WebRTC

    @app.post("/webrtc/offer")
    async def webrtc_offer(request: Request) -> JSONResponse:
        """{"session": ID from "ready", "sdp": ..., "type": "offer"} -> the SDP answer.

        For a single server; the session's own socket takes the offer too ("offer"
        message), which behind Ray Serve's proxy is the only way to reach its replica.
        """
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(
                400, 'send JSON: {"session": ..., "sdp": ..., "type": "offer"}'
            ) from None
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("session", "sdp")
        ):
            raise HTTPException(400, 'send JSON: {"session": ..., "sdp": ..., "type": "offer"}')
        if body.get("type", "offer") != "offer":
            raise HTTPException(400, 'the description must be an "offer"')
        peer = state.peers.get(body["session"])
        if peer is None:
            raise HTTPException(
                404,
                f"no WebRTC session {body['session']!r}: start one over /ws with "
                '"controls": {"webrtc": true} and send the id from "ready" (or send '
                '{"type": "offer", "sdp": ...} on the session\'s socket, which works '
                "behind any proxy)",
            )
        if peer.connected:
            raise HTTPException(409, "this session already has a WebRTC connection")
        try:
            answer = await within(peer.answer(body["sdp"]), OFFER_ANSWER_TIMEOUT_S)
        except ValueError as exc:  # a malformed or unsupported offer
            raise HTTPException(400, f"cannot accept the offer: {exc}") from None
        except TimeoutError:
            raise HTTPException(504, "the offer was not answered in time") from None
        return JSONResponse(answer)

    # ------------------------------------------------------------------ sessions

    @app.websocket("/ws")
    async def session(ws: WebSocket) -> None:
        await ws.accept()
        deadline = time.monotonic() + settings.max_session_s
        holder: list[SessionInfo] = []  # the session, once it holds a slot
        outcome = "completed"
        try:
            await _run_session(ws, holder, deadline)
        except (WebSocketDisconnect, OSError):  # uvicorn's ClientDisconnected is an OSError
            outcome = "disconnected"
        except ProtocolError as exc:
            outcome = exc.code
            _release(holder)  # the slot is free before the client hears the session ended
            await _close_with_error(ws, exc)
        except Exception:
            outcome = "internal_error"
            log.exception("session %s failed", holder[0].id if holder else "(not started)")
            _release(holder)
            await _close_with_error(
                ws, ProtocolError("internal error (see the server's log)", "internal_error")
            )
        finally:
            if holder and (peer := state.peers.pop(holder[0].id, None)) is not None:
                await peer.close()
            if holder:
                await state.sessions.finish(holder[0])  # releases, then joins its threads
                log.info("session %s: %s, %s", holder[0].id, outcome, holder[0].summary())
            metrics.sessions.labels(outcome).inc()

    def _release(holder: list[SessionInfo]) -> None:
        if holder:
            state.sessions.release(holder[0])

    async def _run_session(ws: WebSocket, holder: list[SessionInfo], deadline: float) -> None:
        # The slot is taken only for a valid (and authorised) start: a client that
        # connects and says nothing holds a socket, not a session.
        start = await _receive(ws, timeout=min(settings.idle_timeout_s, _left(deadline)))
        if "text" not in start or start["text"] is None:
            raise ProtocolError('the first message must be {"type": "start", ...} as text')
        msg = protocol.parse_text(start["text"], settings.max_steps)
        if not isinstance(msg, protocol.Start):
            raise ProtocolError('the first message must be {"type": "start", ...}')
        if not websocket_authenticated(ws.scope) and not policy.token_matches(msg.token):
            raise ProtocolError(
                'this server needs a token: send it in "start" ("token") or as '
                "Authorization: Bearer TOKEN",
                "unauthorized",
            )
        controls = {**settings.default_controls, **msg.controls}
        if controls.get("webrtc") and not webrtc.available():
            raise ProtocolError(
                "this server has no WebRTC: install the webrtc extra "
                "(pip install 'talkinghead[webrtc]') or leave out the webrtc control"
            )
        registry = _registry()
        # In a thread: a shared registry may register an avatar another replica took.
        if await asyncio.to_thread(registry.get, msg.avatar) is None:
            raise ProtocolError(
                f"no avatar {msg.avatar!r}; upload one with POST /avatars", "not_found"
            )
        info = state.sessions.try_open()
        if info is None:
            raise ProtocolError(
                f"busy: all {settings.max_sessions} sessions are in use; try again later", "busy"
            )
        holder.append(info)
        try:
            avatar = await asyncio.to_thread(registry.avatar, msg.avatar)
            stream = await asyncio.to_thread(
                state.pipeline.stream, avatar, **protocol.pipeline_settings(controls)
            )
        except KeyError:
            raise ProtocolError(f"no avatar {msg.avatar!r}", "not_found") from None
        except (TalkingHeadError, ValueError, TypeError) as exc:
            raise ProtocolError(f"cannot start the session: {exc}") from None
        loop = asyncio.get_running_loop()
        info.avatar = msg.avatar
        info.controls = controls
        info.worker = SessionWorker(
            stream,
            loop,
            audio_buffer_bytes=int(settings.audio_buffer_s * protocol.SAMPLE_RATE * 2),
            frame_buffer=settings.frame_buffer,
            lossless=bool(controls.get("lossless", False)),
            jpeg_quality=int(controls.get("jpeg_quality", settings.jpeg_quality)),
            on_drop=metrics.frames_dropped.inc,
            conversation=bool(controls.get("conversation", False)),
            name=f"session-{info.id}",
        ).start()
        if controls.get("webrtc"):
            # Created before "ready": the frames rendered before the browser's offer
            # arrives wait for the video track.
            state.peers[info.id] = webrtc.WebRTCPeer(
                info.id,
                info.worker.conversation,
                # Room for all a client may render ahead of playback (its audio window).
                max_frames=int((settings.audio_window_s + 1) * protocol.FPS),
            )
        size = getattr(avatar, "frame_size", (0, 0))
        await ws.send_text(
            json.dumps(
                {
                    "type": "ready",
                    "session": info.id,
                    "avatar": msg.avatar,
                    "fps": protocol.FPS,
                    "sample_rate": protocol.SAMPLE_RATE,
                    "width": int(size[1]),
                    "height": int(size[0]),
                    "frame_header_bytes": protocol.FRAME_HEADER_BYTES,
                    "audio_window_s": settings.audio_window_s,
                    "max_session_s": settings.max_session_s,
                    "max_idle_speech_s": settings.max_idle_speech_s,
                    "conversation": info.worker.conversation,
                    "webrtc": info.id in state.peers,
                    "controls": controls,
                }
            )
        )
        send_lock = asyncio.Lock()
        receiver = asyncio.create_task(_receive_loop(ws, info, send_lock))
        sender = asyncio.create_task(_send_loop(ws, info, send_lock))
        try:
            done, _ = await asyncio.wait(
                {receiver, sender}, timeout=_left(deadline), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                raise ProtocolError(
                    f"the session reached its maximum length of {settings.max_session_s:g} s",
                    "max_duration",
                )
            if sender not in done:
                receiver.result()  # the receiver only ever ends with an exception
            sender.result()
        finally:
            for task in (receiver, sender):
                task.cancel()
            await asyncio.gather(receiver, sender, return_exceptions=True)

    def _left(deadline: float) -> float:
        return max(deadline - time.monotonic(), 0.0)

    async def _receive(ws: WebSocket, timeout: float | None) -> dict[str, Any]:
        try:
            message = await within(ws.receive(), timeout)
        except TimeoutError:
            raise ProtocolError(
                f"no message for {timeout or 0:g} s; closing the idle session", "idle_timeout"
            ) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def _receive_loop(ws: WebSocket, info: SessionInfo, send_lock: asyncio.Lock) -> None:
        worker = info.worker
        assert worker is not None
        max_bytes = int(settings.max_session_audio_s * protocol.SAMPLE_RATE * 2)
        idle = settings.idle_timeout_s
        ended = False
        pending: asyncio.Future | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(ws.receive())
                # Idle: a quiet client while the server owes it nothing. A client waiting
                # for frames (its audio window is full) is not idle; after "end" the
                # client only reads, so no limit applies.
                done, _ = await asyncio.wait(
                    {pending}, timeout=None if ended else min(1.0, idle / 2)
                )
                if not ended:
                    _check_speech_idle(info)
                if not done:
                    if worker.owes_client:
                        info.last_activity = time.monotonic()
                    elif time.monotonic() - info.last_activity > idle:
                        raise ProtocolError(
                            f"no message for {idle:g} s; closing the idle session", "idle_timeout"
                        )
                    continue
                message, pending = pending.result(), None
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message.get("code", 1000))
                info.last_activity = time.monotonic()
                data = message.get("bytes")
                if data is not None:
                    if ended:
                        raise ProtocolError('audio after {"type": "end"}')
                    if data:
                        info.last_speech = time.monotonic()
                    if info.first_audio is None and data:
                        info.first_audio = time.monotonic()
                    if worker.inbox.total_bytes + len(data) > max_bytes:
                        raise ProtocolError(
                            f"more than {settings.max_session_audio_s:g} s of audio in one session",
                            "too_large",
                        )
                    metrics.audio_seconds.inc(len(data) / 2 / protocol.SAMPLE_RATE)
                    if (peer := state.peers.get(info.id)) is not None:
                        peer.timeline.add_speech(data)  # what its audio track plays
                    await worker.inbox.put(data)
                    continue
                msg = protocol.parse_text(message.get("text") or "", settings.max_steps)
                if isinstance(msg, protocol.Start):
                    raise ProtocolError("the session has already started")
                if isinstance(msg, protocol.End):
                    if ended:
                        raise ProtocolError('a second {"type": "end"}')
                    ended = True
                    worker.inbox.end()
                elif isinstance(msg, protocol.Interrupt):
                    if not worker.conversation:
                        raise ProtocolError(
                            '"interrupt" needs a conversation session: start it with '
                            '"controls": {"conversation": true}'
                        )
                    worker.interrupt()
                elif isinstance(msg, protocol.Ping):
                    async with send_lock:
                        await _send(ws.send_text('{"type": "pong"}'))
                elif isinstance(msg, protocol.Timeline):
                    worker.set_timeline(msg.timeline, msg.relative)
                elif isinstance(msg, protocol.Offer):
                    await _answer_offer(ws, info, msg.sdp, send_lock)
        finally:
            if pending is not None:
                pending.cancel()

    async def _answer_offer(
        ws: WebSocket, info: SessionInfo, sdp: str, send_lock: asyncio.Lock
    ) -> None:
        """The session's WebRTC offer, answered on its socket: {"type": "answer", "sdp"}."""
        peer = state.peers.get(info.id)
        if peer is None:
            raise ProtocolError(
                '"offer" needs a WebRTC session: start it with "controls": {"webrtc": true}'
            )
        if peer.connected:
            raise ProtocolError('a second "offer": this session already has a WebRTC connection')
        try:
            answer = await within(peer.answer(sdp), OFFER_ANSWER_TIMEOUT_S)
        except ValueError as exc:
            raise ProtocolError(f"cannot accept the offer: {exc}") from None
        except TimeoutError:
            raise ProtocolError(
                f"the WebRTC offer was not answered within {OFFER_ANSWER_TIMEOUT_S:g} s",
                "internal_error",
            ) from None
        async with send_lock:
            await _send(ws.send_text(json.dumps({"type": "answer", "sdp": answer["sdp"]})))

    def _check_speech_idle(info: SessionInfo) -> None:
        """Close a session that has had no speech for `max_idle_speech_s` (pings or not)."""
        worker = info.worker
        assert worker is not None
        # Speech waiting for the model (or being spoken) counts as speech; so does any
        # pending work of a plain session (its client waits for frames, it cannot send).
        if worker.owes_client:
            info.last_speech = time.monotonic()
        limit = settings.max_idle_speech_s
        if time.monotonic() - info.last_speech > limit:
            raise ProtocolError(
                f"no speech for {limit:g} s; closing the idle session", "idle_timeout"
            )

    async def _send_loop(ws: WebSocket, info: SessionInfo, send_lock: asyncio.Lock) -> None:
        worker = info.worker
        assert worker is not None
        last_stats = time.monotonic()
        stats = bool(info.controls.get("stats", False))
        peer = state.peers.get(info.id)
        while True:
            item = await worker.outbox.get()
            if stats and time.monotonic() - last_stats >= STATS_INTERVAL_S:
                last_stats = time.monotonic()
                await _send_stats(ws, info, send_lock)
            if isinstance(item, EventItem):
                if peer is not None:
                    peer.timeline.add_event(item.kind, item.fields)
                async with send_lock:
                    await _send(ws.send_text(json.dumps({"type": item.kind, **item.fields})))
            elif isinstance(item, FrameItem):
                if peer is not None:
                    # The picture goes to the video track; the socket gets the header
                    # alone (the client's progress for its audio window).
                    await peer.put_frame(item.index, item.jpeg)
                    payload = protocol.encode_frame(item.index, b"")
                else:
                    payload = protocol.encode_frame(item.index, item.jpeg)
                async with send_lock:
                    await _send(ws.send_bytes(payload))
                if info.first_frame is None:
                    info.first_frame = time.monotonic()
                    if info.first_audio is not None:
                        metrics.first_frame_latency.observe(info.first_frame - info.first_audio)
                info.frames_sent += 1
                if worker.owes_client:  # a conversation's idle frames are not activity
                    info.last_activity = time.monotonic()
                metrics.frame_sent()
            elif isinstance(item, EndItem):
                if peer is not None:  # "end" once the tracks have played every frame
                    await peer.end(timeout=settings.idle_timeout_s + peer.max_frames / protocol.FPS)
                # Free the slot first: a client that reconnects the moment it sees the
                # end must find it free.
                state.sessions.release(info)
                async with send_lock:
                    await _send(ws.send_text(json.dumps({"type": "end", **info.summary()})))
                    await ws.close(protocol.CLOSE_NORMAL)
                return
            elif isinstance(item, ErrorItem):
                raise ProtocolError(f"generation failed: {item.error}", "internal_error")

    async def _send_stats(ws: WebSocket, info: SessionInfo, send_lock: asyncio.Lock) -> None:
        """How fast the server renders this session, so a client can size its buffer."""
        worker = info.worker
        assert worker is not None
        rtf = worker.rate.realtime_factor
        stats = {
            "type": "stats",
            "realtime_factor": None if rtf is None else round(rtf, 3),
            "frames": info.frames_sent,
            "dropped": worker.frames_dropped,
            "queued_audio_s": round(worker.inbox.buffered / 2 / protocol.SAMPLE_RATE, 3),
        }
        async with send_lock:
            await _send(ws.send_text(json.dumps(stats)))

    async def _send(coro: Any) -> None:
        """A send that a client who stopped reading cannot block forever."""
        try:
            await within(coro, settings.idle_timeout_s)
        except TimeoutError:
            raise ProtocolError("the client stopped reading", "idle_timeout") from None

    return app


async def _receive_upload(request: Request, path: Path, limit: int) -> int:
    """Write the "file" field of a multipart form to `path`; returns its size."""
    received = 0

    async def counting_receive() -> dict[str, Any]:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit + MULTIPART_SLACK:
                raise _TooLarge
        return message

    size = 0
    with open(path, "wb") as out:
        limited = Request(request.scope, counting_receive)
        try:
            form = await limited.form(max_files=1, max_fields=8)
        except _TooLarge:
            raise
        except Exception as exc:
            raise HTTPException(400, f"malformed form: {exc}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            await form.close()
            raise HTTPException(400, 'the form needs a "file" field with the image or video')
        try:
            while block := await upload.read(1 << 20):
                size += len(block)
                if size > limit:
                    raise _TooLarge
                out.write(block)
        finally:
            await form.close()
    return size


async def _close_with_error(ws: WebSocket, error: ProtocolError) -> None:
    """Tell the client why (an error message), then close with the matching code."""
    if ws.client_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):
        await within(ws.send_text(protocol.error_message(error.code, str(error))), 5)
    with contextlib.suppress(Exception):
        reason = str(error).encode()[:120].decode(errors="ignore")
        await ws.close(error.close_code, reason=reason)
