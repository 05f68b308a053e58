"""`talkinghead serve` (the real-time avatar server) and `talkinghead stream-client`."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from talkinghead.commands.common import err_console
from talkinghead.commands.logs import third_party_logs
from talkinghead.errors import MediaError, SettingsError, TalkingHeadError
from talkinghead.media.source import DEFAULT_MAX_PIXELS

# WebSocket messages uvicorn accepts: 1 MiB is 33 s of PCM16 16 kHz audio, about the
# audio buffer of a session (30 s), so one message cannot hold much more than it.
WS_MAX_MESSAGE_BYTES = 1 << 20


def serve(
    ctx: typer.Context,
    checkpoints: Path | None = typer.Option(
        None,
        "--checkpoints",
        help="Release checkpoints (ditto_pytorch/). Default: the hub's cache.",
    ),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Fetch the release from the model hub if missing."
    ),
    hubert: str | None = typer.Option(
        None, help="transformers HuBERT id/path (or .onnx) if the release's HuBERT is absent."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="TALKINGHEAD_TOKEN",
        help="Require this token (Authorization: Bearer TOKEN, or in the session's start "
        "message) for everything but the page and /healthz.",
    ),
    allowed_host: list[str] = typer.Option(
        None,
        "--allowed-host",
        help="Another name clients reach the server by (the Host header), e.g. behind a "
        "proxy (repeatable; '*': any).",
    ),
    cors_origins: str | None = typer.Option(
        None,
        "--cors-origins",
        help="Comma-separated web origins (https://app.example.com) whose pages may use the "
        "server, besides its own page.",
    ),
    docs: bool = typer.Option(False, "--docs/--no-docs", help="Serve the API docs at /docs."),
    max_sessions: int = typer.Option(
        2, min=1, help="Concurrent streaming sessions; more are refused as busy."
    ),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1... (auto: cuda if available)."),
    fp16: bool = typer.Option(False, help="Half-precision rendering (CUDA)."),
    steps: int | None = typer.Option(
        None,
        min=1,
        help="Default DDIM steps (default: the release config's; fewer: faster, rougher).",
    ),
    max_steps: int = typer.Option(50, min=1, help="Most DDIM steps a session may ask for."),
    batch_size: int = typer.Option(4, min=1, help="Frames per warp/decode batch."),
    shared_batching: bool = typer.Option(
        False,
        "--shared-batching/--no-shared-batching",
        help="One device worker batches the motion windows and frames of all sessions "
        "(for a GPU; each session gets its own frames, docs/ditto.md).",
    ),
    max_batch: int = typer.Option(
        8, "--max-batch", min=1, help="With --shared-batching: most sessions in one call."
    ),
    gather_ms: float = typer.Option(
        2.0,
        "--gather-ms",
        min=0.0,
        max=1000.0,
        help="With --shared-batching: how long a call waits for other sessions, ms.",
    ),
    runtime: str = typer.Option(
        "auto",
        "--runtime",
        help="auto, torch, compile (CUDA graphs on a GPU), onnx or tensorrt (see generate "
        "--runtime).",
    ),
    max_size: int = typer.Option(1920, min=64, help="Longest side of an avatar, pixels."),
    face_backend: str = typer.Option("auto", help="auto, mediapipe or release."),
    avatar: list[Path] = typer.Option(
        None, "--avatar", help="Portrait or video to register at startup (repeatable)."
    ),
    avatar_dir: Path | None = typer.Option(
        None,
        "--avatar-dir",
        help="Keep uploaded avatars here across restarts (default: a temporary directory).",
    ),
    cache: bool = typer.Option(
        False,
        "--cache/--no-cache",
        help="Keep registered avatars in the avatar cache (the user's cache folder, across "
        "restarts) rather than in the server's temporary folder.",
    ),
    max_upload_mb: float = typer.Option(20.0, min=0.01, help="Largest avatar upload, MiB."),
    max_pixels: float = typer.Option(
        DEFAULT_MAX_PIXELS / 1e6,
        "--max-pixels",
        min=0.01,
        help="Largest decoded avatar picture, megapixels (checked before decoding).",
    ),
    max_avatars: int = typer.Option(32, min=1, help="Most registered avatars."),
    max_avatar_frames: int = typer.Option(
        50, min=1, help="Frames of a video avatar that are registered."
    ),
    idle_timeout: float = typer.Option(
        30.0,
        min=1,
        help="Seconds a quiet client (before end of speech, nothing pending) keeps a session.",
    ),
    max_session: float = typer.Option(
        900.0, "--max-session", min=1, help="Longest a session may last, seconds."
    ),
    max_idle_speech: float = typer.Option(
        120.0,
        "--max-idle-speech",
        min=1,
        help="Seconds without speech (pings or not) before a session is closed.",
    ),
    frame_buffer: int = typer.Option(
        25, min=1, help="Frames waiting for a slow client before the oldest are dropped."
    ),
    jpeg_quality: int = typer.Option(80, min=10, max=100, help="Default JPEG quality."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    use_ray: bool = typer.Option(
        False,
        "--ray",
        help="Deploy on Ray Serve (the ray extra): one replica per GPU, each with its own "
        "pipeline and --max-sessions; a local Ray instance unless RAY_ADDRESS is set.",
    ),
    replicas: int | None = typer.Option(
        None,
        "--replicas",
        min=1,
        help="With --ray: replicas (default: one per GPU of the cluster; 1 without GPUs).",
    ),
    replica_cpus: float = typer.Option(
        1.0, "--replica-cpus", min=0.0, help="With --ray: CPUs each replica reserves."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show log messages, including mediapipe's and TFLite's."
    ),
) -> None:
    """Serve talking heads in real time: speech in over a WebSocket, JPEG frames out.

    Open http://HOST:PORT/ for the browser page; the protocol is in docs/serving.md.
    """
    ctx.with_resource(third_party_logs(verbose))
    import uvicorn

    from talkinghead.serve import ServeSettings, create_app
    from talkinghead.serve.security import normalise_origin

    for path in avatar or []:
        if path.is_dir():
            raise MediaError(f"{path}: the avatar is a folder; give a portrait image or a video")
        if not path.is_file():
            raise MediaError(f"{path}: avatar file not found")
    if avatar_dir is not None and avatar_dir.exists() and not avatar_dir.is_dir():
        raise TalkingHeadError(f"{avatar_dir}: not a directory")
    if token is not None and not token.strip():
        raise SettingsError("--token is empty; give a long random string, or leave it out")
    origins = [o.strip() for o in (cors_origins or "").split(",") if o.strip()]
    for origin in origins:
        if origin != "*":
            try:
                normalise_origin(origin)
            except ValueError as exc:
                raise SettingsError(f"--cors-origins: {exc}") from None
    if (replicas is not None or replica_cpus != 1.0) and not use_ray:
        raise SettingsError("--replicas and --replica-cpus need --ray")
    from talkinghead.methods.ditto.validation import check_render_runtime

    check_render_runtime(runtime, device)
    if (max_batch != 8 or gather_ms != 2.0) and not shared_batching:
        raise SettingsError("--max-batch and --gather-ms need --shared-batching")
    batching = {"max_batch": max_batch, "gather_ms": gather_ms} if shared_batching else None
    if use_ray:
        try:
            import ray  # noqa: F401
            from ray import serve as _  # noqa: F401
        except ImportError:
            raise SettingsError("--ray needs Ray Serve: pip install 'talkinghead[ray]'") from None
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    def load_pipeline():
        import torch

        from talkinghead.methods.ditto.pipeline import DittoPipeline

        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        overrides = {} if steps is None else {"steps": steps}
        pipe = DittoPipeline.from_pretrained(
            checkpoints,
            download=download,
            hubert=hubert,
            **overrides,
            device=dev,
            fp16=fp16,
            batch_size=batch_size,
            max_size=max_size,
            face_backend=face_backend,
            runtime=runtime,
            shared_batching=batching,
        )
        err_console.print(f"face backend: {pipe.face_backend}, device: {dev}", highlight=False)
        return pipe

    if use_ray:
        from talkinghead.methods.ditto.checkpoints import resolve_checkpoints

        # Each replica loads its own pipeline; find (or download) the release once here,
        # so missing weights are one error line before anything is deployed.
        resolve_checkpoints(checkpoints, download=download)
        pipeline = None
    else:
        # Load before listening, so a bad checkpoint is one error line, not a failed startup.
        pipeline = load_pipeline()
    settings = ServeSettings(
        max_sessions=max_sessions,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_avatars=max_avatars,
        max_avatar_frames=max_avatar_frames,
        avatar_dir=None if use_ray else avatar_dir,  # with --ray: the shared store
        use_cache=cache,
        max_pixels=round(max_pixels * 1e6),
        preload=tuple(avatar or ()),
        idle_timeout_s=idle_timeout,
        max_session_s=max_session,
        max_idle_speech_s=max_idle_speech,
        frame_buffer=frame_buffer,
        jpeg_quality=jpeg_quality,
        max_steps=max_steps,
        host=host,
        allowed_hosts=tuple(allowed_host or ()),
        cors_origins=tuple(origins),
        token=token,
        docs=docs,
    )
    if use_ray:
        _serve_on_ray(load_pipeline, settings, host, port, replicas, replica_cpus, avatar_dir)
        return
    app = create_app(pipeline, settings)
    # The token goes in the URL's fragment, which browsers never send to a server.
    page = f"http://{host}:{port}/" + (f"#token={token}" if token else "")
    from talkinghead.serve import webrtc

    # WebRTC is optional (the webrtc extra): say which playback sessions can ask for.
    rtc = (
        "WebRTC: an offer message on /ws"
        if webrtc.available()
        else "no WebRTC: pip install 'talkinghead[webrtc]'"
    )
    err_console.print(f"serving on {page} (WebSocket: /ws; {rtc})", highlight=False, soft_wrap=True)
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(
            f"warning: listening on {host} without --token: anyone who can reach this "
            "address can use the server",
            highlight=False,
        )
    uvicorn.run(app, host=host, port=port, log_level=log_level, ws_max_size=WS_MAX_MESSAGE_BYTES)


def _serve_on_ray(
    load_pipeline,
    settings,
    host: str,
    port: int,
    replicas: int | None,
    replica_cpus: float,
    avatar_dir: Path | None,
) -> None:
    """Run the server as a Ray Serve deployment until Ctrl-C (see `serve.ray_serve`)."""
    import contextlib
    import shutil
    import signal
    import tempfile
    import threading

    import ray
    from ray import serve as ray_serve

    from talkinghead.serve.ray_serve import RayServeOptions, build_ray_app, default_replicas

    # Uploads every replica can read: --avatar-dir (kept), else a temporary folder.
    shared = avatar_dir or Path(tempfile.mkdtemp(prefix="talkinghead-ray-avatars-"))
    ray.init(include_dashboard=False)  # joins RAY_ADDRESS's cluster if set
    try:
        count = replicas or default_replicas()
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= count else 0.0
        ray_serve.start(http_options={"host": host, "port": port})
        app = build_ray_app(
            load_pipeline,
            settings,
            RayServeOptions(replicas=count, gpus_per_replica=gpus, cpus_per_replica=replica_cpus),
            shared_dir=shared,
        )
        ray_serve.run(app, name="talkinghead", route_prefix="/", blocking=False)
        err_console.print(
            f"serving on http://{host}:{port}/ (WebSocket: /ws) with {count} Ray Serve "
            f"replica(s), {settings.max_sessions} session(s) each; Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        ray_serve.shutdown()
        ray.shutdown()
        if avatar_dir is None:
            shutil.rmtree(shared, ignore_errors=True)


def stream_client(
    url: str = typer.Option(
        "ws://127.0.0.1:8000/ws", "--url", help="The server's session endpoint."
    ),
    audio: Path = typer.Option(..., "--audio", "-a", help="Speech file (any format ffmpeg reads)."),
    output: str = typer.Option(
        ..., "--output", "-o", help="Output .mp4 (with the audio), or a directory ending in '/'."
    ),
    avatar: str | None = typer.Option(None, "--avatar", help="Avatar id on the server."),
    source: Path | None = typer.Option(
        None, "--source", "-s", help="Upload this portrait/video first and use it."
    ),
    realtime: bool = typer.Option(
        False, "--realtime", help="Send the audio at its real pace, like a microphone."
    ),
    chunk_ms: float = typer.Option(100.0, min=10, help="Audio per message, milliseconds."),
    emotion: str | None = typer.Option(None, help="Emotion label or 0-7."),
    seed: int | None = typer.Option(None, help="Random seed."),
    steps: int | None = typer.Option(None, min=1, help="DDIM steps (the server caps them)."),
    token: str | None = typer.Option(
        None, "--token", envvar="TALKINGHEAD_TOKEN", help="The server's token, if it has one."
    ),
) -> None:
    """Stream AUDIO to a running `talkinghead serve` and save the frames it sends back."""
    import cv2
    import numpy as np

    from talkinghead.audio.io import load_audio
    from talkinghead.media.writer import open_writer
    from talkinghead.serve.client import SessionError, http_base, stream_audio, upload_avatar

    _check_session_url(url)
    if audio.is_dir():
        raise MediaError(f"{audio}: the audio is a folder; give a speech file (wav, mp3, ...)")
    from talkinghead.validation import check_input_file, check_not_an_input, check_output

    check_input_file(audio, "audio", "give a speech file (wav, mp3, ...)")
    if (avatar is None) == (source is None):
        raise TalkingHeadError("give either --avatar ID or --source FILE")
    if source is not None:
        check_input_file(source, "source", "give a portrait image or a video")
    check_not_an_input(output, {"--audio": audio, "--source": source})
    check_output(output)  # before the upload and the session, not after them
    try:
        if source is not None:
            if source.is_dir():
                raise MediaError(f"{source}: the source is a folder; give a portrait or a video")
            avatar = upload_avatar(http_base(url), source, token=token)["id"]
            err_console.print(f"avatar {avatar}", highlight=False, soft_wrap=True)
        pcm = load_audio(audio, 16000)
        controls: dict = {"lossless": True}
        if emotion is not None:
            controls["emotion"] = int(emotion) if emotion.isdigit() else emotion
        if seed is not None:
            controls["seed"] = seed
        if steps is not None:
            controls["steps"] = steps
        writer = open_writer(output, fps=25, audio=(load_audio(audio, 48000), 48000))
        try:

            def on_frame(index: int, timestamp: float, jpeg: bytes) -> None:
                bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                writer.write_batch([np.ascontiguousarray(bgr[..., ::-1])])

            result = stream_audio(
                url,
                avatar,
                pcm,
                controls=controls,
                chunk_ms=chunk_ms,
                realtime=realtime,
                on_frame=on_frame,
                keep_frames=False,
                token=token,
            )
            path = writer.close()
        except BaseException:
            writer.abort()
            raise
    except SessionError as exc:
        hint = " (or give --source FILE)" if exc.code == "not_found" else ""
        raise TalkingHeadError(f"{url}: {exc}{hint}") from None
    except OSError as exc:  # refused, unknown host, reset: urllib's URLError is one too
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise TalkingHeadError(
            f"{url}: cannot reach the server ({reason}); is `talkinghead serve` running there?"
        ) from None
    latency = result.first_frame_latency
    typer.echo(
        f"{path} ({len(result.frames)} frames"
        + (f", first frame after {latency * 1000:.0f} ms" if latency is not None else "")
        + ")"
    )


def _check_session_url(url: str) -> None:
    """A ws:// or wss:// URL with a host; an http(s) one is answered with its ws twin."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme in ("ws", "wss") and parts.netloc:
        return
    if parts.scheme in ("http", "https") and parts.netloc:
        scheme = "ws" if parts.scheme == "http" else "wss"
        path = parts.path if parts.path not in ("", "/") else "/ws"
        hint = f"{scheme}://{parts.netloc}{path}"
    else:
        hint = "ws://HOST:PORT/ws"
    raise TalkingHeadError(f"--url {url}: not a WebSocket URL; use {hint} (the session endpoint)")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("stream-client")(stream_client)
