"""The shared data-preparation runner: discovery, resume, bad videos, the report, the pool.

A stand-in method: each "video" is a text file holding its frame count (or garbage);
its worker writes OUT/NAME.txt and its layout keeps a JSON manifest. Module-level
classes, so spawned workers can unpickle them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from talkinghead.errors import MediaError
from talkinghead.training.prepare import (
    PrepareJob,
    PrepareRun,
    VideoResult,
    find_videos,
    unique_names,
)


class CountingWorker:
    """Reads the frame count from the "video"; a non-number is a bad video."""

    built = 0

    def __init__(self, out_dir: str, fail_setup: bool = False) -> None:
        if fail_setup:
            raise RuntimeError("no such network")
        CountingWorker.built += 1
        self.out_dir = Path(out_dir)
        self.closed = False

    def __call__(self, job: PrepareJob) -> list[VideoResult]:
        text = job.video.read_text()
        if not text.strip().isdigit():
            raise MediaError(f"{job.video}: not a\nvideo")  # two lines: the report gets one
        frames = int(text)
        (self.out_dir / f"{job.outputs[0]}.txt").write_text(str(frames))
        return [VideoResult(job.outputs[0], frames, {"frames": frames})]

    def close(self) -> None:
        self.closed = True


class JsonLayout:
    """OUT/manifest.json: {"ok": {name: frames}, "failed": {key: error}}."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.manifest_path = out_dir / "manifest.json"
        old = json.loads(self.manifest_path.read_text()) if self.manifest_path.is_file() else {}
        self.ok: dict[str, int] = old.get("ok", {})
        self.failed: dict[str, str] = {}
        self.writes = 0

    def finished(self, job: PrepareJob) -> list[VideoResult] | None:
        name = job.outputs[0]
        if name in self.ok and (self.out_dir / f"{name}.txt").is_file():
            return [VideoResult(name, self.ok[name])]
        return None

    def record(self, job, results, error):
        if results is None:
            self.failed[job.key] = error
        elif results[0].frames > 1000:
            return "too long for this dataset"
        else:
            self.ok.update((r.name, r.frames) for r in results)
        return None

    def write(self) -> None:
        self.writes += 1
        self.manifest_path.write_text(json.dumps({"ok": self.ok, "failed": self.failed}))


def make_videos(root: Path, contents: dict[str, str]) -> Path:
    for rel, text in contents.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def jobs_for(videos: list[Path], root: Path) -> list[PrepareJob]:
    return [PrepareJob(v, v.relative_to(root).as_posix(), (v.stem,)) for v in videos]


def run(videos_dir: Path, out: Path, workers: int = 1, **worker_kwargs):
    videos = find_videos(videos_dir, exclude=out)
    layout = JsonLayout(out)
    calls: list[tuple[int, int]] = []
    prepare = PrepareRun(out, jobs_for(videos, videos_dir), layout)
    make_worker = functools.partial(CountingWorker, str(out), **worker_kwargs)
    report = prepare.run(make_worker, workers=workers, progress=lambda *a: calls.append(a))
    return report, layout, calls


def test_find_videos_by_suffix_skipping_hidden_files_and_the_output(tmp_path):
    root = make_videos(
        tmp_path / "v",
        {
            "a.mp4": "1",
            "sub/b.MOV": "1",
            "notes.txt": "x",
            ".hidden.mp4": "1",
            ".cache/c.mp4": "1",
            "out/d.mp4": "1",
        },
    )
    found = find_videos(root, exclude=root / "out")
    assert [p.relative_to(root).as_posix() for p in found] == ["a.mp4", "sub/b.MOV"]
    assert find_videos(root / "a.mp4") == [root / "a.mp4"]  # one file is a folder of one
    with pytest.raises(MediaError, match="videos directory not found"):
        find_videos(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match=r"no video files \(.mp4"):
        find_videos(tmp_path / "empty")


def test_unique_names_number_the_repeats():
    assert unique_names(["a", "b", "a", "a"], "_") == ["a", "b", "a_2", "a_3"]
    assert unique_names(["x", "x"], "-") == ["x", "x-2"]


def test_report_lists_prepared_and_failed_and_a_bad_video_does_not_stop_the_run(tmp_path):
    videos = make_videos(tmp_path / "v", {"a.mp4": "3", "b.mp4": "garbage", "c.mp4": "5"})
    out = tmp_path / "out"
    report, layout, calls = run(videos, out)
    assert report.prepared == ["a", "c"] and report.skipped == [] and report.ok == ["a", "c"]
    assert list(report.failed) == ["b.mp4"]
    assert report.failed["b.mp4"] == f"{videos / 'b.mp4'}: not a video"  # one line
    assert report.frames == 8 and report.manifest == out / "manifest.json"
    assert report.summary() == f"2 prepared, 0 already done, 1 failed; 8 frames in {out}"
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    # the manifest is written after every video, the bad one recorded as failed
    assert layout.writes == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {"ok": {"a": 3, "c": 5}, "failed": {"b.mp4": report.failed["b.mp4"]}}


def test_resume_skips_finished_videos_and_redoes_the_rest(tmp_path):
    videos = make_videos(tmp_path / "v", {"a.mp4": "3", "b.mp4": "garbage", "c.mp4": "5"})
    out = tmp_path / "out"
    run(videos, out)
    (out / "c.txt").unlink()  # interrupted: its output is gone
    (videos / "b.mp4").write_text("4")  # the bad video fixed
    CountingWorker.built = 0
    report, _, calls = run(videos, out)
    assert report.skipped == ["a"] and report.prepared == ["b", "c"] and not report.failed
    assert report.ok == ["a", "b", "c"] and report.frames == 12
    assert calls[0] == (1, 3) and calls[-1] == (3, 3)
    assert CountingWorker.built == 1  # the networks are built once per process
    again, _, calls = run(videos, out)  # nothing left to do: no worker at all
    assert again.skipped == ["a", "b", "c"] and again.prepared == [] and calls == [(3, 3)]


def test_layout_can_refuse_results(tmp_path):
    videos = make_videos(tmp_path / "v", {"long.mp4": "5000", "short.mp4": "2"})
    report, layout, _ = run(videos, tmp_path / "out")
    assert report.failed == {"long.mp4": "too long for this dataset"}
    assert report.prepared == ["short"] and report.frames == 2 and "long" not in layout.ok


def test_worker_processes_give_the_in_process_result(tmp_path):
    videos = make_videos(tmp_path / "v", {"a.mp4": "3", "b.mp4": "garbage", "c.mp4": "5"})
    report, _, calls = run(videos, tmp_path / "out", workers=2)
    assert sorted(report.prepared) == ["a", "c"] and list(report.failed) == ["b.mp4"]
    assert report.failed["b.mp4"].endswith("b.mp4: not a video") and report.frames == 8
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert (tmp_path / "out" / "c.txt").read_text() == "5"


def test_a_worker_that_cannot_start_fails_each_video_with_the_reason(tmp_path):
    videos = make_videos(tmp_path / "v", {"a.mp4": "3", "b.mp4": "4"})
    report, _, _ = run(videos, tmp_path / "out", workers=2, fail_setup=True)
    assert report.prepared == [] and sorted(report.failed) == ["a.mp4", "b.mp4"]
    assert report.failed["a.mp4"] == "worker setup failed: RuntimeError: no such network"
    # in-process, the same mistake is raised at once: one error, not one per video
    with pytest.raises(RuntimeError, match="no such network"):
        run(videos, tmp_path / "out2", fail_setup=True)
