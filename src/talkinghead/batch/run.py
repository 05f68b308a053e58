"""`run_batch`: a job file in, the videos and a `BatchReport` out, on this machine or on Ray.

In order: the options are checked; the jobs are read and checked (`plan_jobs`: bad
rows and jobs become failures with their reasons, finished outputs are skipped); the
Ditto release is resolved once, downloaded if it must be, before any worker starts;
what an interrupted earlier run left half-written is removed; then the jobs run on the
local pool or on Ray, and the report is rewritten after every job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from talkinghead.batch.dispatch import Dispatch, EventCallback
from talkinghead.batch.jobs import (
    BatchJob,
    BatchPlan,
    JobList,
    check_report_target,
    load_jobs,
    plan_jobs,
    remove_stale_temporaries,
)
from talkinghead.batch.report import BatchReport, JobRecord
from talkinghead.batch.worker import JobOutcome, WorkerSettings
from talkinghead.errors import CheckpointError, MediaError, SettingsError, TalkingHeadError

# Ditto settings fixed per worker (its networks and face analyser load with them).
WORKER_DITTO_SETTINGS = ("face_backend", "fp16", "batch_size", "cache")


class BatchError(TalkingHeadError):
    """The batch could not run at all (no worker could load the models)."""


def default_devices() -> list[str]:
    """Every CUDA device when there are any, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def check_options(
    *,
    workers: int | None,
    devices: Sequence[str] | None,
    retries: int,
    ditto: Mapping[str, Any],
) -> list[str] | None:
    """The batch-wide options, before anything is read or loaded; returns the devices."""
    from talkinghead.validation import check_face_backend, resolve_device

    if workers is not None and workers < 1:
        raise SettingsError(f"--workers must be at least 1, got {workers}")
    if retries < 0:
        raise SettingsError(f"--retries must be 0 or more, got {retries}")
    unknown = sorted(set(ditto) - set(WORKER_DITTO_SETTINGS))
    if unknown:
        raise SettingsError(f"not per-worker settings: {', '.join(unknown)}")
    check_face_backend(ditto.get("face_backend", "auto"))
    batch_size = ditto.get("batch_size", 4)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SettingsError(f"--batch-size must be at least 1, got {batch_size!r}")
    if devices is None:
        return None
    names = [d.strip() for d in devices if d.strip()]
    if not names:
        raise SettingsError("--devices is empty: give e.g. cuda:0,cuda:1 or cpu")
    resolved = [resolve_device(d) for d in names]
    if ditto.get("fp16") and any(not d.startswith("cuda") for d in resolved):
        raise SettingsError("--fp16 needs CUDA devices; drop it or use --devices cuda:0,...")
    return resolved


def resolve_release(
    checkpoints: str | os.PathLike[str] | None,
    *,
    download: bool,
    revision: str | None,
    hubert: str | None,
) -> str:
    """The Ditto release folder every worker loads (downloaded now when it must be)."""
    from talkinghead.methods.ditto.checkpoints import resolve_checkpoints

    ckpt = resolve_checkpoints(checkpoints, download=download, revision=revision, strict=False)
    missing = [p for p in ckpt.models.values() if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{ckpt.root}: missing Ditto checkpoint(s): " + ", ".join(str(p) for p in missing)
        )
    if hubert is None and not ckpt.aux_models["hubert"].is_file():
        raise CheckpointError(
            f"{ckpt.aux_models['hubert']} not found: put the release's HuBERT there, or pass "
            "a transformers HuBERT model id or directory (--hubert)"
        )
    return str(ckpt.root)


def _record(job: BatchJob | Any, status: str, reason: str | None = None) -> JobRecord:
    described = job.describe()
    return JobRecord(
        key=job.key,
        status=status,
        method=getattr(job, "method", "ditto"),
        reason=reason,
        **described,
    )


def new_report(plan: BatchPlan, backend: str, path: Path | None) -> BatchReport:
    """The report before the run: skipped and failed jobs final, the rest pending."""
    report = BatchReport(
        jobs_file=None if plan.origin is None else str(plan.origin), backend=backend, path=path
    )
    report.records += [_record(job, "failed", reason) for job, reason in plan.failed]
    report.records += [_record(job, "skipped") for job in plan.skipped]
    report.records += [_record(job, "pending") for job in plan.todo]
    position = {key: i for i, key in enumerate(plan.order)}
    report.records.sort(key=lambda r: position.get(r.key, len(position)))
    return report


def default_report_path(jobs: JobList) -> Path | None:
    """``<job file>.report.json`` beside a job file; ``batch-report.json`` in a folder's
    output folder."""
    if jobs.report_path is not None:
        return jobs.report_path
    if jobs.origin is None:
        return None
    origin = jobs.origin
    return origin.with_name(f"{origin.stem}.report.json")


