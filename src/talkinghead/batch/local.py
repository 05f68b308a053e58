"""Batch jobs over worker processes on this machine, one device each.

Each worker is a spawned process (a forked child of a process that already ran torch
or mediapipe threads can hang) that loads its pipeline once and then runs the jobs it
is handed, one at a time, reporting progress and outcomes on a pipe of its own (a
worker killed while it writes breaks only its own pipe; with one shared queue its
unreleased lock would stop every other worker's messages). Devices
are given out round-robin (``--devices cuda:0,cuda:1``: workers 0, 2, ... on the first
GPU). A worker that dies (killed, out of memory, a native crash) is replaced by a new
process on the same device, up to `max_restarts` times per slot, and its job retried.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from talkinghead.batch.dispatch import BatchEvent, Dispatch, ThrottledProgress
from talkinghead.batch.report import BatchReport, WorkerRecord
from talkinghead.batch.worker import JobWorker, WorkerSettings, quiet_logs
from talkinghead.training.prepare import error_message

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the pool looks for dead workers while no message arrives
STOP_TIMEOUT_S = 10.0


class _EventSender:
    """The worker's end of its event pipe; progress comes from the renderer's stage threads."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._lock = threading.Lock()

    def put(self, message: tuple) -> None:
        with self._lock:
            self._connection.send(message)


def serve_local_jobs(
    slot: int, name: str, device: str, settings: WorkerSettings, tasks: Any, connection: Any
) -> None:
    """A worker process: load once, then run jobs from `tasks` until it sends None."""
    quiet_logs(settings.verbose, silence_native=not settings.verbose)
    events = _EventSender(connection)
    try:
        worker = JobWorker(settings, device, name)
    except Exception as exc:  # reported, instead of a process that silently ends
        events.put(("setup_failed", slot, name, error_message(exc), os.getpid()))
        return
    except KeyboardInterrupt:
        return
    events.put(("ready", slot, name, worker.load_seconds, os.getpid()))
    try:
        while (job := tasks.get()) is not None:
            progress = ThrottledProgress(
                lambda stage, done, total, key=job.key: events.put(
                    ("progress", slot, name, key, stage, done, total)
                )
            )
            events.put(("done", slot, name, worker.run(job, progress)))
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal's group
        pass
    finally:
        worker.close()


@dataclass
class _Slot:
    """A worker place: its current process, and how often it was restarted."""

    index: int
    device: str
    process: Any = None
    tasks: Any = None
    events: Any = None  # the driver's (reading) end of this process's event pipe
    name: str = ""
    ready: bool = False
    busy: bool = False
    restarts: int = 0
    closed: bool = False


