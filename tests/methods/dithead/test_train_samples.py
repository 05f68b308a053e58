"""DiT-Head training's validation samples, held-out clips and its refusal to replace a stage.

A tiny two-clip dataset (the example portrait prepared once, plus the same clip played
backwards under another name), tiny VQGANs and DiT trained for a few steps on CPU.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _dithead_helpers import make_clip, require_media, tiny_wav2vec2
from talkinghead.errors import SettingsError, TalkingHeadError
from talkinghead.methods.dithead import train as dithead_train
from talkinghead.methods.dithead.checkpoint import read_checkpoint
from talkinghead.methods.dithead.data import load_prepared, prepare_dataset
from talkinghead.methods.dithead.train import DiTTrainConfig, VQTrainConfig, train_dit, train_vq
from talkinghead.models.dithead_losses import VQGANLossConfig

SIZE = 32
SAMPLE_FRAMES = 5  # 0.2 s at 25 fps
VQ = VQTrainConfig(
    preset="tiny", steps=4, batch_size=2, lr=1e-3, device="cpu",
    loss=VQGANLossConfig(disc_start=10**9), log_every=0, save_every=0,
    sample_every=2, sample_seconds=0.2,
)  # fmt: skip
DIT = DiTTrainConfig(
    preset="tiny", steps=4, batch_size=2, lr=1e-3, ema_decay=0.9, device="cpu",
    log_every=0, save_every=0, sample_every=2, sample_seconds=0.2, sample_steps=2,
)  # fmt: skip


def _add_reversed_clip(data: Path, name: str, new: str) -> None:
    """Another clip for the dataset: `name`'s frames and features in reverse order, the
    frames' colour channels swapped (a clip that looks unlike the first)."""
    src, dst = data / "clips" / name, data / "clips" / new
    dst.mkdir()
    manifest = json.loads((data / "dataset.json").read_text())
    (entry,) = [c for c in manifest["clips"] if c["name"] == name]
    n = int(entry["frames"])
    frames = np.fromfile(src / "frames.u8", np.uint8).reshape(n, SIZE, SIZE, 3)
    np.ascontiguousarray(frames[::-1, ..., ::-1]).tofile(dst / "frames.u8")
    for array in ("landmarks", "audio", "M_c2o", "valid"):
        np.save(dst / f"{array}.npy", np.load(src / f"{array}.npy")[::-1])
    shutil.copy(src / "clip.json", dst / "clip.json")
    manifest["clips"].append({**entry, "name": new})
    (data / "dataset.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    require_media()
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("dithead_samples")
    videos = work / "videos"
    videos.mkdir()
    make_clip(videos / "clip.mp4")
    data = work / "data"
    report = prepare_dataset(
        videos, data, audio_model=str(tiny_wav2vec2(work / "w2v")), size=SIZE,
        min_ref_distance=6, face_backend="mediapipe",
    )  # fmt: skip
    assert report.ok == ["clip"], str(report)
    _add_reversed_clip(data, "clip", "clip_reversed")
    return data


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """(checkpoint dir, {stage: TrainResult}, {stage: clip names its batches came from})."""
    out = tmp_path_factory.mktemp("dithead_samples_ckpt")
    seen: dict[str, set[str]] = {}
    stage = ["?"]

    class Spy(dithead_train.SampleDrawer):
        def __init__(self, data, *args, **kwargs):
            seen.setdefault(stage[0], set()).update(c.name for c in data.clips)
            super().__init__(data, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(dithead_train, "SampleDrawer", Spy)
    try:
        results = {}
        for which in ("full", "masked"):
            stage[0] = f"vq-{which}"
            results[stage[0]] = train_vq(dataset, out, VQ, which=which)
        stage[0] = "dit"
        results["dit"] = train_dit(dataset, out, DIT)
    finally:
        mp.undo()
    return out, results, seen


@pytest.mark.parametrize("stage", ["vq-full", "vq-masked", "dit"])
def test_samples_every_n_steps_are_videos_of_the_held_out_clip(dataset, trained, stage):
    out, results, seen = trained
    result = results[stage]
    (held,) = result.holdout  # sampling on, two clips: one held out by default
    assert held not in seen[stage] and len(seen[stage]) == 1  # never trained on
    folder = out / "samples" / stage
    names = ["step_00000002.mp4", "step_00000004.mp4"]
    assert sorted(p.name for p in folder.iterdir()) == names  # nothing half-written either
    assert result.samples == [folder / n for n in names]
    frames = _frames(folder / names[-1]).astype(int)
    assert frames.shape == (SAMPLE_FRAMES, SIZE, 2 * SIZE, 3)  # truth | model
    (clip,) = [c for c in load_prepared(dataset).clips if c.name == held]
    truth = np.asarray(clip.frames[:SAMPLE_FRAMES], int)
    top = SIZE // 4  # above the lower-face mask
    other = next(c for c in load_prepared(dataset).clips if c.name != held)
    wrong = np.asarray(other.frames[:SAMPLE_FRAMES], int)
    # H.264 (yuv420p) of 32 px crops is good to a few grey levels: the held-out frames.
    error = np.abs(frames[:, :top, :SIZE] - truth[:, :top]).mean()
    assert error < 12 and error < 0.5 * np.abs(frames[:, :top, :SIZE] - wrong[:, :top]).mean()
    if stage == "dit":  # only the lower face is generated: the rest is the clip's
        assert np.abs(frames[:, :top, SIZE:] - truth[:, :top]).mean() < 12
    file = "dit.pt" if stage == "dit" else f"vq_{stage[3:]}.pt"
    payload = read_checkpoint(out / file, "dit" if stage == "dit" else "vq")
    assert payload["holdout_clips"] == [held]  # recorded with the sampling settings
    assert payload["train"]["sample_every"] == 2 and payload["train"]["holdout"] == 1


def test_sampling_leaves_training_unchanged_and_a_failing_sample_is_not_fatal(
    dataset, trained, tmp_path, monkeypatch, caplog
):
    vq_dir = trained[0]
    config = replace(DIT, holdout=1)
    quiet = train_dit(dataset, tmp_path / "off", replace(config, sample_every=0), vq_dir=vq_dir)
    assert quiet.samples == [] and not (tmp_path / "off" / "samples" / "dit").exists()
    assert quiet.history == trained[1]["dit"].history  # renders draw on no training RNG

    def broken(*args, **kwargs):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(dithead_train, "write_sample_video", broken)
    with caplog.at_level(logging.WARNING, logger="talkinghead.training.samples"):
        result = train_dit(dataset, tmp_path / "broken", config, vq_dir=vq_dir)
    assert result.samples == [] and len(result.history) == config.steps
    assert read_checkpoint(tmp_path / "broken" / "dit.pt", "dit")["step"] == config.steps
    assert "step 2: validation sample failed (encoder exploded)" in caplog.text
    assert list((tmp_path / "broken" / "samples" / "dit").iterdir()) == []


def test_a_finished_stage_is_not_replaced_without_resume_or_overwrite(dataset, trained, tmp_path):
    from talkinghead.cli import app

    out = tmp_path / "ckpt"
    shutil.copytree(trained[0], out)
    with pytest.raises(TalkingHeadError, match=r"dit.pt exists: pass --resume .* --overwrite"):
        train_dit(dataset, out, DIT)
    args = ["train-dithead", str(dataset), str(out), "--preset", "tiny", "--device", "cpu",
            "--steps", "2", "--batch-size", "2", "--log-every", "0"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--stage", "vq"])  # --which both
    assert result.exit_code == 1 and isinstance(result.exception, TalkingHeadError)
    message = str(result.exception)
    assert "\n" not in message and str(out / "vq_full.pt") in message
    assert "--resume" in message and "--overwrite" in message
    both = CliRunner().invoke(app, [*args, "--stage", "dit", "--resume", "--overwrite"])
    assert isinstance(both.exception, SettingsError)
    # --overwrite starts again from step 0, and the replaced run's samples go with it.
    again = train_dit(dataset, out, replace(DIT, steps=2, overwrite=True))
    assert len(again.history) == 2 and read_checkpoint(out / "dit.pt", "dit")["step"] == 2
    assert sorted(p.name for p in (out / "samples" / "dit").iterdir()) == ["step_00000002.mp4"]
    # A resume keeps the clips its checkpoint held out; another split is refused.
    with pytest.raises(SettingsError, match="trained holding out clip"):
        train_dit(dataset, out, replace(DIT, steps=3, resume=True, holdout=0))
    more = train_dit(dataset, out, replace(DIT, steps=3, resume=True, sample_every=0))
    assert more.holdout == again.holdout and len(more.history) == 1


def test_two_processes_sample_on_the_main_one_only(dataset, trained, tmp_path):
    """`accelerate launch` with 2 CPU processes: rank 0 renders, rank 1 waits for it."""
    from _accelerate_launch import launch

    args = ["train-dithead", str(dataset), str(tmp_path), "--stage", "dit", "--vq-dir",
            str(trained[0]), "--preset", "tiny", "--steps", "2", "--batch-size", "1",
            "--sample-every", "1", "--sample-seconds", "0.12", "--sample-steps", "1"]  # fmt: skip
    run = launch(args, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = tmp_path / "samples" / "dit"
    assert sorted(p.name for p in folder.iterdir()) == ["step_00000001.mp4", "step_00000002.mp4"]
    assert _frames(folder / "step_00000002.mp4").shape == (3, SIZE, 2 * SIZE, 3)
    assert "2 samples in" in run.stdout


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
