"""The `talkinghead` command."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from talkinghead import __version__
from talkinghead.errors import TalkingHeadError

app = typer.Typer(
    name="talkinghead",
    help="Diffusion-based, audio-driven talking-head video (Ditto, DiT-Head, DiffTalk).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Diffusion-based, audio-driven talking-head video (Ditto, DiT-Head, DiffTalk)."""


@app.command()
def version() -> None:
    """Print the versions of talkinghead and its main dependencies."""
    import numpy
    import torch

    typer.echo(f"talkinghead {__version__}")
    typer.echo(
        f"torch {torch.__version__}, numpy {numpy.__version__}, python {sys.version.split()[0]}"
    )


@app.command("export-onnx")
def export_onnx_cmd(
    checkpoints: Path = typer.Option(
        ..., "--checkpoints", help="Release checkpoints directory (holding ditto_pytorch/models/)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Directory for the .onnx files."),
    kind: list[str] = typer.Option(
        None, "--kind", help="Network(s) to export (default: every one found)."
    ),
    opset: int = typer.Option(20, help="ONNX opset (>= 20 for the warp network's 5-D GridSample)."),
) -> None:
    """Export the PyTorch checkpoints to ONNX files with the release's names and I/O names."""
    from rich.progress import Progress

    from talkinghead.export import ONNX_FILE_NAMES, export_onnx
    from talkinghead.models import OFFICIAL_NETWORKS, load_official

    models_dir = checkpoints / "ditto_pytorch" / "models"
    if not models_dir.is_dir():
        models_dir = checkpoints  # also accept the models directory itself
    kinds = kind or [
        k for k, s in OFFICIAL_NETWORKS.items() if (models_dir / s.checkpoint_name).is_file()
    ]
    unknown = [k for k in kinds if k not in OFFICIAL_NETWORKS]
    if unknown:
        raise TalkingHeadError(
            f"unknown network kind(s): {', '.join(unknown)}; expected {', '.join(OFFICIAL_NETWORKS)}"
        )
    if not kinds:
        raise TalkingHeadError(
            f"no release checkpoints found in {checkpoints} (expected ditto_pytorch/models/*.pth)"
        )
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("exporting", total=len(kinds))
        for k in kinds:
            progress.update(task, description=f"exporting {k}")
            net = load_official(k, models_dir / OFFICIAL_NETWORKS[k].checkpoint_name)
            path = export_onnx(net, k, output / ONNX_FILE_NAMES[k], opset=opset)
            progress.advance(task)
            typer.echo(f"{k}: {path}")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 1."""
    try:
        app()
    except TalkingHeadError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
