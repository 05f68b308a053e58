"""LossLog: the means over each N steps, to JSONL, the console and TensorBoard."""

from __future__ import annotations

import pytest

from talkinghead.training.loss_log import LossLog, format_line, read_log


def test_lines_every_n_steps(tmp_path):
    printed: list[str] = []
    log = LossLog(tmp_path, every=2, tensorboard=True, echo=printed.append, total_steps=4)
    wrote = [
        log.add(step, {"loss/total": float(step), "loss/exp_P": 0.5, "lr": 1e-4}, samples=8)
        for step in range(1, 5)
    ]
    log.close()
    assert wrote == [False, True, False, True]
    rows = read_log(tmp_path)
    assert [r["step"] for r in rows] == [2, 4]
    assert rows[0]["loss/total"] == pytest.approx(1.5) and rows[1]["loss/total"] == pytest.approx(
        3.5
    )
    assert rows[0]["loss/exp_P"] == 0.5 and rows[0]["samples_per_s"] > 0
    assert printed[0].startswith("step 2/4  loss 1.5") and "samples/s" in printed[0]
    assert "exp_P" not in printed[0]  # the console shows the totals; the file has every term
    pytest.importorskip("tensorboard")
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


def test_other_ranks_write_nothing_and_torn_lines_are_skipped(tmp_path):
    quiet = LossLog(tmp_path / "rank1", every=1, enabled=False, echo=None)
    quiet.add(1, {"loss/total": 1.0})
    assert not (tmp_path / "rank1").exists() and quiet.last["loss/total"] == 1.0
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "loss/total": 1}\n{"step": 2, "lo')
    assert read_log(tmp_path) == [{"step": 1, "loss/total": 1}]
    assert format_line(3, {"lr": 2e-4, "loss/total": 0.25}) == "step 3  loss 0.25  lr 2.0e-04"
