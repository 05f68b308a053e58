"""The same batch over a local Ray instance (two CPU actors): correct videos, recorded
failures, and an actor killed mid-job (ray.kill) loses no job and leaves no partial file."""

from __future__ import annotations

from pathlib import Path

import pytest

from _batch_helpers import check_video, hidden_files, make_batch
from _tiny_release import build_tiny_release
from talkinghead.batch import BatchEvent, run_batch

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    """Ray on this machine, two CPU slots, no dashboard; torn down after the module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return build_tiny_release(tmp_path_factory.mktemp("release"))


class KillActorDuringRender:
    """Progress callback: ray.kill()s the actor rendering `job` once it wrote a frame."""

    def __init__(self, job: str, out_dir: Path) -> None:
        self.job = job
        self.out_dir = out_dir
        self.killed: str | None = None
        self.partial: list[Path] = []
        self.events: list[BatchEvent] = []

    def __call__(self, event: BatchEvent) -> None:
        self.events.append(event)
        rendering = event.kind == "progress" and event.stage == "render" and event.done > 0
        if rendering and event.job == self.job and self.killed is None:
            self.partial = hidden_files(self.out_dir)
            self.killed = event.worker
            ray.kill(ray.get_actor(event.worker))


def test_ray_actors_run_the_batch_and_survive_a_killed_actor(ray_cluster, release, tmp_path):
    batch = make_batch(tmp_path / "batch", with_face_failure=False)
    out = batch.folder / "out"
    killer = KillActorDuringRender(batch.long_job, out)
    report = run_batch(
        batch.jobs_csv, checkpoints=release, download=False, ray=True, workers=2, progress=killer
    )
    assert report.backend == "ray"
    assert {r.key for r in report.done} == set(batch.good)
    for key, (path, frames) in batch.good.items():
        assert report.record(key).frames == frames
        check_video(path, frames)
    failed = {r.key: r.reason for r in report.failed}
    assert set(failed) == set(batch.bad)
    for key, needle in batch.bad.items():
        assert needle in failed[key]

    assert killer.killed is not None and killer.partial, "the kill must hit a job mid-render"
    assert report.record(batch.long_job).attempts == 2  # retried, not lost
    assert [w.name for w in report.workers if w.died] == [killer.killed]
    # A replacement actor was started; it is in the report if it loaded before the batch ended.
    replaced = [e.message for e in killer.events if e.kind == "replaced"]
    assert replaced == [f"replaces {killer.killed}"]
    assert len(report.workers) in (2, 3)
    assert hidden_files(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p, _ in batch.good.values())
    # The driver's Ray connection is left as it was found, and the actors are gone.
    assert ray.is_initialized()
    with pytest.raises(ValueError):
        ray.get_actor(report.workers[1].name)

    again = run_batch(batch.jobs_csv, checkpoints=release, download=False, ray=True, workers=2)
    assert {r.key for r in again.skipped} == set(batch.good) and not again.done