def run_batch(
    jobs: JobList | Sequence[BatchJob] | str | os.PathLike[str],
    *,
    checkpoints: str | os.PathLike[str] | None = None,
    download: bool = True,
    revision: str | None = None,
    hubert: str | None = None,
    ditto: Mapping[str, Any] | None = None,
    workers: int | None = None,
    devices: Sequence[str] | None = None,
    ray: bool | str | None = None,
    overwrite: bool = False,
    retries: int = 2,
    report_path: str | os.PathLike[str] | None = None,
    progress: EventCallback | None = None,
    on_plan: Callable[[BatchPlan], None] | None = None,
    verbose: bool = False,
) -> BatchReport:
    """Make every job's video; returns the report (also written as JSON).

    jobs:        a job file or folder (`load_jobs`), or jobs already read (a `JobList`,
                 or `BatchJob`s)
    checkpoints, download, revision, hubert: the Ditto release, as for `DittoPipeline`
    ditto:       `DittoConfig` settings every worker loads with (face_backend, fp16,
                 batch_size, cache); a job's own settings are columns of the job file
    workers:     worker processes (local; default one per device) or Ray actors
                 (default one per GPU of the cluster, or per 4 CPUs)
    devices:     local devices, given out round-robin (default every GPU, else the CPU)
    ray:         None/False: run here; True: on Ray (started on this machine unless this
                 process is connected already); a string: the Ray cluster's address
    overwrite:   redo jobs whose output exists (default: skip them, so a batch resumes)
    retries:     how often a job whose worker died is run again
    report_path: the JSON report (default: ``<job file>.report.json``)
    progress:    called with every `BatchEvent` (workers ready, jobs' stages, outcomes)
    on_plan:     called with the checked jobs before any model loads
    """
    ditto = dict(ditto or {})
    resolved = check_options(workers=workers, devices=devices, retries=retries, ditto=ditto)
    use_ray = ray not in (None, False)
    if use_ray:
        from talkinghead.batch.ray_runner import import_ray

        import_ray()  # a missing Ray is said before the jobs are read
    if isinstance(jobs, JobList):
        job_list = jobs
    elif isinstance(jobs, (str, os.PathLike)):
        job_list = load_jobs(jobs)
    else:
        job_list = JobList(list(jobs))
    path = Path(report_path) if report_path is not None else default_report_path(job_list)
    check_report_target(path, job_list)
    plan = plan_jobs(job_list, overwrite=overwrite, worker_settings=ditto, report_path=path)
    if on_plan is not None:
        on_plan(plan)
    report = new_report(plan, "ray" if use_ray else "local", path)
    try:
        report.write()
    except OSError as exc:
        raise MediaError(
            f"{path}: cannot write the batch report ({exc.strerror}); choose another with --report"
        ) from None
    if not plan.todo:
        report.finish()
        report.write()
        return report

    release = None
    if any(job.method == "ditto" for job in plan.todo):
        release = resolve_release(checkpoints, download=download, revision=revision, hubert=hubert)
    settings = WorkerSettings.forwarding_env(
        checkpoints=release, hubert=hubert, ditto=ditto, verbose=verbose
    )
    outputs = [job.output for job in plan.todo]
    remove_stale_temporaries(outputs)  # what an interrupted earlier run left half-written

    pending = {r.key: r for r in report.records if r.status == "pending"}

    def on_outcome(job: BatchJob, outcome: JobOutcome, attempts: int, worker: str) -> None:
        record = pending[job.key]
        record.status = "done" if outcome.ok else "failed"
        record.reason = outcome.reason
        record.frames = outcome.frames
        record.size = list(outcome.size) if outcome.size else None
        record.seconds = outcome.seconds
        record.attempts = attempts
        record.worker = worker or None
        record.device = next((w.device for w in report.workers if w.name == worker), None)
        record.timings = dict(outcome.timings)
        if outcome.avatar_cached is not None:
            record.timings["avatar_cached"] = float(outcome.avatar_cached)
        report.write()

    dispatch = Dispatch(plan.todo, retries=retries, on_outcome=on_outcome, on_event=progress)
    try:
        if use_ray:
            from talkinghead.batch.ray_runner import RayRunner

            address = ray if isinstance(ray, str) and ray not in ("", "local") else None
            runner = RayRunner(
                settings,
                address=address,
                workers=workers,
                devices=resolved,
                max_restarts=retries,
                verbose=verbose,
            )
            runner.run(dispatch, report, len(plan.todo))
        else:
            from talkinghead.batch.local import LocalPool

            devices_used = resolved or default_devices()
            count = workers or (len(devices_used) if devices_used != ["cpu"] else 1)
            pool = LocalPool(
                settings, devices_used, min(count, len(plan.todo)), max_restarts=retries
            )
            pool.run(dispatch, report)
    finally:
        remove_stale_temporaries(outputs)
        report.finish()
        report.write()
    if report.workers and all(w.error for w in report.workers):
        errors = sorted({w.error for w in report.workers if w.error})
        raise BatchError(f"no worker could load the models: {'; '.join(errors)}")
    return report


__all__ = [
    "WORKER_DITTO_SETTINGS",
    "BatchError",
    "check_options",
    "default_devices",
    "default_report_path",
    "new_report",
    "resolve_release",
    "run_batch",
]