class LocalPool:
    """`workers` spawned worker processes over `devices` (round-robin)."""

    def __init__(
        self,
        settings: WorkerSettings,
        devices: Sequence[str],
        workers: int,
        *,
        max_restarts: int = 2,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.settings = settings
        self.devices = list(devices)
        self.workers = workers
        self.max_restarts = max_restarts
        self._ctx = multiprocessing.get_context("spawn")

    def _settings_for(self, device: str) -> WorkerSettings:
        """CPU workers share the machine's cores; a GPU worker needs only a few."""
        import dataclasses

        if self.settings.torch_threads is not None:
            return self.settings
        on_cpu = sum(1 for i in range(self.workers) if self._device(i) == "cpu")
        threads = max(1, (os.cpu_count() or 1) // max(on_cpu, 1)) if device == "cpu" else 2
        return dataclasses.replace(self.settings, torch_threads=threads)

    def _device(self, index: int) -> str:
        return self.devices[index % len(self.devices)]

    def _start(self, slot: _Slot) -> None:
        slot.name = f"w{slot.index}" + (f".{slot.restarts}" if slot.restarts else "")
        slot.tasks = self._ctx.Queue()
        slot.events, sender = self._ctx.Pipe(duplex=False)
        slot.process = self._ctx.Process(
            target=serve_local_jobs,
            args=(
                slot.index,
                slot.name,
                slot.device,
                self._settings_for(slot.device),
                slot.tasks,
                sender,
            ),
            name=f"talkinghead-batch-{slot.name}",
            daemon=True,
        )
        slot.ready = slot.busy = False
        slot.process.start()
        sender.close()  # the child's copy is the only writer: its death is the pipe's EOF

    def _receive(self, slot: _Slot) -> tuple | None:
        """One message from `slot`'s process, None when none is waiting or its pipe broke
        (a process killed mid-message: `_check_alive` then sees the death)."""
        if slot.events is None:
            return None
        try:
            return slot.events.recv() if slot.events.poll() else None
        except (EOFError, OSError):
            slot.events.close()
            slot.events = None
            return None

    def run(self, dispatch: Dispatch, report: BatchReport) -> None:
        """Run every job of `dispatch`; returns when none is left (or no worker is)."""
        slots = [_Slot(i, self._device(i)) for i in range(self.workers)]
        records: dict[str, WorkerRecord] = {}
        try:
            for slot in slots:
                self._start(slot)
            checked = time.monotonic()
            while dispatch.pending and not all(s.closed for s in slots):
                readable = [s.events for s in slots if s.events is not None and not s.closed]
                ready = multiprocessing.connection.wait(readable, timeout=POLL_S)
                for slot in [s for s in slots if s.events is not None and s.events in ready]:
                    message = self._receive(slot)
                    if message is not None:
                        self._handle(message, slots, dispatch, report, records)
                        self._fill(slots, dispatch)
                # Also while messages keep coming: other workers' progress must not hide a death.
                if not ready or time.monotonic() - checked >= POLL_S:
                    self._check_alive(slots, dispatch, report, records)
                    checked = time.monotonic()
            if dispatch.pending:
                why = "; ".join(sorted({r.error for r in records.values() if r.error})) or (
                    "every worker died"
                )
                dispatch.fail_remaining(f"no worker left to run it ({why})")
        finally:
            self._stop(slots)

    def _handle(
        self,
        message: tuple,
        slots: list[_Slot],
        dispatch: Dispatch,
        report: BatchReport,
        records: dict[str, WorkerRecord],
    ) -> None:
        kind, index, name = message[:3]
        slot = slots[index]
        if name != slot.name:
            return  # from a process this slot has already replaced
        if kind == "ready":
            slot.ready = True
            records[name] = WorkerRecord(name, slot.device, load_seconds=_rounded(message[3]))
            report.workers.append(records[name])
            dispatch.emit(BatchEvent("ready", name, seconds=message[3], pid=message[4]))
        elif kind == "setup_failed":
            slot.closed = True
            records[name] = WorkerRecord(name, slot.device, error=message[3])
            report.workers.append(records[name])
            dispatch.emit(BatchEvent("setup_failed", name, message=message[3], pid=message[4]))
        elif kind == "progress":
            key, stage, done, total = message[3:]
            dispatch.emit(BatchEvent("progress", name, key, stage, done, total))
        elif kind == "done":
            slot.busy = False
            records[name].jobs += 1
            dispatch.finished(index, message[3])

    def _fill(self, slots: list[_Slot], dispatch: Dispatch) -> None:
        """Give every idle, ready worker a job (or its stop signal when none is left)."""
        for slot in slots:
            if slot.closed or not slot.ready or slot.busy:
                continue
            job = dispatch.next_job(slot.index, slot.name)
            if job is None:
                if not dispatch.in_flight:  # nothing can come back for a retry
                    slot.tasks.put(None)
                    slot.closed = True
                continue
            slot.busy = True
            slot.tasks.put(job)

    def _check_alive(
        self,
        slots: list[_Slot],
        dispatch: Dispatch,
        report: BatchReport,
        records: dict[str, WorkerRecord],
    ) -> None:
        for slot in slots:
            if slot.closed or slot.process.is_alive():
                continue
            # What it sent before it died counts (a job it finished, its ready message).
            while (message := self._receive(slot)) is not None:
                self._handle(message, slots, dispatch, report, records)
            if slot.closed:
                continue
            why = _exit_reason(slot.process.exitcode)
            if slot.name in records:
                records[slot.name].died = True
            else:  # died while loading: counts as a worker that could not start
                report.workers.append(WorkerRecord(slot.name, slot.device, error=why, died=True))
            dispatch.worker_died(slot.index, why)
            if slot.events is not None:
                slot.events.close()
            if slot.restarts < self.max_restarts:
                slot.restarts += 1
                old = slot.name
                self._start(slot)
                dispatch.emit(BatchEvent("replaced", slot.name, message=f"replaces {old}"))
            else:
                slot.closed = True
        self._fill(slots, dispatch)

    def _stop(self, slots: list[_Slot]) -> None:
        for slot in slots:
            if slot.events is not None:
                slot.events.close()
                slot.events = None
        for slot in slots:
            if slot.process is not None and slot.process.is_alive() and slot.tasks is not None:
                with contextlib.suppress(OSError, ValueError):
                    slot.tasks.put(None)
        for slot in slots:
            if slot.process is None or slot.process.pid is None:  # never started
                continue
            slot.process.join(timeout=STOP_TIMEOUT_S if not slot.busy else 0.5)
            if slot.process.is_alive():
                slot.process.terminate()
                slot.process.join(timeout=STOP_TIMEOUT_S)


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


__all__ = ["LocalPool", "serve_local_jobs"]
