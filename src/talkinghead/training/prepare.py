"""The data-preparation runner every method shares: videos in, per-video outputs, one report.

A method prepares its training data from a folder of talking videos in four steps,
of which only the last is its own:

1. `find_videos` lists the videos (recursively, by suffix, hidden files and the
   output folder left out);
2. the method names each video's outputs (`PrepareJob`) and its `DatasetLayout`
   says whether an earlier run finished them: those are skipped, so an interrupted
   run can be started again;
3. `PrepareRun.run` processes the rest, in this process or in a pool of spawned
   worker processes, each building its networks once (`make_worker`);
4. per video, the method's worker writes its arrays and returns `VideoResult`s; the
   layout records them in its manifest, which is rewritten after every video.

One bad video (unreadable, no audio, no face...) is logged, recorded as failed and
skipped; the others go on. Every method returns the same `PrepareReport`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from talkinghead.errors import MediaError, TalkingHeadError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm")

# (videos done, videos in all), called at the start and after every video.
Progress = Callable[[int, int], None]


# --- discovery ---------------------------------------------------------------------------


def find_videos(videos: str | Path, *, exclude: str | Path | None = None) -> list[Path]:
    """The video files under a folder (recursively, sorted), or the one file given.

    Hidden files and folders (a name starting with ".") are left out, and so is
    everything under `exclude` (an output folder inside the videos folder).
    """
    root = Path(videos)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise MediaError(f"{root}: videos directory not found")
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.suffix.lower() not in VIDEO_SUFFIXES or not p.is_file():
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        if skip is not None and skip in p.resolve().parents:
            continue
        found.append(p)
    if not found:
        raise MediaError(f"{root}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    return found


def unique_names(stems: Sequence[str], separator: str) -> list[str]:
    """`stems` made unique in order: a repeated one gets ``<separator>2``, ``<separator>3``..."""
    taken: set[str] = set()
    names = []
    for stem in stems:
        name, k = stem, 1
        while name in taken:
            k += 1
            name = f"{stem}{separator}{k}"
        taken.add(name)
        names.append(name)
    return names


# --- what a method supplies ------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareJob:
    """One video to prepare.

    key:     names the video in the report's `failed` and in the log
    outputs: the names of what it produces (usually one; Ditto's mirrored copy is a second)
    """

    video: Path
    key: str
    outputs: tuple[str, ...]


@dataclass
class VideoResult:
    """One finished output of a video: its name, frame count and the method's manifest entry."""

    name: str
    frames: int
    entry: dict[str, Any] = field(default_factory=dict)


class VideoWorker(Protocol):
    """Turns one video into its outputs (writing their files); raises on a bad video.

    Built once per process by the method's `make_worker`; may have a ``close()``.
    """

    def __call__(self, job: PrepareJob) -> list[VideoResult]: ...


# Builds a worker. With workers > 1 it is pickled into spawned processes, so it must
# be a module-level callable (a class, a functools.partial of one) with picklable state.
WorkerFactory = Callable[[], VideoWorker]


class DatasetLayout(Protocol):
    """A method's output folder: what is finished there, and its manifest."""

    manifest_path: Path

    def finished(self, job: PrepareJob) -> list[VideoResult] | None:
        """The results an earlier run left for `job`, when all its outputs are complete."""
        ...

    def record(
        self, job: PrepareJob, results: list[VideoResult] | None, error: str | None
    ) -> str | None:
        """Note a processed video (results, or None and the error); returning an error
        refuses the results (e.g. arrays that do not fit the dataset)."""
        ...

    def write(self) -> None:
        """Write the manifest for everything recorded so far (after every video)."""
        ...


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON through a temp file and a rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class ClipListLayout:
    """A layout of one clip per video whose manifest lists the finished clips' entries and
    the failures, in video order (DiT-Head's and DiffTalk's).

    Subclasses set `manifest_name` and say what an earlier run left (`earlier_clip`) and
    what the manifest holds (`manifest`); a worker's `VideoResult.entry` is the clip's entry.
    """

    manifest_name: str

    def __init__(self, out_dir: Path, jobs: Sequence[PrepareJob]) -> None:
        self.out_dir = out_dir
        self.manifest_path = out_dir / self.manifest_name
        self.jobs = list(jobs)
        self.clips: dict[str, dict[str, Any]] = {}  # job key -> clip entry
        self.failed: dict[str, str] = {}  # job key -> error

    def earlier_clip(self, job: PrepareJob) -> dict[str, Any] | None:
        """The entry of the clip an earlier run finished for `job`, if it is still valid."""
        raise NotImplementedError

    def manifest(self, clips: list[dict[str, Any]], failed: dict[str, str]) -> dict[str, Any]:
        raise NotImplementedError

    def finished(self, job: PrepareJob) -> list[VideoResult] | None:
        entry = self.earlier_clip(job)
        if entry is None:
            return None
        self.clips[job.key] = entry
        return [VideoResult(entry["name"], int(entry["frames"]), entry)]

    def record(
        self, job: PrepareJob, results: list[VideoResult] | None, error: str | None
    ) -> str | None:
        if results is None:
            self.failed[job.key] = str(error)
        else:
            self.clips[job.key] = results[0].entry
        return None

    def write(self) -> None:
        clips = [self.clips[j.key] for j in self.jobs if j.key in self.clips]
        failed = {j.key: self.failed[j.key] for j in self.jobs if j.key in self.failed}
        write_json(self.manifest_path, self.manifest(clips, failed))


# --- the report -----------------------------------------------------------------------------


@dataclass
class PrepareReport:
    """What a data-preparation run did; the same for every method."""

    out_dir: Path
    manifest: Path
    prepared: list[str] = field(default_factory=list)  # outputs written by this run
    skipped: list[str] = field(default_factory=list)  # outputs finished by an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # video key -> one-line error
    frames: int = 0  # frames of every finished output (prepared + skipped)
    seconds: float = 0.0  # how long the run took

    @property
    def ok(self) -> list[str]:
        """Every finished output: skipped, then prepared."""
        return [*self.skipped, *self.prepared]

    def summary(self) -> str:
        return (
            f"{len(self.prepared)} prepared, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed; {self.frames} frames in {self.out_dir}"
        )

    def __str__(self) -> str:
        return self.summary()


def error_message(exc: BaseException) -> str:
    """One line for the report: a toolkit error's own message, else its type and text."""
    msg = str(exc) if isinstance(exc, TalkingHeadError) else f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split())


