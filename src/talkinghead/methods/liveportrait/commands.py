"""`talkinghead animate`: drive a portrait by a video with LivePortrait's release."""

from __future__ import annotations

from pathlib import Path

import typer

from talkinghead.commands.common import description_column, err_console
from talkinghead.commands.logs import third_party_logs


def animate(
    ctx: typer.Context,
    source: Path = typer.Option(..., "--source", "-s", help="The portrait (an image)."),
    driving: Path = typer.Option(..., "--driving", "-d", help="The driving video."),
    output: str = typer.Option(
        ..., "--output", "-o", help="out.mp4, a frames folder ending in '/', or '-'."
    ),
    checkpoints: Path = typer.Option(
        ...,
        "--checkpoints",
        "-c",
        help="LivePortrait's release: pretrained_weights/ (or its liveportrait/ folder).",
    ),
    eye_open: float | None = typer.Option(
        None, "--eye-open", help="Target eye-open ratio, 0 (closed) to 0.8; default as driven."
    ),
    lip_open: float | None = typer.Option(
        None, "--lip-open", help="Target lip-open ratio, 0 (closed) to 0.8; default as driven."
    ),
    stitching: bool = typer.Option(True, "--stitching/--no-stitching", help="Stitch keypoints."),
    multiplier: float = typer.Option(1.0, "--multiplier", help="Scale the driven motion."),
    crop_driving: bool = typer.Option(
        True, "--crop-driving/--no-crop-driving", help="Find the face in each driving frame."
    ),
    max_frames: int | None = typer.Option(None, "--max-frames", help="Stop after N frames."),
    max_size: int = typer.Option(1920, "--max-size", help="The portrait's longest side."),
    batch_size: int = typer.Option(8, "--batch-size", help="Driving frames per batch."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show log messages, including mediapipe's and TFLite's."
    ),
) -> None:
    """Animate a portrait by a driving video (relative motion), optionally retargeting eyes and lips."""
    ctx.with_resource(third_party_logs(verbose))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from talkinghead.errors import NoFaceError
    from talkinghead.face import create_face_analyzer
    from talkinghead.methods.liveportrait.checkpoints import find_release, load_liveportrait
    from talkinghead.methods.liveportrait.pipeline import (
        AnimateSettings,
        LivePortraitAnimator,
        check_portrait,
        check_settings,
        open_driving,
    )
    from talkinghead.validation import check_not_an_input, check_output, resolve_device

    settings = AnimateSettings(
        eye_open=eye_open,
        lip_open=lip_open,
        stitching=stitching,
        multiplier=multiplier,
        crop_driving=crop_driving,
        max_size=max_size,
        max_frames=max_frames,
        batch_size=batch_size,
    )
    # Every check before any network is read.
    check_settings(settings)
    device = resolve_device(device)
    check_output(output)
    check_not_an_input(output, {"--source": source, "--driving": driving})
    portrait = check_portrait(source, max_size)
    open_driving(driving).close()
    find_release(checkpoints)
    analyzer = create_face_analyzer("mediapipe")  # LivePortrait's own face models are not loaded
    try:
        analyzer.analyze(portrait)
    except NoFaceError as exc:
        raise NoFaceError(
            f"{source}: {exc}; use a picture where a face is clearly visible"
        ) from None

    animator = LivePortraitAnimator(load_liveportrait(checkpoints, device=device), analyzer)
    with Progress(
        description_column(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task("animate", total=None)

        def progress(stage: str, done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        result = animator.animate(source, driving, output, settings, progress=progress)
    if output != "-":
        err_console.print(
            f"wrote {result.output} ({result.num_frames} frames at {result.fps:g} fps, "
            f"face backend {result.face_backend})",
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.command("animate")(animate)
