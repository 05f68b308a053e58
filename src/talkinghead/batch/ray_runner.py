"""Batch jobs over a Ray cluster: one actor per GPU (or CPU slot), each holding a pipeline.

Ray (an optional extra: ``pip install "talkinghead[ray]"``) places the actors and moves
the jobs; the driver (the ``talkinghead batch`` process) keeps the queue, so avatar
affinity, retries and the report work as in a local run. Every actor loads its models
once (`JobWorker`) and runs one job at a time, writing the output itself: inputs and
outputs must be at the same paths on every node (one machine, or a shared filesystem).

A dead actor (killed, out of memory, its node lost) fails the call it was running with
a `RayActorError`. The driver then kills what is left of it, starts a replacement (at
most `max_restarts` per actor slot) and runs the job again on the next free actor,
after removing the dead writer's temporary file. The runner replaces actors itself
instead of relying on Ray's ``max_restarts``, which neither brings back an actor ended
with ``ray.kill`` nor re-runs the lost call without the driver knowing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from talkinghead.batch.dispatch import BatchEvent, Dispatch, ThrottledProgress
from talkinghead.batch.jobs import BatchJob
from talkinghead.batch.report import BatchReport, WorkerRecord
from talkinghead.batch.worker import JobOutcome, JobWorker, WorkerSettings, quiet_logs
from talkinghead.errors import SettingsError
from talkinghead.training.prepare import error_message

log = logging.getLogger(__name__)

RAY_INSTALL_HINT = 'pip install -c constraints.txt -e ".[ray]"'
CPUS_PER_CPU_ACTOR = 4  # without --workers on a CPU-only cluster: one actor per 4 cores
POLL_S = 0.2


def import_ray() -> Any:
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SettingsError(
            f"--ray needs Ray, which is not installed: {RAY_INSTALL_HINT}"
        ) from None
    return ray


class RayJobWorker:
    """The actor: a `JobWorker` plus the queue its progress goes to."""

    def __init__(self, settings: WorkerSettings, device: str, name: str, progress: Any) -> None:
        quiet_logs(settings.verbose, silence_native=False)  # Ray keeps descriptor 2 in its logs
        self.name = name
        self.progress = progress
        self.error: str | None = None
        self.worker: JobWorker | None = None
        try:
            self.worker = JobWorker(settings, device, name)
        except Exception as exc:  # reported by ready(), instead of an actor that will not start
            self.error = error_message(exc)

    def ready(self) -> tuple[float | None, str | None, int]:
        """(seconds to load the models, or None; the setup error, if any; the process id)."""
        load = self.worker.load_seconds if self.worker is not None else None
        return load, self.error, os.getpid()

    def run(self, job: BatchJob) -> JobOutcome:
        assert self.worker is not None

        def send(stage: str, done: int, total: int | None) -> None:
            # Progress is a nicety: a full or gone queue must not fail a job.
            with contextlib.suppress(Exception):
                self.progress.put_nowait((self.name, job.key, stage, done, total))

        return self.worker.run(job, ThrottledProgress(send))


@dataclass
class _Actor:
    index: int
    handle: Any = None
    name: str = ""
    ready: bool = False
    busy: bool = False
    restarts: int = 0
    closed: bool = False


class RayRunner:
    """Runs a batch's jobs on Ray actors; see the module's docstring."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        address: str | None = None,
        workers: int | None = None,
        devices: Sequence[str] | None = None,
        max_restarts: int = 2,
        verbose: bool = False,
    ) -> None:
        if devices and any(d != "cpu" for d in devices):
            raise SettingsError(
                "--devices is for local runs; on Ray every actor gets a GPU of its own "
                "(or use --devices cpu for CPU actors)"
            )
        self.ray = import_ray()
        self.settings = settings
        self.address = address
        self.workers = workers
        self.cpu_only = bool(devices)
        self.max_restarts = max_restarts
        self.verbose = verbose
        self.run_id = uuid.uuid4().hex[:8]

    def _connect(self) -> bool:
        """Connect to (or start) Ray unless this process already has; True if we did."""
        if self.ray.is_initialized():
            return False
        if not self.verbose:  # Ray's start-up notes would land among the progress bars
            logging.getLogger("ray").setLevel(logging.ERROR)
        self.ray.init(
            address=self.address,
            include_dashboard=False,
            log_to_driver=self.verbose,
            configure_logging=self.verbose,
        )
        return True

    def _actor_options(self, count: int) -> tuple[int, dict[str, Any], str, int]:
        """(actors, their Ray options, the device they see, torch threads)."""
        resources = self.ray.cluster_resources()
        gpus = 0 if self.cpu_only else int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        if gpus:
            n = min(self.workers or gpus, count)
            return n, {"num_gpus": 1, "num_cpus": 1}, "cuda", 2
        n = min(self.workers or max(1, cpus // CPUS_PER_CPU_ACTOR), count)
        per_actor = max(1, cpus // n)
        return n, {"num_cpus": per_actor}, "cpu", per_actor

    def run(self, dispatch: Dispatch, report: BatchReport, jobs: int) -> None:
        ray = self.ray
        started_here = self._connect()
        from ray.util.queue import Queue

        progress = Queue(actor_options={"num_cpus": 0})
        count, options, device, threads = self._actor_options(jobs)
        settings = replace(self.settings, torch_threads=self.settings.torch_threads or threads)
        actor_class = ray.remote(RayJobWorker)
        actors = [_Actor(i) for i in range(count)]
        calls: dict[Any, tuple[_Actor, str]] = {}  # ObjectRef -> (actor, "ready" | "run")
        records: dict[str, WorkerRecord] = {}

        def start(actor: _Actor) -> None:
            actor.name = f"talkinghead-batch-{self.run_id}-w{actor.index}" + (
                f".{actor.restarts}" if actor.restarts else ""
            )
            actor.handle = actor_class.options(
                name=actor.name, max_restarts=0, max_task_retries=0, **options
            ).remote(settings, device, actor.name, progress)
            actor.ready = actor.busy = False
            calls[actor.handle.ready.remote()] = (actor, "ready")

        def fill() -> None:
            for actor in actors:
                if actor.closed or not actor.ready or actor.busy:
                    continue
                job = dispatch.next_job(actor.index, actor.name)
                if job is None:
                    continue
                actor.busy = True
                calls[actor.handle.run.remote(job)] = (actor, "run")

        def died(actor: _Actor, why: str) -> None:
            if actor.name in records:
                records[actor.name].died = True
            else:
                report.workers.append(WorkerRecord(actor.name, device, error=why, died=True))
            for ref, (owner, _) in list(calls.items()):
                if owner is actor:
                    calls.pop(ref)
            with contextlib.suppress(Exception):  # already gone
                ray.kill(actor.handle, no_restart=True)
            dispatch.worker_died(actor.index, why)
            if actor.restarts < self.max_restarts:
                actor.restarts += 1
                old = actor.name
                start(actor)
                dispatch.emit(BatchEvent("replaced", actor.name, message=f"replaces {old}"))
            else:
                actor.closed = True

        try:
            for actor in actors:
                start(actor)
            while dispatch.pending and not all(a.closed for a in actors):
                if not calls:  # every actor idle: a retry is on its way into the queue
                    time.sleep(POLL_S)
                ready, _ = (
                    ray.wait(list(calls), num_returns=1, timeout=POLL_S) if calls else ([], [])
                )
                self._forward_progress(progress, dispatch)
                for ref in ready:
                    if ref not in calls:
                        continue
                    actor, kind = calls.pop(ref)
                    try:
                        value = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # raised inside the actor's method
                        if kind == "run":
                            actor.busy = False
                            key = dispatch.in_flight[actor.index][0].key
                            dispatch.finished(actor.index, JobOutcome(key, False, reason=str(exc)))
                        else:
                            died(actor, error_message(exc))
                        continue
                    except ray.exceptions.RayError as exc:  # the actor (or its node) died
                        died(actor, _death_reason(exc))
                        continue
                    if kind == "ready":
                        load, error, pid = value
                        record = WorkerRecord(actor.name, device, load_seconds=load, error=error)
                        records[actor.name] = record
                        report.workers.append(record)
                        if error is not None:
                            actor.closed = True
                            ray.kill(actor.handle, no_restart=True)
                            dispatch.emit(BatchEvent("setup_failed", actor.name, message=error))
                        else:
                            actor.ready = True
                            dispatch.emit(BatchEvent("ready", actor.name, seconds=load, pid=pid))
                    else:
                        actor.busy = False
                        records[actor.name].jobs += 1
                        dispatch.finished(actor.index, value)
                fill()
            self._forward_progress(progress, dispatch)
            if dispatch.pending:
                why = "; ".join(sorted({r.error for r in records.values() if r.error}))
                dispatch.fail_remaining(f"no Ray actor left to run it ({why or 'all died'})")
        finally:
            for actor in actors:
                if actor.handle is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(actor.handle, no_restart=True)
            with contextlib.suppress(Exception):
                progress.shutdown()
            if started_here:
                ray.shutdown()

    @staticmethod
    def _forward_progress(progress: Any, dispatch: Dispatch) -> None:
        try:
            items = progress.get_nowait_batch(progress.qsize())
        except Exception:
            return
        for name, key, stage, done, total in items:
            dispatch.emit(BatchEvent("progress", name, key, stage, done, total))


def _death_reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}" + (f": {first}" if first else "")


__all__ = ["RAY_INSTALL_HINT", "RayJobWorker", "RayRunner", "import_ray"]
