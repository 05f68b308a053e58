"""`talkinghead evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer

from talkinghead.commands.common import err_console, labelled, out_console, transient_progress
from talkinghead.errors import TalkingHeadError


def check_report_paths(reports: dict[str, Path | None], inputs: dict[str, Path | None]) -> None:
    """Each report file (--json, --csv) is a file path, none of the inputs, and not the other
    report: checked before minutes of scoring, not after."""
    from talkinghead.validation import check_not_an_input

    given = {flag: path for flag, path in reports.items() if path is not None}
    for flag, path in given.items():
        if path.is_dir():
            raise TalkingHeadError(f"{flag} {path}: is a folder; give a file name for the report")
        others = {name: p for name, p in given.items() if name != flag}
        check_not_an_input(path, {**inputs, **others}, output_is_folder=False)


def evaluate(
    pred: Path = typer.Option(
        ..., "--pred", help="Generated video, or a directory of them (paired with --ref by name)."
    ),
    ref: Path = typer.Option(..., "--ref", help="Reference video, or a directory of them."),
    audio: Path = typer.Option(
        None,
        "--audio",
        help="Audio for LSE (file, or directory paired by name); default: the prediction's "
        "audio track, else the reference's.",
    ),
    metrics: str = typer.Option(
        "psnr,ssim,lpips,fid,lse,csim",
        "--metrics",
        help="Comma-separated: psnr, ssim, lpips (AlexNet), lpips_vgg, fid, lse, csim, fvd.",
    ),
    face_crop: bool = typer.Option(
        False, "--face-crop", help="Also score PSNR/SSIM/LPIPS on the face region."
    ),
    source: Path = typer.Option(
        None,
        "--source",
        help="Identity image for CSIM (file, or directory paired by name); default: the "
        "reference's first frame.",
    ),
    json_out: Path = typer.Option(None, "--json", help="Write the full result as JSON here."),
    csv_out: Path = typer.Option(None, "--csv", help="Write the per-video table as CSV here."),
    weights_dir: Path = typer.Option(
        None, "--weights-dir", help="Directory holding the metric networks' weight files."
    ),
    skip_missing: bool = typer.Option(
        False, "--skip-missing", help="Leave out metrics whose weight files are missing."
    ),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Fetch missing weight files into the cache."
    ),
    frame_stride: int = typer.Option(
        1, "--frame-stride", min=1, help="Per-frame metrics use every n-th frame."
    ),
    max_frames: int = typer.Option(
        None, "--max-frames", min=1, help="Use at most this many frames of each video."
    ),
    fid_method: str = typer.Option(
        "sqrtm", "--fid-method", help="sqrtm (pytorch-fid's) or fast (same value, much faster)."
    ),
    device: str = typer.Option("cpu", "--device", help="torch device for the networks."),
) -> None:
    """Score generated videos against references: PSNR, SSIM, LPIPS, FID, LSE-D/C, CSIM, FVD."""
    from rich.markup import escape
    from rich.progress import Progress

    from talkinghead.eval import evaluate as run_evaluation
    from talkinghead.eval import parse_metrics

    try:
        names = parse_metrics(metrics)
    except ValueError as e:
        raise TalkingHeadError(str(e)) from None
    if fid_method not in ("sqrtm", "fast"):
        raise TalkingHeadError(f"--fid-method must be sqrtm or fast, got {fid_method!r}")
    check_report_paths(
        {"--json": json_out, "--csv": csv_out},
        {"--pred": pred, "--ref": ref, "--audio": audio, "--source": source},
    )

    with transient_progress(*Progress.get_default_columns()) as progress:
        task = progress.add_task("evaluating", total=None)

        def report(what: str, done: int, total: int) -> None:
            # The default description column reads markup: a name like "take[2].mp4" is escaped.
            label = f"evaluating {escape(what)}"
            progress.update(task, description=label, completed=done, total=total)

        def on_download(spec) -> None:
            err_console.print(
                f"downloading {spec.name} from {spec.url}", highlight=False, soft_wrap=True
            )

        result = run_evaluation(
            pred,
            ref,
            audio,
            names,
            source=source,
            face_crop=face_crop,
            weights_dir=weights_dir,
            skip_missing=skip_missing,
            download=download,
            frame_stride=frame_stride,
            max_frames=max_frames,
            fid_method=fid_method,
            device=device,
            progress=report,
            on_download=on_download,
        )
    for metric, reason in result.skipped.items():
        err_console.print(
            labelled(f"skipped {metric}:", "yellow", reason), highlight=False, soft_wrap=True
        )
    out_console().print(result.table())
    if json_out is not None:
        err_console.print(f"wrote {result.write_json(json_out)}", highlight=False, soft_wrap=True)
    if csv_out is not None:
        err_console.print(f"wrote {result.write_csv(csv_out)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
