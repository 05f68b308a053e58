"""`talkinghead batch`: many videos in one run, on this machine or on a Ray cluster.

The engine is `talkinghead.batch.run_batch`; this module turns the options into its
arguments, shows the progress (all jobs, and each worker's current job) and prints
the summary table. Bad options and an unreadable job file are one-line errors before
any model loads; a bad job is a row of the table with its reason, and the command
ends with status 1 when any job failed (after every other job ran).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from talkinghead.commands.common import err_console, out_console
from talkinghead.commands.logs import third_party_logs
from talkinghead.errors import TalkingHeadError
from talkinghead.methods import METHODS

# Past this many jobs the summary table lists only the failures (the report has them all).
FULL_TABLE_MAX = 40
EMOTION_HELP = "Default emotion: Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise, Contempt"


class BatchFailed(TalkingHeadError):
    """Some jobs of the batch failed (the others ran)."""


class _BatchProgress:
    """Rich progress: one bar for the batch, one line per worker with its job's stage."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<34}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]:<7}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            disable=not enabled,
        )
        self.overall: Any = None
        self.workers: dict[str, Any] = {}

    def __enter__(self) -> _BatchProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def plan(self, plan: Any) -> None:
        finished = len(plan.skipped) + len(plan.failed)
        self.overall = self.progress.add_task(
            "all jobs", total=plan.total, completed=finished, unit="jobs"
        )

    def __call__(self, event: Any) -> None:
        if event.kind == "finished":
            self.progress.advance(self.overall)
            task = self.workers.get(event.worker)
            if task is not None:
                name = event.worker.rsplit("-", 1)[-1]
                outcome = "done" if event.ok else "failed"
                self.progress.update(task, description=f"{name} {event.job} {outcome}")
            return
        if event.kind in ("died", "setup_failed"):
            what = "died, job retried" if event.kind == "died" else "could not load"
            err_console.print(
                f"worker {event.worker}: {what} ({event.message})", highlight=False, soft_wrap=True
            )
        if event.kind not in ("started", "progress"):
            return
        name = event.worker.rsplit("-", 1)[-1]  # a Ray actor's name ends with its slot
        task = self.workers.get(event.worker)
        if task is None:
            task = self.progress.add_task("", total=None, unit="")
            self.workers[event.worker] = task
        if event.kind == "started":
            self.progress.update(task, description=f"{name} {event.job}", completed=0, total=None)
            return
        self.progress.update(
            task,
            description=f"{name} {event.job} {event.stage}",
            completed=event.done,
            total=event.total,
            unit="frames" if event.stage in ("render", "stream", "register") else "",
        )


