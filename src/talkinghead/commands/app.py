"""`talkinghead app`: the creator's page (Gradio) on this machine."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from talkinghead.commands.common import err_console
from talkinghead.commands.logs import third_party_logs
from talkinghead.errors import SettingsError


def app(
    ctx: typer.Context,
    checkpoints: Path | None = typer.Option(
        None,
        "--checkpoints",
        help="Release checkpoints (ditto_pytorch/, ditto_cfg/). Default: the model hub's cache.",
    ),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Fetch the release from the model hub if missing."
    ),
    revision: str | None = typer.Option(
        None, "--revision", help="Model-hub branch, tag or commit of the release."
    ),
    hubert: str | None = typer.Option(
        None, help="transformers HuBERT id/path (or .onnx) if the release's HuBERT is absent."
    ),
    model: list[str] = typer.Option(
        None,
        "--model",
        help="A trained model of another method, METHOD=DIR (dithead=..., difftalk=...; repeatable).",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(7860, min=0, max=65535, help="Port to listen on (0: any free one)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1... (auto: cuda if available)."),
    fp16: bool = typer.Option(False, help="Half-precision rendering (CUDA)."),
    face_backend: str = typer.Option("auto", help="auto, mediapipe or release."),
    batch_size: int = typer.Option(4, min=1, help="Frames per warp/decode batch."),
    max_size: int = typer.Option(1920, min=64, help="Longest side of the source, pixels."),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", help="Keep the clips here (default: a temporary folder)."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show log messages, including mediapipe's and TFLite's."
    ),
) -> None:
    """Open a page to make talking-head clips: portrait and speech in, preview and mp4 out.

    Then open http://HOST:PORT/ in a browser; docs/app.md describes the page.
    """
    ctx.with_resource(third_party_logs(verbose))
    from talkinghead import validation as check
    from talkinghead.app.generation import AppSettings, Generator, parse_models
    from talkinghead.methods.ditto.checkpoints import resolve_checkpoints

    # Options are checked before gradio or any model is imported.
    check.check_face_backend(face_backend)
    resolved = check.resolve_device(device)
    if fp16 and not resolved.startswith("cuda"):
        raise SettingsError("--fp16 needs a CUDA device; leave it out on the CPU")
    others = parse_models(model or [])
    if checkpoints is not None:
        resolve_checkpoints(checkpoints, download=False, strict=False)  # the folder exists
    if output_dir is not None and output_dir.exists() and not output_dir.is_dir():
        raise SettingsError(f"--output-dir {output_dir}: not a folder")
    # A local creator's app: nothing is reported to gradio's analytics.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from talkinghead.app.ui import launch
    except ImportError as exc:
        raise SettingsError(
            f"the app needs gradio ({exc.name} is missing): pip install 'talkinghead[gradio]'"
        ) from None
    logging.getLogger("httpx").setLevel(logging.WARNING)
    generator = Generator(
        AppSettings(
            checkpoints=checkpoints,
            download=download,
            revision=revision,
            hubert=hubert,
            device=resolved,
            fp16=fp16,
            face_backend=face_backend,
            batch_size=batch_size,
            max_size=max_size,
            other_models=others,
            output_dir=output_dir,
        )
    )
    status = generator.weights_status()
    if status is not None:
        err_console.print(f"note: {status}", highlight=False, soft_wrap=True)
    try:
        try:
            page = launch(generator, host, port, block=False)
        except OSError:  # gradio's "Cannot find empty port in range", whatever the cause
            raise SettingsError(
                f"cannot serve on {host}:{port}: the port is taken (or not allowed here); "
                "choose another --port"
            ) from None
        # Our own line instead of gradio's, whose hint (share=True in launch()) is for its API.
        err_console.print(
            f"app on {page.local_url} (Ctrl-C stops it)", highlight=False, soft_wrap=True
        )
        page.block_thread()
    finally:
        generator.close()


def register(typer_app: typer.Typer) -> None:
    typer_app.command()(app)
