"""`talkinghead batch` as a user runs it: one-line errors before any model loads, the
summary table, the JSON report, exit status 1 when a job failed, and resuming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _batch_helpers import check_video, speech_clip
from _cli_in_process import run_cli
from _conformance import PORTRAIT, skip_missing
from _tiny_release import build_tiny_release


def run(args: list[str], tmp_path: Path, columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "TALKINGHEAD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env["COLUMNS"] = str(columns)  # 200: the table's reasons on one line each
    return subprocess.run(
        [sys.executable, "-m", "talkinghead", "batch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def run_here(args: list[str], tmp_path: Path, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """`run` in this process: for the refusals, which stop before any worker or model."""
    env = {"TALKINGHEAD_CACHE": str(tmp_path / "cache")}
    return run_cli(["batch", *args], monkeypatch, capsys, env)


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("content", "options", "needle"),
    [
        ("source,audio,output,emotio\na.png,a.wav,o.mp4,Happy\n", [], "unknown column(s) emotio"),
        ("source,audio\na.png,a.wav\n", [], "no output column"),
        ("source,audio,output\n", [], "no jobs in the file"),
        ("source,audio,output\na.png,a.wav,o.mp4\n", ["--workers", "0"], "--workers must be"),
        ("source,audio,output\na.png,a.wav,o.mp4\n", ["--face-backend", "x"], "face backend"),
        ("source,audio,output\na.png,a.wav,o.mp4\n", ["--method", "wav2lip"], "unknown method"),
        ("source,audio,output\na.png,a.wav,o.mp4\n", ["--devices", "tpu:0"], "unknown device"),
    ],
)
def test_bad_options_and_job_files_are_one_line(
    content, options, needle, tmp_path, monkeypatch, capsys
) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(content)
    args = [str(jobs), "--checkpoints", str(tmp_path / "no-release"), *options]
    proc = run_here(args, tmp_path, monkeypatch, capsys)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "jobs.report.json").exists()  # nothing ran


def test_a_missing_job_file(tmp_path, monkeypatch, capsys) -> None:
    proc = run_here([str(tmp_path / "nope.csv")], tmp_path, monkeypatch, capsys)
    assert_one_line_error(proc, "job file not found")


def test_a_bad_job_file_is_refused_before_torch_is_imported(tmp_path) -> None:
    """The job file is checked first: its error must not wait for torch (seconds) to import."""
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("source,audio,output,emotio\na.png,a.wav,o.mp4,Happy\n")
    code = (
        "import sys\n"
        "from talkinghead.cli import main\n"
        f"sys.argv = ['talkinghead', 'batch', {str(jobs)!r}, '--checkpoints', 'no-release']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    status = e.code\n"
        "print('torch' in sys.modules, status)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.stdout.split() == ["False", "1"], proc.stdout + proc.stderr
    assert "unknown column(s) emotio" in proc.stderr


def test_missing_checkpoints_stop_the_batch_before_any_worker(
    tmp_path, monkeypatch, capsys
) -> None:
    if not PORTRAIT.is_file():
        skip_missing(str(PORTRAIT))
    speech_clip(tmp_path / "a.wav", 0.3)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"source,audio,output\n{PORTRAIT},a.wav,o.mp4\n")
    args = [str(jobs), "--checkpoints", str(tmp_path / "none"), "--quiet"]
    assert_one_line_error(
        run_here(args, tmp_path, monkeypatch, capsys), "checkpoint directory not found"
    )


def test_a_batch_runs_reports_and_resumes(tmp_path) -> None:
    if not PORTRAIT.is_file():
        skip_missing(str(PORTRAIT))
    release = build_tiny_release(tmp_path / "release")
    speech_clip(tmp_path / "a.wav", 0.3)
    jobs = tmp_path / "jobs.jsonl"
    rows = [
        {"id": "hello", "source": str(PORTRAIT), "audio": "a.wav", "output": "videos/hello.mp4"},
        {"id": "silent", "source": str(PORTRAIT), "audio": "none.wav", "output": "videos/x.mp4"},
    ]
    jobs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [str(jobs), "--checkpoints", str(release), "--steps", "2", "--max-size", "256"]
    args += ["--workers", "1", "--quiet"]
    proc = run(args, tmp_path)
    assert_one_line_error(proc, "1 of 2 jobs failed")
    assert "none.wav: audio file not found" in proc.stdout  # the summary table
    assert "1 done, 0 already done, 1 failed" in proc.stdout
    check_video(tmp_path / "videos" / "hello.mp4", 8)
    report = json.loads((tmp_path / "jobs.report.json").read_text())
    assert report["counts"] == {"done": 1, "skipped": 0, "failed": 1, "pending": 0}
    hello = report["jobs"][0]
    assert hello["key"] == "hello" and hello["frames"] == 8 and hello["size"] == [256, 256]
    assert report["workers"][0]["load_seconds"] > 0

    (tmp_path / "none.wav").write_bytes((tmp_path / "a.wav").read_bytes())  # fixed
    proc = run(args, tmp_path, columns=80)
    assert proc.returncode == 0, proc.stderr
    assert "1 done, 1 already done, 0 failed" in proc.stdout
    # The summary names the report whole, however narrow the terminal (rich folded it).
    assert f"; report: {tmp_path / 'jobs.report.json'}\n" in proc.stdout
    check_video(tmp_path / "videos" / "x.mp4", 8)
