"""`talkinghead serve` (the real-time avatar server) and `talkinghead stream-client`."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from talkinghead.commands.common import err_console
from talkinghead.errors import MediaError, TalkingHeadError


def serve(
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
    max_upload_mb: float = typer.Option(20.0, min=0.01, help="Largest avatar upload, MiB."),
    max_avatars: int = typer.Option(32, min=1, help="Most registered avatars."),
    max_avatar_frames: int = typer.Option(
        50, min=1, help="Frames of a video avatar that are registered."
    ),
    idle_timeout: float = typer.Option(
        30.0,
        min=1,
        help="Seconds a quiet client (before end of speech, nothing pending) keeps a session.",
    ),
    frame_buffer: int = typer.Option(
        25, min=1, help="Frames waiting for a slow client before the oldest are dropped."
    ),
    jpeg_quality: int = typer.Option(80, min=10, max=100, help="Default JPEG quality."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Serve talking heads in real time: speech in over a WebSocket, JPEG frames out.

    Open http://HOST:PORT/ for the browser page; the protocol is in docs/serving.md.
    """
    import uvicorn

    from talkinghead.serve import ServeSettings, create_app

    for path in avatar or []:
        if not path.is_file():
            raise MediaError(f"{path}: avatar file not found")
    if avatar_dir is not None and avatar_dir.exists() and not avatar_dir.is_dir():
        raise TalkingHeadError(f"{avatar_dir}: not a directory")
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
        )
        err_console.print(f"face backend: {pipe.face_backend}, device: {dev}", highlight=False)
        return pipe

    # Load before listening, so a bad checkpoint is one error line, not a failed startup.
    pipeline = load_pipeline()
    settings = ServeSettings(
        max_sessions=max_sessions,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_avatars=max_avatars,
        max_avatar_frames=max_avatar_frames,
        avatar_dir=avatar_dir,
        preload=tuple(avatar or ()),
        idle_timeout_s=idle_timeout,
        frame_buffer=frame_buffer,
        jpeg_quality=jpeg_quality,
        max_steps=max_steps,
    )
    app = create_app(pipeline, settings)
    err_console.print(f"serving on http://{host}:{port}/ (WebSocket: /ws)", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level, ws_max_size=4 * 2**20)


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
) -> None:
    """Stream AUDIO to a running `talkinghead serve` and save the frames it sends back."""
    import cv2
    import numpy as np

    from talkinghead.audio.io import load_audio
    from talkinghead.media.writer import open_writer
    from talkinghead.serve.client import SessionError, http_base, stream_audio, upload_avatar

    if not audio.is_file():
        raise MediaError(f"{audio}: audio file not found")
    if (avatar is None) == (source is None):
        raise TalkingHeadError("give either --avatar ID or --source FILE")
    try:
        if source is not None:
            if not source.is_file():
                raise MediaError(f"{source}: source file not found")
            avatar = upload_avatar(http_base(url), source)["id"]
            err_console.print(f"avatar {avatar}", highlight=False)
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
            )
            path = writer.close()
        except BaseException:
            writer.abort()
            raise
    except (SessionError, OSError) as exc:
        raise TalkingHeadError(f"{url}: {exc}") from None
    latency = result.first_frame_latency
    typer.echo(
        f"{path} ({len(result.frames)} frames"
        + (f", first frame after {latency * 1000:.0f} ms" if latency is not None else "")
        + ")"
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("stream-client")(stream_client)
