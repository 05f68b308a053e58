"""A chain of processing stages running concurrently, connected by bounded queues.

Each stage runs in its own thread; bounded queues give backpressure, so a fast
producer never buffers a whole video in memory. The first exception in any stage
stops every stage and is re-raised to the caller; no thread outlives `close()`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

_END = object()  # end-of-stream marker travelling down the chain
_POLL_S = 0.05  # how often blocked threads look at the stop flag


class PipelineStopped(RuntimeError):
    """The pipeline was stopped (aborted or failed) while the caller was feeding or reading it."""


@dataclass
class Stage:
    """One step: `process(item)` returns the items it emits (possibly none).

    `finish()` runs once at the end of the stream and returns any items still held
    back (e.g. the last frames of a windowed model).
    """

    name: str
    process: Callable[[Any], Iterable[Any]]
    finish: Callable[[], Iterable[Any]] | None = None
    items_done: int = field(default=0, init=False)


class StageRunner:
    """Runs `stages` in threads: `put()` items in, `close()`, then iterate `results()`.

    Inner queues hold at most `maxsize` items, so `put()` blocks while the stages
    are busy (backpressure); the last stage's output is collected without bound.

    Use as a context manager so that an exception in the caller's own code also
    stops and joins every thread.
    """

    def __init__(self, stages: list[Stage], maxsize: int = 8) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = stages
        # The output queue is unbounded so a caller may feed everything before reading
        # without deadlock; make the last stage a sink (e.g. the writer) to bound memory.
        self._queues: list[queue.Queue] = [queue.Queue(maxsize) for _ in stages]
        self._queues.append(queue.Queue())
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._error_stage: str | None = None
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"stage-{s.name}", daemon=True)
            for i, s in enumerate(stages)
        ]
        self._started = self._closed = False

    # ---- lifecycle

    def start(self) -> StageRunner:
        if not self._started:
            self._started = True
            for t in self._threads:
                t.start()
        return self

    def __enter__(self) -> StageRunner:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.abort()
        self.join()

    def abort(self) -> None:
        """Stop every stage as soon as possible (pending items are dropped)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            if t.is_alive():
                t.join(timeout)

    @property
    def error(self) -> BaseException | None:
        return self._error

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    # ---- feeding and reading

    def put(self, item: Any) -> None:
        """Feed one item to the first stage (blocks while the queue is full)."""
        if self._closed:
            raise RuntimeError("put() after close()")
        self._put(0, item, caller=True)

    def close(self) -> None:
        """Mark the end of the input; stages then finish and flush in order."""
        if not self._closed:
            self._closed = True
            self._put(0, _END, caller=True)

    def results(self) -> Iterator[Any]:
        """Items from the last stage, in order, until the end of the stream."""
        out = self._queues[-1]
        while True:
            item = self._get(out, caller=True)
            if item is _END:
                self.join()
                self.raise_if_failed()
                return
            yield item

    def poll(self) -> list[Any]:
        """Whatever the last stage has emitted so far, without waiting."""
        self.raise_if_failed()
        items = []
        out = self._queues[-1]
        while True:
            try:
                item = out.get_nowait()
            except queue.Empty:
                return items
            if item is _END:
                out.put(_END)  # leave the marker for results()
                return items
            items.append(item)

    # ---- internals

    def _fail(self, stage: str, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error, self._error_stage = exc, stage
        self._stop.set()

    def _put(self, index: int, item: Any, caller: bool = False) -> None:
        q = self._queues[index]
        while True:
            if self._stop.is_set():
                if caller:
                    self.raise_if_failed()
                    raise PipelineStopped("the pipeline was stopped")
                raise _Stopped
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue, caller: bool = False) -> Any:
        while True:
            if self._stop.is_set() and q.empty():
                if caller:
                    self.join()
                    self.raise_if_failed()
                    raise PipelineStopped("the pipeline was stopped")
                raise _Stopped
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue

    def _run(self, index: int) -> None:
        stage = self.stages[index]
        inbox = self._queues[index]
        try:
            while True:
                item = self._get(inbox)
                if item is _END:
                    if stage.finish is not None:
                        for out in stage.finish():
                            self._put(index + 1, out)
                    self._put(index + 1, _END)
                    return
                for out in stage.process(item):
                    self._put(index + 1, out)
                stage.items_done += 1
        except _Stopped:
            return
        except BaseException as exc:  # handed to the caller
            self._fail(stage.name, exc)


class _Stopped(Exception):
    """Internal: unwinds a stage thread after a stop."""