# --- worker processes ---------------------------------------------------------------------------

_WORKER: VideoWorker | None = None
_WORKER_ERROR: str | None = None


def _worker_init(make_worker: WorkerFactory, torch_threads: int) -> None:
    """Process-pool initializer: build this process's worker once."""
    global _WORKER, _WORKER_ERROR
    logging.basicConfig(level=logging.WARNING)
    try:
        import torch

        torch.set_num_threads(torch_threads)  # the workers share the machine's cores
        _WORKER = make_worker()
    except Exception as exc:  # reported with every video, instead of a broken pool
        _WORKER_ERROR = error_message(exc)


def _process(worker: VideoWorker, job: PrepareJob) -> tuple[list[VideoResult] | None, str | None]:
    try:
        return worker(job), None
    except Exception as exc:  # one bad video must not stop the run
        return None, error_message(exc)


def _worker_run(job: PrepareJob) -> tuple[list[VideoResult] | None, str | None]:
    if _WORKER is None:
        return None, f"worker setup failed: {_WORKER_ERROR}"
    return _process(_WORKER, job)


# --- the run --------------------------------------------------------------------------------------


class PrepareRun:
    """The jobs of one run, split into those an earlier run finished and those to do."""

    def __init__(self, out_dir: Path, jobs: Sequence[PrepareJob], layout: DatasetLayout) -> None:
        self.out_dir = Path(out_dir)
        self.jobs = list(jobs)
        self.layout = layout
        self.done: dict[str, list[VideoResult]] = {}
        self.todo: list[PrepareJob] = []
        for job in self.jobs:
            results = layout.finished(job)
            if results is None:
                self.todo.append(job)
            else:
                self.done[job.key] = results

    def run(
        self,
        make_worker: WorkerFactory | None,
        *,
        workers: int = 1,
        progress: Progress | None = None,
    ) -> PrepareReport:
        """Process the jobs left to do; `make_worker` may be None when there are none.

        With ``workers > 1`` videos go to that many spawned processes (forked children
        of a process that already ran torch or mediapipe threads can hang).
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        start = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        report = PrepareReport(self.out_dir, self.layout.manifest_path)
        for results in self.done.values():
            report.skipped += [r.name for r in results]
            report.frames += sum(r.frames for r in results)
        total, finished = len(self.jobs), len(self.done)
        if progress is not None:
            progress(finished, total)

        def record(job: PrepareJob, results: list[VideoResult] | None, error: str | None) -> None:
            nonlocal finished
            refused = self.layout.record(job, results, error)
            error = refused or error
            if error is not None or results is None:
                report.failed[job.key] = error or "no results"
                log.warning("skipping %s: %s", job.video, error)
            else:
                report.prepared += [r.name for r in results]
                report.frames += sum(r.frames for r in results)
            self.layout.write()
            finished += 1
            if progress is not None:
                progress(finished, total)

        if not self.todo:
            self.layout.write()
        elif make_worker is None:
            raise ValueError("videos are left to prepare but no worker factory was given")
        elif workers == 1:
            worker = make_worker()
            try:
                for job in self.todo:
                    record(job, *_process(worker, job))
            finally:
                close = getattr(worker, "close", None)
                if close is not None:
                    close()
        else:
            self._run_pool(make_worker, workers, record)
        report.seconds = time.perf_counter() - start
        return report

    def _run_pool(
        self,
        make_worker: WorkerFactory,
        workers: int,
        record: Callable[[PrepareJob, list[VideoResult] | None, str | None], None],
    ) -> None:
        import multiprocessing

        workers = min(workers, len(self.todo))
        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(make_worker, threads),
        )
        with pool:
            pending: dict[Future, PrepareJob] = {
                pool.submit(_worker_run, job): job for job in self.todo
            }
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in ready:
                    job = pending.pop(future)
                    try:
                        results, error = future.result()
                    except BrokenProcessPool as exc:
                        results, error = None, f"worker process died ({exc})"
                    record(job, results, error)


__all__ = [
    "VIDEO_SUFFIXES",
    "ClipListLayout",
    "DatasetLayout",
    "PrepareJob",
    "PrepareReport",
    "PrepareRun",
    "VideoResult",
    "VideoWorker",
    "WorkerFactory",
    "error_message",
    "find_videos",
    "unique_names",
    "write_json",
]