def _summary_table(report: Any) -> Any:
    from rich.table import Table
    from rich.text import Text

    rows = report.records if len(report.records) <= FULL_TABLE_MAX else report.failed
    title = (
        "jobs"
        if rows is report.records
        else f"failed jobs (all {len(report.records)} in the report)"
    )
    table = Table(title=title, title_justify="left", show_lines=False)
    for column, justify in (
        ("job", "left"),
        ("status", "left"),
        ("frames", "right"),
        ("seconds", "right"),
        ("worker", "left"),
        ("reason / output", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")
    styles = {"done": "green", "skipped": "cyan", "failed": "red", "pending": "yellow"}
    for r in rows:
        worker = (r.worker or "").rsplit("-", 1)[-1]
        retried = f" ({r.attempts} tries)" if r.attempts > 1 else ""
        table.add_row(
            r.key,
            Text.assemble((r.status, styles[r.status]), retried),
            "" if r.frames is None else str(r.frames),
            "" if r.seconds is None else f"{r.seconds:.1f}",
            worker,
            r.reason if r.status == "failed" else (r.output or ""),
        )
    return table


def batch(
    ctx: typer.Context,
    jobs: Path = typer.Argument(
        ...,
        help="Job file (.csv, .jsonl, .json: a row per job with source, audio, output and "
        "optional settings), or a folder of portraits and speech files (see --pair).",
        show_default=False,
    ),
    pair: str = typer.Option(
        "stem",
        help="Folder JOBS: 'stem' pairs name.wav with name.jpg; 'all' every source with "
        "every audio file.",
    ),
    output_dir: Path | None = typer.Option(
        None, help="Folder JOBS: where the videos go (default: JOBS/talking)."
    ),
    checkpoints: Path | None = typer.Option(
        None,
        "--checkpoints",
        help="Ditto release (ditto_pytorch/, ditto_cfg/). Default: the model hub's cache.",
    ),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Fetch the release from the model hub if missing."
    ),
    revision: str | None = typer.Option(None, help="Model-hub revision of the release."),
    hubert: str | None = typer.Option(
        None, help="transformers HuBERT id/path (or .onnx) if the release's HuBERT is absent."
    ),
    method: str | None = typer.Option(
        None,
        help="Default method of the jobs: "
        f"{', '.join(n for n, m in METHODS.items() if getattr(m, 'generate', None))} "
        "(default ditto).",
    ),
    emotion: str | None = typer.Option(None, help=EMOTION_HELP + " (default Neutral)."),
    steps: int | None = typer.Option(None, help="Default DDIM steps."),
    seed: int | None = typer.Option(None, help="Default seed (same seed, same video)."),
    max_size: int | None = typer.Option(None, help="Default longest source side, pixels."),
    face_backend: str = typer.Option("auto", help="auto, mediapipe or release."),
    fp16: bool = typer.Option(False, help="Half-precision rendering (CUDA)."),
    batch_size: int = typer.Option(4, help="Frames per warp/decode batch."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse registered avatars."),
    workers: int | None = typer.Option(
        None,
        help="Workers, each loading the models once (default: one per device; on Ray one "
        "per GPU, or per 4 CPUs).",
    ),
    devices: str | None = typer.Option(
        None,
        help="Comma list, given to workers round-robin, e.g. cuda:0,cuda:1 (default: "
        "every GPU, else cpu).",
    ),
    ray: bool = typer.Option(
        False,
        "--ray",
        help="Run on Ray: one actor per GPU or CPU slot. Starts Ray on this machine unless "
        "--ray-address (or RAY_ADDRESS) names a cluster. Needs the 'ray' extra.",
    ),
    ray_address: str | None = typer.Option(
        None, help="A Ray cluster to run on (e.g. ray://head:10001 or auto); implies --ray."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo jobs whose output exists (default: skip them)."
    ),
    retries: int = typer.Option(2, help="Runs again a job whose worker died, this many times."),
    report: Path | None = typer.Option(
        None, help="JSON report (default: JOBS.report.json beside the job file)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show log messages, the workers' and Ray's included."
    ),
) -> None:
    """Make many videos: a job file (or folder) in, the videos, a summary and a JSON report out.

    Models load once per worker; outputs that exist are skipped, so running the same
    command again resumes a batch; a bad job is recorded with its reason and the others
    go on. See docs/batch.md.
    """
    ctx.with_resource(third_party_logs(verbose))
    from talkinghead.batch import load_jobs, run_batch
    from talkinghead.batch.run import check_options

    defaults = {
        name: value
        for name, value in (
            ("method", method),
            ("emotion", emotion),
            ("steps", steps),
            ("seed", seed),
            ("max_size", max_size),
        )
        if value is not None
    }
    ditto = {"face_backend": face_backend, "fp16": fp16, "batch_size": batch_size, "cache": cache}
    device_list = None if devices is None else devices.split(",")
    use_ray: bool | str | None = ray_address if ray_address else (True if ray else None)
    # Options first, then the job file: both before any model loads.
    check_options(workers=workers, devices=device_list, retries=retries, ditto=ditto)
    if method is not None:
        from talkinghead.batch.jobs import generating_methods
        from talkinghead.methods import get_method

        get_method(method)  # an unknown name is refused with the list of methods
        if method not in generating_methods():
            raise TalkingHeadError(
                f"--method {method}: it does not make videos from speech; use "
                f"{', '.join(generating_methods())}"
            )
    job_list = load_jobs(jobs, defaults=defaults, pair=pair, output_dir=output_dir)
    try:
        with _BatchProgress(enabled=not quiet) as progress:
            result = run_batch(
                job_list,
                checkpoints=checkpoints,
                download=download,
                revision=revision,
                hubert=hubert,
                ditto=ditto,
                workers=workers,
                devices=device_list,
                ray=use_ray,
                overwrite=overwrite,
                retries=retries,
                report_path=report,
                progress=progress,
                on_plan=progress.plan,
                verbose=verbose,
            )
    except KeyboardInterrupt:
        err_console.print(
            "interrupted: finished videos are kept; run the same command again to go on",
            highlight=False,
        )
        raise typer.Exit(130) from None
    out = out_console()  # the table and the summary are the command's result: stdout
    out.print(_summary_table(result))
    out.print(f"{result.summary()}; report: {result.path}", highlight=False, soft_wrap=True)
    failed = result.failed
    if failed:
        raise BatchFailed(
            f"{len(failed)} of {len(result.records)} jobs failed (reasons above and in "
            f"{result.path}); fix them and run the same command again: finished videos are "
            "skipped"
        )


def register(app: typer.Typer) -> None:
    app.command()(batch)
