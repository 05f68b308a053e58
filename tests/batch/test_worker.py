"""JobWorker's DiT-Head/DiffTalk path: one pipeline per checkpoint, kept; else `generate`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from talkinghead.batch.jobs import BatchJob
from talkinghead.batch.worker import OTHER_PIPELINES_KEPT, JobWorker, WorkerSettings
from talkinghead.media.clip import VideoClip
from talkinghead.methods import METHODS


def _video(output: str | Path) -> Path:
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    return VideoClip(frames, 25, np.zeros(1920, np.float32), 16000).save(output)


class _Pipeline:
    LOAD_OPTIONS = ("resolution",)
    loads: ClassVar[list[tuple[str, dict]]] = []

    @classmethod
    def from_pretrained(cls, checkpoints, *, device, **load):
        cls.loads.append((str(checkpoints), load))
        return cls()

    def generate(self, source, audio, output, *, seed, steps, progress=None, **options):
        return _video(output)


def _job(tmp_path: Path, i: int, checkpoints: str, **options) -> BatchJob:
    return BatchJob(
        f"j{i}",
        tmp_path / "face.png",
        tmp_path / "speech.wav",
        str(tmp_path / f"out{i}.mp4"),
        method="difftalk",
        settings={"seed": 0},
        checkpoints=Path(checkpoints),
        options=options,
    )


def test_pipelines_load_once_per_checkpoint_and_the_least_recent_goes(tmp_path, monkeypatch):
    from talkinghead.methods.difftalk import pipeline

    monkeypatch.setattr(pipeline, "DiffTalkPipeline", _Pipeline)
    _Pipeline.loads = []
    worker = JobWorker(WorkerSettings(), "cpu")
    # c pushes out b (a was used after it), so a is still loaded and b loads again
    order = ["a", "a", "b", "a", "c", "a", "b"]
    outcomes = [worker.run(_job(tmp_path, i, ck, resolution=256)) for i, ck in enumerate(order)]
    assert all(o.ok and o.frames == 3 for o in outcomes), outcomes
    assert OTHER_PIPELINES_KEPT == 2
    assert [c for c, _ in _Pipeline.loads] == ["a", "b", "c", "b"]
    assert _Pipeline.loads[0][1] == {"resolution": 256}
    worker.run(_job(tmp_path, 9, "a", resolution=512))  # another resolution: other weights
    assert _Pipeline.loads[-1] == ("a", {"resolution": 512})


def test_a_method_without_a_pipeline_class_runs_generate_per_job(tmp_path, monkeypatch):
    from talkinghead.methods.difftalk import pipeline

    calls = []

    def generate_video(source, audio, output, *, checkpoints, device, progress, **kwargs):
        calls.append((checkpoints, device, kwargs))
        return _video(output)

    monkeypatch.setitem(METHODS, "difftalk", replace(METHODS["difftalk"], pipeline=None))
    monkeypatch.setattr(pipeline, "generate_video", generate_video)
    outcome = JobWorker(WorkerSettings(), "cpu").run(_job(tmp_path, 0, "m", resolution=256))
    assert outcome.ok, outcome
    assert calls == [(Path("m"), "cpu", {"seed": 0, "steps": None, "resolution": 256})]


def test_a_job_s_timings_name_its_method_s_stages_and_the_load(tmp_path, monkeypatch):
    import time

    from talkinghead.methods.difftalk import pipeline

    class Staged(_Pipeline):
        @classmethod
        def from_pretrained(cls, checkpoints, *, device, **load):
            time.sleep(0.05)
            return cls()

        def generate(self, source, audio, output, *, seed, steps, progress=None, **options):
            for stage in ("source", "frames"):
                progress(stage, 0, 1)
                time.sleep(0.02)
            return _video(output)

    monkeypatch.setattr(pipeline, "DiffTalkPipeline", Staged)
    worker = JobWorker(WorkerSettings(), "cpu")
    assert worker.load_seconds is None  # no Ditto release: nothing loaded at start
    first, second = (worker.run(_job(tmp_path, i, "a")) for i in range(2))
    assert list(first.timings) == ["load", "prepare", "source", "frames", "total"]
    assert first.timings["load"] >= 0.05 and second.timings["frames"] >= 0.02
    assert list(second.timings) == ["prepare", "source", "frames", "total"]  # loaded already
    total = sum(v for k, v in first.timings.items() if k != "total")
    assert total == pytest.approx(first.timings["total"], abs=1e-3)


def test_stage_timings_for_ditto_name_its_three_phases():
    from talkinghead.batch.worker import stage_timings

    stamps = {"audio": 1.5, "features": 2.0, "motion": 2.5, "render": 4.0}
    assert stage_timings(1.0, stamps, 10.0) == {
        "register": 1.0,
        "motion": 2.0,
        "render": 6.0,
        "total": 9.0,
    }


@pytest.fixture(autouse=True)
def _needs_the_latent_extra():
    from _extras import skip_without_packages_of

    skip_without_packages_of("difftalk")
