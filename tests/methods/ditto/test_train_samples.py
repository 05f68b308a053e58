"""Ditto motion training's validation samples: held-out videos, sample files, no effect on
training, a failed sample that training survives, resume and the command line.

The tiny prepared data of test_train (two videos of 40 and 33 frames), the tiny preset, a
few CPU steps and a few DDIM steps per sample.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tests.methods.ditto.test_train import invoke, write_dataset

from talkinghead.errors import SettingsError
from talkinghead.methods.ditto import train as ditto_train
from talkinghead.methods.ditto.train import PRESETS, MotionTrainConfig, train_motion
from talkinghead.training.loss_log import read_log

PARTS = ["scale", "pitch", "yaw", "roll", "t", "exp"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("motion_sample_data"))


def sampling(**kw) -> MotionTrainConfig:
    kw = {"tensorboard": False, "max_steps": 4, "sample_every": 2, "sample_steps": 3, **kw}
    return replace(PRESETS["tiny"], **kw)


def test_samples_hold_the_sampled_and_true_motion_of_a_held_out_video(data, tmp_path):
    lines: list[str] = []
    run = train_motion(data, tmp_path / "run", sampling(sample_seconds=1.0), echo=lines.append)
    assert run.holdout and len(run.holdout) == 1  # the default with sampling and 2 videos
    held = run.holdout[0]
    frames = 25  # 1 s at 25 fps, inside both videos
    assert [p.name for p in run.samples] == ["step_00000002.npz", "step_00000004.npz"]
    true = np.load(data / "mtn_npy" / f"{held}.npy")[:frames, :265]
    for path in run.samples:
        with np.load(path) as z:
            assert z["motion"].shape == z["true_motion"].shape == (frames, 265)
            assert np.isfinite(z["motion"]).all()
            np.testing.assert_array_equal(z["true_motion"], true)
            assert str(z["video"]) == held
            assert list(z["parts"]) == PARTS
            # The per-part L1 is that of the stored arrays (exp: dims 202..265).
            err = np.abs(z["motion"] - z["true_motion"])
            np.testing.assert_allclose(z["l1"][-1], err[:, 202:].mean(), rtol=1e-5)
    assert not list((tmp_path / "run" / "samples").glob(".*"))  # no temporary left behind
    logged = [r for r in read_log(tmp_path / "run") if "sample/l1" in r]
    assert [r["step"] for r in logged] == [2, 4]
    assert set(logged[0]) == {"step", "sample/l1", *(f"sample/l1_{p}" for p in PARTS)}
    assert any(line.startswith("step 2/4") and "sample/l1" in line for line in lines)
    recorded = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert recorded["holdout_videos"] == [held]
    assert recorded["sample_every"] == 2 and recorded["holdout"] == 1


def test_held_out_videos_are_not_trained_on(data, tmp_path, monkeypatch):
    trained_on: list[list[str]] = []

    class Recording(ditto_train.MotionWindowDataset):
        def __init__(self, videos, cfg) -> None:
            trained_on.append([v.name for v in videos])
            super().__init__(videos, cfg)

    monkeypatch.setattr(ditto_train, "MotionWindowDataset", Recording)
    run = train_motion(data, tmp_path / "run", sampling(max_steps=2))
    assert len(trained_on) == 1 and trained_on[0] and run.holdout
    assert not set(run.holdout) & set(trained_on[0])
    assert sorted(trained_on[0] + run.holdout) == ["video0", "video1"]


def test_sampling_does_not_change_training(data, tmp_path):
    with_samples = train_motion(data, tmp_path / "a", sampling(holdout=1))
    without = train_motion(data, tmp_path / "b", sampling(holdout=1, sample_every=0))
    assert with_samples.samples and not without.samples
    assert with_samples.holdout == without.holdout
    assert with_samples.losses == without.losses


def test_a_failing_sample_is_logged_and_training_goes_on(data, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no sampler today")

    monkeypatch.setattr(ditto_train, "sample_motion", broken)
    with caplog.at_level(logging.WARNING, logger="talkinghead.training.samples"):
        run = train_motion(data, tmp_path / "run", sampling())
    assert run.step == 4 and len(run.losses) == 4 and run.checkpoint is not None
    assert run.samples == []
    assert not list((tmp_path / "run" / "samples").glob("*"))
    assert "validation sample failed (no sampler today)" in caplog.text
    assert not [r for r in read_log(tmp_path / "run") if "sample/l1" in r]


def test_a_resume_keeps_its_held_out_videos(data, tmp_path):
    first = train_motion(data, tmp_path / "run", sampling(max_steps=2, seed=3))
    # No --holdout: the resume reads the held-out videos back from train_config.json.
    again = train_motion(data, tmp_path / "run", sampling(max_steps=4, seed=3))
    assert again.start_step == 2 and again.holdout == first.holdout
    samples = sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.npz"))
    assert samples == ["step_00000002.npz", "step_00000004.npz"]  # a resume keeps the earlier
    with pytest.raises(SettingsError, match="trained holding out"):
        train_motion(data, tmp_path / "run", sampling(max_steps=6, seed=3, holdout=0))


def test_tiny_preset_samples_nothing_by_default_and_release_every_5000(data, tmp_path):
    run = train_motion(data, tmp_path / "run", replace(PRESETS["tiny"], tensorboard=False,
                                                       max_steps=1))  # fmt: skip
    assert run.holdout == [] and run.samples == []
    recorded = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert recorded["sample_every"] == 0 and recorded["holdout_videos"] == []
    assert ditto_train.resolve_sample_every(None, PRESETS["release"].preset) == 5000


def test_cli_sample_options_and_errors(data, tmp_path):
    out = tmp_path / "run"
    args = ["train-motion", str(data), str(out), "--preset", "tiny", "--no-tensorboard"]
    result = invoke([*args, "--max-steps", "2", "--sample-every", "2", "--sample-steps", "2",
                     "--sample-seconds", "0.4"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "held out of training: video" in result.output
    with np.load(out / "samples" / "step_00000002.npz") as z:
        assert z["motion"].shape == (10, 265)  # 0.4 s
    fresh = invoke(["train-motion", str(data), str(tmp_path / "other"), "--preset", "tiny",
                    "--sample-every", "2", "--holdout", "2"])  # fmt: skip
    assert fresh.exit_code == 1 and isinstance(fresh.exception, SettingsError)
    assert "--holdout 2 leaves no clip to train on" in str(fresh.exception)


def test_two_process_run_samples_on_the_main_process_only(data, tmp_path):
    """`accelerate launch` with 2 CPU processes: the main one samples, the other waits."""
    from _accelerate_launch import launch

    out = tmp_path / "run"
    run = launch(["train-motion", str(data), str(out), "--preset", "tiny", "--no-tensorboard",
                  "--batch-size", "4", "--max-steps", "4", "--sample-every", "2",
                  "--sample-steps", "2", "--sample-seconds", "0.4"],
                 mixed_precision="no", timeout=240)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step_00000002.npz",
        "step_00000004.npz",
    ]
    assert [r["step"] for r in read_log(out) if "sample/l1" in r] == [2, 4]  # one line each
