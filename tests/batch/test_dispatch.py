"""Retries of jobs whose worker died, as both runners use them (no workers needed)."""

from __future__ import annotations

from pathlib import Path

from talkinghead.batch.dispatch import Dispatch, ThrottledProgress
from talkinghead.batch.jobs import BatchJob
from talkinghead.batch.worker import JobOutcome


def test_a_job_whose_worker_died_is_retried_then_failed(tmp_path: Path) -> None:
    jobs = [
        BatchJob(k, tmp_path / "face.png", tmp_path / f"{k}.wav", str(tmp_path / f"{k}.mp4"))
        for k in ("a", "b")
    ]
    outcomes: list[tuple[str, bool, str | None, int]] = []
    events = []
    dispatch = Dispatch(
        jobs,
        retries=1,
        on_outcome=lambda job, out, tries, worker: outcomes.append(
            (job.key, out.ok, out.reason, tries)
        ),
        on_event=events.append,
    )
    first = dispatch.next_job(0, "w0")
    assert first.key == "a"
    partial = tmp_path / ".a.mp4.x1y2z3.mp4"  # what the dead worker's writer left
    partial.write_bytes(b"half")
    dispatch.worker_died(0, "killed by SIGKILL")
    assert not partial.exists()
    assert dispatch.next_job(1, "w1").key == "a"  # the retry goes first
    dispatch.worker_died(1, "killed by SIGKILL")  # and dies again: no tries left
    assert outcomes == [
        ("a", False, "its worker died 2 time(s) running it (last: killed by SIGKILL)", 2)
    ]
    job = dispatch.next_job(2, "w2")
    dispatch.finished(2, JobOutcome(job.key, True, frames=3))
    assert outcomes[-1] == ("b", True, None, 1) and not dispatch.pending
    assert [e.kind for e in events] == [
        "started",
        "died",
        "started",
        "died",
        "finished",
        "started",
        "finished",
    ]


def test_no_worker_left_fails_what_waits() -> None:
    jobs = [BatchJob(k, Path("/s.png"), Path("/a.wav"), f"/{k}.mp4") for k in ("a", "b")]
    failed = []
    dispatch = Dispatch(
        jobs, retries=0, on_outcome=lambda job, out, t, w: failed.append(out.reason)
    )
    dispatch.fail_remaining("no worker left to run it (bad checkpoint)")
    assert failed == ["no worker left to run it (bad checkpoint)"] * 2 and not dispatch.pending


def test_progress_is_thinned_within_a_stage() -> None:
    sent = []
    now = [0.0]
    progress = ThrottledProgress(lambda *a: sent.append(a), clock=lambda: now[0])
    for done in range(100):  # a frame every 10 ms of the fake clock
        now[0] = done * 0.01
        progress("render", done, 100)
    progress("render", 100, 100)
    progress("stream", 0, 10)
    # The first report, one per 0.25 s, the last, and a new stage's first.
    assert sent == [("render", d, 100) for d in (0, 25, 50, 75, 100)] + [("stream", 0, 10)]
