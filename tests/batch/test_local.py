"""A batch over two local worker processes on the tiny release: good jobs become correct
videos, bad ones recorded failures, a killed worker loses no job, a second run resumes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from _batch_helpers import check_video, hidden_files, make_batch
from _tiny_release import build_tiny_release
from talkinghead.batch import BatchEvent, run_batch


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return build_tiny_release(tmp_path_factory.mktemp("release"))


class KillDuringRender:
    """Progress callback: SIGKILLs the worker of `job` once it has rendered a frame,
    noting what its writer had on disk at that moment."""

    def __init__(self, job: str, out_dir: Path) -> None:
        self.job = job
        self.out_dir = out_dir
        self.pids: dict[str, int] = {}
        self.killed: str | None = None
        self.partial: list[Path] = []
        self.events: list[BatchEvent] = []

    def __call__(self, event: BatchEvent) -> None:
        self.events.append(event)
        if event.kind == "ready":
            self.pids[event.worker] = event.pid
        rendering = event.kind == "progress" and event.stage == "render" and event.done > 0
        if rendering and event.job == self.job and self.killed is None:
            self.partial = hidden_files(self.out_dir)
            self.killed = event.worker
            os.kill(self.pids[event.worker], signal.SIGKILL)


def test_two_workers_make_the_good_videos_and_record_the_bad_jobs(release, tmp_path) -> None:
    batch = make_batch(tmp_path / "batch")
    out = batch.folder / "out"
    killer = KillDuringRender(batch.long_job, out)
    report = run_batch(
        batch.jobs_csv,
        checkpoints=release,
        download=False,
        workers=2,
        retries=1,
        progress=killer,
    )

    assert {r.key for r in report.done} == set(batch.good)
    for key, (path, frames) in batch.good.items():
        assert report.record(key).output == str(path) and report.record(key).frames == frames
        check_video(path, frames)
    failed = {r.key: r.reason for r in report.failed}
    assert set(failed) == set(batch.bad)
    for key, needle in batch.bad.items():
        assert needle in failed[key], failed[key]

    # The killed worker's job ran again on a worker that lived; its half-written
    # temporary file is gone and no final name ever held a partial video.
    assert killer.killed is not None and killer.partial, "the kill must hit a job mid-render"
    assert report.record(batch.long_job).attempts == 2
    assert [w.name for w in report.workers if w.died] == [killer.killed]
    assert hidden_files(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p, _ in batch.good.values())
    # Two workers ran, each loading the models once; a registered portrait is reused.
    assert len({r.worker for r in report.done}) == 2
    # A new process took the dead one's place; its ready comes unless the batch ended first.
    replaced = [e.message for e in killer.events if e.kind == "replaced"]
    assert replaced == [f"replaces {killer.killed}"]
    assert sum(1 for e in killer.events if e.kind == "ready") in (2, 3)
    timings = report.record("two").timings
    assert {"register", "motion", "render", "total"} <= set(timings)

    saved = report.path
    assert saved == batch.folder / "jobs.report.json" and saved.is_file()

    # Run again: what is done is skipped (not rewritten); the bad jobs fail again.
    mtimes = {key: path.stat().st_mtime_ns for key, (path, _) in batch.good.items()}
    again = run_batch(batch.jobs_csv, checkpoints=release, download=False, workers=2)
    assert {r.key for r in again.skipped} == set(batch.good)
    assert {r.key for r in again.failed} == set(batch.bad)
    assert not again.done
    assert {key: path.stat().st_mtime_ns for key, (path, _) in batch.good.items()} == mtimes
