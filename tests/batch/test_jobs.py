"""Job files and the checks before a batch runs: formats, settings, pairing, failures, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from _extras import skip_without_packages_of
from talkinghead.batch.jobs import (
    JobFileError,
    check_report_target,
    folder_jobs,
    load_jobs,
    plan_jobs,
    read_jobs,
    remove_stale_temporaries,
    stale_temporaries,
)
from talkinghead.errors import MediaError
from talkinghead.face.types import CropConfig


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A folder with a portrait, two speech files and an unreadable one (no faces needed:
    nothing here runs a model)."""
    Image.new("RGB", (64, 64), (120, 100, 90)).save(tmp_path / "face.png")
    t = np.arange(8000) / 16000
    sf.write(tmp_path / "hello.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    sf.write(tmp_path / "bye.wav", np.zeros(4000, np.float32) + 0.01, 16000)
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return tmp_path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def test_csv_rows_become_jobs_with_their_settings(media: Path) -> None:
    jobs = read_jobs(
        write_csv(
            media / "jobs.csv",
            """
source,audio,output,emotion,seed,steps,delta_yaw,crop_scale,fade_in,stream,id
face.png,hello.wav,out/a.mp4,"Happy,Sad",3,20,10,2.5,4,false,first
face.png,bye.wav,frames/,,,,,,,yes,
""",
        ),
        defaults={"emotion": "Neutral", "steps": 8},
    )
    assert not jobs.failures
    first, second = jobs.jobs
    assert first.key == "first" and second.key == "jobs.csv:3"
    assert first.source == media / "face.png" and first.audio == media / "hello.wav"
    assert first.output == str(media / "out" / "a.mp4")
    assert first.settings == {
        "emotion": ["Happy", "Sad"],
        "seed": 3,
        "steps": 20,
        "delta_yaw": 10.0,
        "fade_in": 4,
        "crop": CropConfig(scale=2.5),
    }
    assert not first.streaming and second.streaming
    # Empty cells take the defaults; a frames folder keeps its trailing "/".
    assert second.settings == {"emotion": "Neutral", "steps": 8}
    assert second.output == str(media / "frames") + "/"
    assert first.avatar_key != second.avatar_key  # another crop: another avatar


def test_a_bad_value_fails_its_row_only(media: Path) -> None:
    jobs = read_jobs(
        write_csv(
            media / "jobs.csv",
            """
source,audio,output,seed,blink
face.png,hello.wav,a.mp4,zero,
face.png,hello.wav,b.mp4,1,maybe
face.png,hello.wav,c.mp4,2,true
""",
        )
    )
    assert [j.key for j in jobs.jobs] == ["jobs.csv:4"]
    reasons = {f.key: f.reason for f in jobs.failures}
    assert "seed must be a whole number" in reasons["jobs.csv:2"]
    assert "blink must be true or false" in reasons["jobs.csv:3"]
    assert jobs.failures[0].output == "a.mp4"


def test_unreadable_job_files_are_one_error(media: Path) -> None:
    with pytest.raises(JobFileError, match=r"unknown column.*emotio"):
        read_jobs(write_csv(media / "a.csv", "source,audio,output,emotio\nf,a,o.mp4,Happy"))
    with pytest.raises(JobFileError, match="no output column"):
        read_jobs(write_csv(media / "b.csv", "source,audio\nf,a"))
    with pytest.raises(JobFileError, match="job file not found"):
        read_jobs(media / "nope.csv")
    with pytest.raises(JobFileError, match="unknown job file type"):
        read_jobs(write_csv(media / "jobs.txt", "x"))
    with pytest.raises(JobFileError, match="no jobs"):
        read_jobs(write_csv(media / "c.csv", "source,audio,output"))


def test_jsonl_lines_fail_one_by_one(media: Path) -> None:
    lines = [
        json.dumps({"source": "face.png", "audio": "hello.wav", "output": "a.mp4", "seed": 1}),
        "{not json",
        json.dumps({"source": "face.png", "audio": "hello.wav", "output": "b.mp4", "colour": 1}),
        json.dumps(["a", "list"]),
        json.dumps({"source": "face.png", "audio": "hello.wav"}),
    ]
    (media / "jobs.jsonl").write_text("\n".join(lines) + "\n\n")
    jobs = read_jobs(media / "jobs.jsonl")
    assert [j.key for j in jobs.jobs] == ["jobs.jsonl:1"] and jobs.jobs[0].settings == {"seed": 1}
    reasons = {f.key: f.reason for f in jobs.failures}
    assert "not valid JSON" in reasons["jobs.jsonl:2"]
    assert "unknown key 'colour'" in reasons["jobs.jsonl:3"]
    assert "must be an object" in reasons["jobs.jsonl:4"]
    assert "no output given" in reasons["jobs.jsonl:5"]
    assert jobs.order == [f"jobs.jsonl:{i}" for i in range(1, 6)]


def test_other_methods_take_their_own_settings(media: Path) -> None:
    skip_without_packages_of("dithead")
    skip_without_packages_of("difftalk")
    (media / "model").mkdir()
    jobs = read_jobs(
        write_csv(
            media / "jobs.csv",
            """
source,audio,output,method,checkpoints,emotion,fps,resolution
face.png,hello.wav,a.mp4,dithead,model,,50,
face.png,hello.wav,b.mp4,difftalk,,,,
face.png,hello.wav,c.mp4,difftalk,model,Happy,,
face.png,hello.wav,d.mp4,difftalk,model,,,384
face.png,hello.wav,e.mp4,wav2lip,model,,,
face.png,hello.wav,f.mp4,ditto,,,,512
""",
        ),
        defaults={"emotion": "Sad", "seed": 5},  # a batch-wide Ditto default skips them
    )
    (dithead,) = jobs.jobs
    assert dithead.method == "dithead" and dithead.checkpoints == media / "model"
    assert dithead.options == {"fps": 50} and dithead.settings == {"seed": 5}
    reasons = {f.key: f.reason for f in jobs.failures}
    assert "needs checkpoints" in reasons["jobs.csv:3"]
    assert "emotion: Ditto setting" in reasons["jobs.csv:4"]
    assert "supports 256 or 512" in reasons["jobs.csv:5"]
    assert "unknown method 'wav2lip'" in reasons["jobs.csv:6"]
    assert "not used by ditto jobs" in reasons["jobs.csv:7"]


def test_other_method_jobs_run_as_generate_runs_them(media: Path) -> None:
    """DiT-Head at generate's 50 fps unless the row says 25 (the batch once made 25 fps);
    max_size reaches both methods under their own option names, and is checked."""
    skip_without_packages_of("dithead")
    skip_without_packages_of("difftalk")
    (media / "model").mkdir()
    csv = """
source,audio,output,method,checkpoints,max_size
face.png,hello.wav,a.mp4,dithead,model,
face.png,hello.wav,b.mp4,dithead,model,512
face.png,hello.wav,c.mp4,difftalk,model,640
face.png,hello.wav,d.mp4,difftalk,model,10
"""
    jobs = read_jobs(write_csv(media / "jobs.csv", csv))
    assert [j.options for j in jobs.jobs] == [
        {"fps": 50},
        {"fps": 50, "max_side": 512},
        {"resolution": 256, "max_size": 640},
    ]
    (failure,) = jobs.failures
    assert "max_size must be at least 64 pixels, got 10" in failure.reason


def test_a_job_of_a_method_without_its_packages_fails_by_name(media, monkeypatch) -> None:
    from dataclasses import replace

    from talkinghead.methods import METHODS

    absent = "talkinghead_test_absent_package"
    monkeypatch.setitem(METHODS, "difftalk", replace(METHODS["difftalk"], requires=(absent,)))
    (media / "model").mkdir()
    csv = "source,audio,output,method,checkpoints\nface.png,hello.wav,a.mp4,difftalk,model\n"
    jobs = read_jobs(write_csv(media / "jobs.csv", csv))
    assert jobs.jobs == []
    (failure,) = jobs.failures
    assert f"--method difftalk needs {absent}, not installed here" in failure.reason
    assert '".[latent]"' in failure.reason


def test_plan_records_what_cannot_run_and_skips_what_is_done(media: Path) -> None:
    (media / "done.mp4").write_bytes(b"a finished video")
    jobs = read_jobs(
        write_csv(
            media / "jobs.csv",
            """
source,audio,output,emotion,id
face.png,hello.wav,new/a.mp4,,a
face.png,hello.wav,done.mp4,,b
missing.png,hello.wav,c.mp4,,c
face.png,junk.wav,d.mp4,,d
face.png,hello.wav,e.mp4,Furious,e
face.png,bye.wav,new/a.mp4,,f
face.png,bye.wav,g.mp4,,a
face.png,bye.wav,face.png,,h
face.png,bye.wav,x.avi,,i
face.png,bye.wav,jobs.csv,,j
face.png,bye.wav,jobs.report.json,,k
""",
        )
    )
    plan = plan_jobs(jobs, report_path=media / "jobs.report.json")
    assert [j.key for j in plan.todo] == ["a"] and [j.key for j in plan.skipped] == ["b"]
    assert (media / "new").is_dir() and not (media / "new" / "a.mp4").exists()
    reasons = {job.key: reason for job, reason in plan.failed}
    assert reasons["c"].endswith("missing.png: source file not found")
    assert "junk.wav" in reasons["d"]
    assert "unknown emotion 'Furious'" in reasons["e"]
    assert "job a writes the same output" in reasons["f"]
    assert "ids must be unique" in reasons["a#2"]
    assert "the output is the source input" in reasons["h"]
    assert "x.avi" in reasons["i"]
    assert "the output is the job file input" in reasons["j"]
    assert "the output is the batch report input" in reasons["k"]
    assert plan.total == 11
    redo = plan_jobs(jobs, overwrite=True)
    assert [j.key for j in redo.todo] == ["a", "b"]


def test_a_report_that_would_replace_an_input_is_refused(media: Path) -> None:
    """`--report jobs.csv` overwrote the job file, `--report hello.wav` a job's audio."""
    jobs = read_jobs(write_csv(media / "jobs.csv", "source,audio,output\nface.png,hello.wav,a.mp4"))
    for name, what in [("jobs.csv", "the job file"), ("hello.wav", "job jobs.csv:2's audio")]:
        with pytest.raises(MediaError, match=f"report would overwrite {what}"):
            check_report_target(media / name, jobs)
    check_report_target(media / "jobs.report.json", jobs)


def test_batch_wide_settings_are_checked_with_each_job(media: Path) -> None:
    jobs = read_jobs(write_csv(media / "jobs.csv", "source,audio,output\nface.png,hello.wav,a.mp4"))
    plan = plan_jobs(jobs, worker_settings={"face_backend": "auto", "batch_size": 0})
    assert "batch_size must be at least 1" in plan.failed[0][1]


def test_a_folder_pairs_sources_and_audio_by_name(media: Path) -> None:
    Image.new("RGB", (64, 64)).save(media / "hello.jpg")
    folder = folder_jobs(media)  # face.png, hello.jpg; hello.wav, bye.wav, junk.wav
    assert [j.key for j in folder.jobs] == ["hello"]
    (hello,) = folder.jobs
    assert hello.source == media / "hello.jpg" and hello.audio == media / "hello.wav"
    assert hello.output == str(media / "talking" / "hello.mp4")
    reasons = {f.key: f.reason for f in folder.failures}
    assert reasons["bye"] == "no source named bye.* for bye.wav"
    assert reasons["face"] == "no audio named face.* for face.png"
    assert folder.report_path == media / "talking" / "batch-report.json"

    every = folder_jobs(media, pair="all", output_dir=media / "videos", defaults={"seed": 1})
    assert len(every.jobs) == 6 and not every.failures
    assert {j.output for j in every.jobs} >= {str(media / "videos" / "face_bye.mp4")}
    assert all(j.settings == {"seed": 1} for j in every.jobs)
    assert load_jobs(media, pair="all").jobs[0].output.startswith(str(media / "talking"))
    with pytest.raises(JobFileError, match="unknown pairing"):
        folder_jobs(media, pair="zip")


def test_the_output_folder_is_not_searched(media: Path) -> None:
    Image.new("RGB", (64, 64)).save(media / "hello.jpg")
    (media / "talking").mkdir()
    (media / "talking" / "hello.mp4").write_bytes(b"x")
    assert [j.key for j in folder_jobs(media).jobs] == ["hello"]


def test_stale_temporaries_are_the_writers_hidden_siblings(tmp_path: Path) -> None:
    out = tmp_path / "talk.mp4"
    left = [tmp_path / ".talk.mp4.k2j3h4.mp4", tmp_path / ".frames.a8d7.tmp"]
    left[0].write_bytes(b"half a video")
    left[1].mkdir()
    (left[1] / "000000.png").write_bytes(b"x")
    kept = [out, tmp_path / ".other.mp4.k2j3h4.mp4", tmp_path / "talk.mp4.txt"]
    for path in kept:
        path.write_bytes(b"x")
    assert stale_temporaries(str(out)) == [left[0]]
    assert remove_stale_temporaries([str(out), str(tmp_path / "frames") + "/"]) == 2
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)


def test_a_method_without_generation_is_refused(media: Path, monkeypatch) -> None:
    from talkinghead import methods

    viewer = methods.Method("viewer", "a method with no audio-driven generation", generate=None)
    monkeypatch.setitem(methods.METHODS, "viewer", viewer)
    (media / "model").mkdir()
    jobs = read_jobs(
        write_csv(
            media / "jobs.csv",
            "source,audio,output,method,checkpoints\nface.png,hello.wav,a.mp4,viewer,model",
        )
    )
    assert "viewer does not make videos from speech" in jobs.failures[0].reason
    assert "ditto" in jobs.failures[0].reason
