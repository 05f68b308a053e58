"""`talkinghead prepare-data`: a folder of talking videos -> training data, for any method.

The method's preparation function is the registry's ``prepare`` entry point
(`talkinghead.methods`), imported only when that method is asked for. Every one has the signature::

    prepare_dataset(videos_dir, out_dir, *, checkpoints=None, workers=1, progress=None,
                    **method_options) -> report

`progress(done, total)` is called with the number of videos done. The three methods
return the shared `talkinghead.training.prepare.PrepareReport`: its ``summary()`` is
printed and its ``failed`` mapping (video -> error) listed (another report type only
needs a ``str()``).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from talkinghead.commands.common import (
    description_column,
    err_console,
    labelled,
    transient_progress,
)
from talkinghead.commands.logs import third_party_logs
from talkinghead.errors import TalkingHeadError
from talkinghead.methods import METHODS, get_method


def load_prepare_function(method: str) -> Callable[..., Any]:
    """The `prepare_dataset` of `method`, as the methods registry names it."""
    chosen = get_method(method)
    chosen.check_installed()
    return chosen.entry_point("prepare")


def check_options(fn: Callable[..., Any], method: str, options: dict[str, Any]) -> None:
    """Refuse options the method's function does not take, naming them."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise TalkingHeadError(f"{method} data preparation has no option(s) {', '.join(unknown)}")


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> kwargs; values are JSON when they parse (3, true, "x", [1])."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise TalkingHeadError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def check_out_dir(out_dir: Path, videos_dir: Path) -> None:
    """OUT_DIR is a folder and not VIDEOS_DIR itself (a folder inside it is fine: the video
    search leaves it out)."""
    from talkinghead.validation import check_not_an_input

    check_not_an_input(out_dir, {"VIDEOS_DIR": videos_dir}, output_is_folder=False)
    if out_dir.exists() and not out_dir.is_dir():
        raise TalkingHeadError(f"{out_dir}: OUT_DIR is a file; choose a folder for the data")


def _log_to_console() -> None:
    # Warnings of the preparation (a video resampled, one skipped) go to stderr.
    root = logging.getLogger()
    if not root.handlers:
        from rich.logging import RichHandler

        handler = RichHandler(console=err_console, show_time=False, show_path=False)
        logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler])


def prepare_data(
    ctx: typer.Context,
    videos_dir: Path = typer.Argument(..., help="Folder of talking videos (searched recursively)."),
    out_dir: Path = typer.Argument(..., help="Where the training data goes (resumable)."),
    method: str = typer.Option(
        "ditto",
        "--method",
        help=f"Whose data to prepare: {', '.join(n for n, m in METHODS.items() if m.prepare)}.",
    ),
    checkpoints: Path | None = typer.Option(
        None, "--checkpoints", help="Release checkpoints directory the method's networks come from."
    ),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Parallel worker processes."),
    face_backend: str | None = typer.Option(
        None, "--face-backend", help="ditto: auto (default), release or mediapipe."
    ),
    hubert: str | None = typer.Option(
        None,
        "--hubert",
        help="ditto: HuBERT ONNX file or transformers model directory "
        "(default: aux_models/hubert_streaming_fix_kv.onnx).",
    ),
    device: str | None = typer.Option(None, "--device", help="Torch device, e.g. cuda:0."),
    emotion_classifier: str | None = typer.Option(
        None,
        "--emotion-classifier",
        help="ditto: hsemotion:PATH (HSEmotion's enet_b2_8 ONNX file) or MODULE:NAME of a "
        "face-crop emotion classifier, run at 5 fps (default: every frame Neutral).",
    ),
    crop_mode: str | None = typer.Option(
        None,
        "--crop-mode",
        help="ditto: clip (default, the release's: one box per clip, head motion kept) or "
        "frame (a roll-aligned crop per frame).",
    ),
    flip: bool | None = typer.Option(
        None,
        "--flip/--no-flip",
        help="ditto: also store every video mirrored (the release's augmentation; default on).",
    ),
    landmarks: bool | None = typer.Option(
        None,
        "--landmarks/--no-landmarks",
        help="ditto: also store MediaPipe's 478 landmarks per frame (MP_lmk_npy/), "
        "for train-motion --use-lmk.",
    ),
    option: list[str] = typer.Option(
        None, "--option", help="Other method option as KEY=VALUE (repeatable)."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show log messages, including mediapipe's and TFLite's."
    ),
) -> None:
    """Prepare training data from a folder of talking videos; finished videos are skipped."""
    ctx.with_resource(third_party_logs(verbose))
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    prepare = load_prepare_function(method)
    if not videos_dir.is_dir():
        raise TalkingHeadError(f"{videos_dir}: videos directory not found")
    check_out_dir(out_dir, videos_dir)
    options = parse_options(option)
    given = {
        "face_backend": face_backend,
        "hubert": hubert,
        "device": device,
        "flip": flip,
        "emotion_classifier": emotion_classifier,
        "crop_mode": crop_mode,
        "landmarks": landmarks,
    }
    options.update({k: v for k, v in given.items() if v is not None})
    check_options(prepare, method, options)
    _log_to_console()
    columns = (
        description_column(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with transient_progress(*columns) as bar:
        task = bar.add_task(f"{method}: preparing videos", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = prepare(
            videos_dir,
            out_dir,
            checkpoints=checkpoints,
            workers=workers,
            progress=progress,
            **options,
        )
    failed = getattr(report, "failed", None) or {}
    for name, error in failed.items():
        err_console.print(
            labelled("skipped", "yellow", f"{name}: {error}"), highlight=False, soft_wrap=True
        )
    summary = report.summary() if hasattr(report, "summary") else str(report)
    typer.echo(summary)
    ok = getattr(report, "ok", None)
    if failed and ok is not None and not ok:
        manifest = getattr(report, "manifest", out_dir)
        raise TalkingHeadError(f"no video could be prepared ({len(failed)} failed); see {manifest}")


def register(app: typer.Typer) -> None:
    app.command("prepare-data")(prepare_data)
