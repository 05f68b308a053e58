"""The bookkeeping both runners share: who runs what, retries, and the events they emit.

A runner (the local process pool, the Ray actors) owns its workers; `Dispatch` owns
the jobs. A free worker asks `next_job(slot)`; a finished job comes back with
`finished(slot, outcome)`; a worker that died mid-job is reported with
`worker_died(slot, why)`, which removes what its writer left half-done (the writers'
hidden temporary files: the final name never holds a partial video) and puts the job
back at the front of its group, up to `retries` times, then records it as failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from talkinghead.batch.jobs import BatchJob, remove_stale_temporaries
from talkinghead.batch.schedule import AffinityQueue
from talkinghead.batch.worker import JobOutcome

log = logging.getLogger(__name__)

# How often a worker reports a job's progress within one stage, at most (seconds).
PROGRESS_INTERVAL_S = 0.25


@dataclass(frozen=True)
class BatchEvent:
    """What the runners report while a batch runs (for progress displays and tests).

    kind: ``ready`` (a worker loaded its models: `seconds`), ``started`` (a job began on
    `worker`), ``progress`` (a job's `stage` at `done` of `total`), ``finished`` (a job
    ended: `ok`, `message` the reason of a failure), ``died`` (a worker died: `message`),
    ``setup_failed`` (a worker could not load its models: `message`), ``replaced`` (a
    replacement `worker` was started for a dead one, named in `message`; its ``ready``
    follows unless the batch ends first).
    """

    kind: str
    worker: str
    job: str | None = None
    stage: str | None = None
    done: int = 0
    total: int | None = None
    ok: bool | None = None
    message: str | None = None
    seconds: float | None = None
    pid: int | None = None


EventCallback = Callable[[BatchEvent], None]
OutcomeCallback = Callable[[BatchJob, JobOutcome, int, str], None]


class ThrottledProgress:
    """A worker-side stage callback that forwards at most every `PROGRESS_INTERVAL_S`
    within a stage (always a stage's first and last report)."""

    def __init__(
        self,
        send: Callable[[str, int, int | None], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._clock = clock
        self._stage: str | None = None
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        now = self._clock()
        if stage != self._stage or done == total or now - self._last >= PROGRESS_INTERVAL_S:
            self._stage, self._last = stage, now
            self._send(stage, done, total)


class Dispatch:
    """The jobs to run, handed to worker slots with avatar affinity (`AffinityQueue`)."""

    def __init__(
        self,
        jobs: Sequence[BatchJob],
        *,
        retries: int,
        on_outcome: OutcomeCallback,
        on_event: EventCallback | None = None,
    ) -> None:
        self.queue = AffinityQueue(jobs)
        self.retries = retries
        self.attempts: dict[str, int] = {}
        self.in_flight: dict[Hashable, tuple[BatchJob, str]] = {}
        self._on_outcome = on_outcome
        self._on_event = on_event

    @property
    def pending(self) -> bool:
        """Jobs are waiting or running."""
        return bool(self.queue) or bool(self.in_flight)

    def emit(self, event: BatchEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def next_job(self, slot: Hashable, worker: str) -> BatchJob | None:
        """The job worker `slot` (named `worker`) runs next, or None."""
        job = self.queue.next_for(slot)
        if job is None:
            return None
        self.attempts[job.key] = self.attempts.get(job.key, 0) + 1
        self.in_flight[slot] = (job, worker)
        self.emit(BatchEvent("started", worker, job.key))
        return job

    def finished(self, slot: Hashable, outcome: JobOutcome) -> None:
        job, worker = self.in_flight.pop(slot)
        self._on_outcome(job, outcome, self.attempts[job.key], worker)
        self.emit(BatchEvent("finished", worker, job.key, ok=outcome.ok, message=outcome.reason))

    def worker_died(self, slot: Hashable, why: str) -> None:
        """Worker `slot` is gone; its job (if any) is retried or recorded as failed."""
        self.queue.release(slot)
        entry = self.in_flight.pop(slot, None)
        if entry is None:
            return
        job, worker = entry
        self.emit(BatchEvent("died", worker, job.key, message=why))
        remove_stale_temporaries([job.output])
        tries = self.attempts[job.key]
        if tries <= self.retries:
            log.warning("worker %s died running %s (%s); retrying it", worker, job.key, why)
            self.queue.push(job, front=True)
            return
        reason = f"its worker died {tries} time(s) running it (last: {why})"
        self._on_outcome(job, JobOutcome(job.key, False, reason=reason), tries, worker)
        self.emit(BatchEvent("finished", worker, job.key, ok=False, message=reason))

    def fail_remaining(self, reason: str) -> None:
        """No worker is left: every waiting job fails with `reason`."""
        while self.queue:
            job = self.queue.next_for("__none__")
            assert job is not None
            tries = self.attempts.get(job.key, 0)
            self._on_outcome(job, JobOutcome(job.key, False, reason=reason), tries, "")
        self.queue.release("__none__")


__all__ = ["PROGRESS_INTERVAL_S", "BatchEvent", "Dispatch", "EventCallback", "ThrottledProgress"]
