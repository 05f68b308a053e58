"""`talkinghead export-onnx`."""

from __future__ import annotations

from pathlib import Path

import typer

from talkinghead.commands.common import err_console
from talkinghead.errors import TalkingHeadError


def export_onnx(
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


def register(app: typer.Typer) -> None:
    app.command("export-onnx")(export_onnx)
