"""Many videos in one run: a job file (or a folder) in, the videos and a report out.

The application layer, beside the CLI and the server: it calls the methods' public
API (`DittoPipeline`, the methods registry) and never the other way round.

- `jobs`: the job-file formats (CSV, JSON Lines, JSON, a folder and a pairing rule),
  the per-job settings and the checks run before any model loads (`plan_jobs`)
- `worker`: `JobWorker`, a pipeline loaded once that runs job after job on one device
- `schedule`, `dispatch`: which worker gets which job (jobs sharing an avatar stay on
  one worker), retries when a worker dies, the events progress displays read
- `local`: worker processes on this machine (``--workers``, ``--devices``)
- `ray_runner`: Ray actors, one per GPU or CPU slot (``--ray [ADDRESS]``)
- `report`: `BatchReport`, the summary's rows and the JSON report
- `run`: `run_batch`, all of the above in one call

Usage::

    from talkinghead.batch import run_batch

    report = run_batch("jobs.csv", checkpoints="./checkpoints", workers=2)
    print(report.summary())          # 8 done, 0 already done, 2 failed in 41.0 s: ...
    report.failed                    # JobRecord(key=..., reason=...) for each failure

See docs/batch.md.
"""

from __future__ import annotations

from talkinghead.batch.dispatch import BatchEvent
from talkinghead.batch.jobs import (
    COLUMNS,
    BatchJob,
    BatchPlan,
    JobFileError,
    JobList,
    RowFailure,
    folder_jobs,
    load_jobs,
    plan_jobs,
    read_jobs,
)
from talkinghead.batch.report import BatchReport, JobRecord, WorkerRecord
from talkinghead.batch.run import BatchError, run_batch
from talkinghead.batch.worker import JobOutcome, JobWorker, WorkerSettings

__all__ = [
    "COLUMNS",
    "BatchError",
    "BatchEvent",
    "BatchJob",
    "BatchPlan",
    "BatchReport",
    "JobFileError",
    "JobList",
    "JobOutcome",
    "JobRecord",
    "JobWorker",
    "RowFailure",
    "WorkerRecord",
    "WorkerSettings",
    "folder_jobs",
    "load_jobs",
    "plan_jobs",
    "read_jobs",
    "run_batch",
]
