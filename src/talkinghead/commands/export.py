"""`talkinghead export-onnx`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import typer

from talkinghead.commands.common import transient_progress
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
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace .onnx files already in the output folder."
    ),
) -> None:
    """Export the PyTorch checkpoints to ONNX files with the release's names and I/O names.

    Networks whose sizes differ from the release's (a trained motion model) are built from
    the `talkinghead.json` sidecar beside the checkpoints, as `generate` builds them.
    """
    from rich.progress import Progress

    from talkinghead.export import ONNX_FILE_NAMES, export_onnx
    from talkinghead.methods.ditto.checkpoints import read_sidecar
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
    targets = {k: output / ONNX_FILE_NAMES[k] for k in kinds}
    check_export_targets(output, targets.values(), overwrite=overwrite)
    # The command passes the sidecar's sizes: the export layer knows no method's files.
    sizes = read_sidecar(models_dir)
    with transient_progress(*Progress.get_default_columns()) as progress:
        task = progress.add_task("exporting", total=len(kinds))
        for k in kinds:
            progress.update(task, description=f"exporting {k}")
            checkpoint = models_dir / OFFICIAL_NETWORKS[k].checkpoint_name
            net = load_official(k, checkpoint, **sizes.get(k, {}))
            path = export_onnx(net, k, targets[k], opset=opset)
            progress.advance(task)
            typer.echo(f"{k}: {path}")


def check_export_targets(output: Path, targets: Iterable[Path], *, overwrite: bool) -> None:
    """The output is a folder (or will be one) and, unless `overwrite`, holds none of the
    files the export would write: a release's ``ditto_onnx/`` is not replaced by mistake."""
    if output.exists() and not output.is_dir():
        raise TalkingHeadError(f"--output {output}: is a file; give a folder for the .onnx files")
    if overwrite:
        return
    existing = [t for t in targets if t.exists()]
    if existing:
        raise TalkingHeadError(
            f"{existing[0]} exists ({len(existing)} of the files to write do); choose another "
            "--output folder, or pass --overwrite to replace them"
        )


def register(app: typer.Typer) -> None:
    app.command("export-onnx")(export_onnx)
