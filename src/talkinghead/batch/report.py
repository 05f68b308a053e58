"""What a batch did, per job and overall: the summary table's rows and the JSON report.

Every job gets one `JobRecord`: ``done`` (made by this run), ``skipped`` (its output
was already there), ``failed`` (with the reason) or, when a run is interrupted,
``pending``. The report is rewritten (temp file + rename) after every finished job, so
an interrupted batch still leaves an up-to-date one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from talkinghead.training.prepare import write_json

STATUSES = ("done", "skipped", "failed", "pending")


@dataclass
class JobRecord:
    """One job's outcome. `timings` (seconds), for Ditto: ``register`` (audio decoding and
    the source's registration, or its cache hit), ``motion`` (speech features and motion
    sampling), ``render`` (rendering and encoding), ``total``; for another method:
    ``load`` (on the job that loaded its pipeline), ``prepare``, then its progress stages."""

    key: str
    status: str
    source: str | None = None
    audio: str | None = None
    output: str | None = None
    method: str = "ditto"
    reason: str | None = None
    frames: int | None = None
    size: list[int] | None = None  # [height, width]
    seconds: float | None = None
    attempts: int = 0
    worker: str | None = None
    device: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class WorkerRecord:
    """One worker (a process, or a Ray actor): where it ran and what its models cost."""

    name: str
    device: str
    load_seconds: float | None = None  # the Ditto release's; None: the worker loaded none
    jobs: int = 0
    error: str | None = None  # why it could not load its models
    died: bool = False  # it died (killed, crashed) before the batch ended


@dataclass
class BatchReport:
    """The whole batch. ``videos_per_hour`` and ``frames_per_second`` count this run's
    finished videos over its wall time (model loading included)."""

    jobs_file: str | None
    backend: str  # "local" or "ray"
    records: list[JobRecord] = field(default_factory=list)
    workers: list[WorkerRecord] = field(default_factory=list)
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    seconds: float = 0.0
    path: Path | None = None  # where it is written
    finished: bool = False
    _start: float = field(default_factory=time.perf_counter, repr=False)

    def record(self, key: str) -> JobRecord:
        return next(r for r in self.records if r.key == key)

    def by_status(self, status: str) -> list[JobRecord]:
        return [r for r in self.records if r.status == status]

    @property
    def done(self) -> list[JobRecord]:
        return self.by_status("done")

    @property
    def skipped(self) -> list[JobRecord]:
        return self.by_status("skipped")

    @property
    def failed(self) -> list[JobRecord]:
        return self.by_status("failed")

    @property
    def frames(self) -> int:
        """Frames of the videos this run made."""
        return sum(r.frames or 0 for r in self.done)

    @property
    def videos_per_hour(self) -> float:
        return len(self.done) * 3600.0 / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict[str, int]:
        return {status: len(self.by_status(status)) for status in STATUSES}

    def summary(self) -> str:
        c = self.counts()
        text = f"{c['done']} done, {c['skipped']} already done, {c['failed']} failed"
        if c["pending"]:
            text += f", {c['pending']} not run"
        text += f" in {self.seconds:.1f} s"
        if c["done"]:
            text += (
                f": {self.videos_per_hour:.0f} videos/hour, {self.frames_per_second:.1f} frames/s"
            )
        return text

    def finish(self) -> None:
        """The run is over: its wall time stops here."""
        self.seconds = time.perf_counter() - self._start
        self.finished = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs_file": self.jobs_file,
            "backend": self.backend,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "counts": self.counts(),
            "frames": self.frames,
            "videos_per_hour": round(self.videos_per_hour, 2),
            "frames_per_second": round(self.frames_per_second, 3),
            "workers": [asdict(w) for w in self.workers],
            "jobs": [asdict(r) for r in self.records],
        }

    def write(self, path: str | Path | None = None) -> Path | None:
        """Write the JSON report (temp file + rename) to `path` or the report's own."""
        target = Path(path) if path is not None else self.path
        if target is None:
            return None
        if not self.finished:
            self.seconds = time.perf_counter() - self._start
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, self.to_dict())
        return target


__all__ = ["STATUSES", "BatchReport", "JobRecord", "WorkerRecord"]
