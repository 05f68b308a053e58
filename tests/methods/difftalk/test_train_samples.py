"""DiffTalk training's validation samples and held-out clips, with tiny presets on CPU.

Two clips: the example portrait under a small motion, prepared once at 64 px, and the
same clip played backwards with its colour channels swapped, under another name.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _conformance import MEDIA_DIR, skip_missing
from _dithead_helpers import save_tiny_wav2vec2
from _extras import needs_packages_of
from talkinghead.errors import SettingsError
from talkinghead.methods.difftalk import train as difftalk_train
from talkinghead.methods.difftalk.checkpoint import read_component
from talkinghead.methods.difftalk.data import MANIFEST_NAME, DiffTalkDataset, prepare_dataset
from talkinghead.methods.difftalk.train import (
    AutoencoderTrainConfig,
    LdmTrainConfig,
    train_autoencoder,
    train_ldm,
)

pytestmark = needs_packages_of("difftalk")

FACE, SPEECH = MEDIA_DIR / "ditto_example_face.jpg", MEDIA_DIR / "ditto_example_speech.wav"
RES = 64
CLIP_FRAMES = 12
SAMPLE_FRAMES = 5  # 0.2 s at 25 fps
AE = AutoencoderTrainConfig(
    preset="tiny-f4", steps=4, batch_size=2, lr=1e-3, cache_frames=True, save_every=100,
    sample_every=2, sample_seconds=0.2,
)  # fmt: skip
LDM = LdmTrainConfig(
    preset="tiny", steps=4, batch_size=2, lr=1e-3, ema_decay=0.9, save_every=100,
    sample_every=2, sample_seconds=0.2, sample_steps=2,
)  # fmt: skip


def _add_reversed_clip(data: Path, name: str, new: str) -> None:
    """Another clip: `name` backwards, its colour channels swapped."""
    src, dst = data / "clips" / name, data / "clips" / new
    (dst / "frames").mkdir(parents=True)
    n = len(list((src / "frames").iterdir()))
    for i in range(n):
        bgr = cv2.imread(str(src / "frames" / f"{n - 1 - i:06d}.jpg"))
        cv2.imwrite(str(dst / "frames" / f"{i:06d}.jpg"), np.ascontiguousarray(bgr[..., ::-1]))
    for array in ("landmarks", "audio", "crop"):
        np.save(dst / f"{array}.npy", np.load(src / f"{array}.npy")[::-1])
    shutil.copy(src / "meta.json", dst / "meta.json")
    manifest = json.loads((data / MANIFEST_NAME).read_text())
    (entry,) = [c for c in manifest["clips"] if c["name"] == name]
    manifest["clips"].append({**entry, "name": new})
    (data / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    if not FACE.is_file() or not SPEECH.is_file():
        skip_missing(f"{MEDIA_DIR}")
    from talkinghead.audio.io import load_audio
    from talkinghead.media.source import load_source
    from talkinghead.media.writer import VideoWriter

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("difftalk_samples")
    face = cv2.resize(load_source(FACE).frames[0], (256, 256), interpolation=cv2.INTER_AREA)
    audio = load_audio(SPEECH, 16000)[16000 : 16000 + CLIP_FRAMES * 640]
    (work / "videos").mkdir()
    with VideoWriter(work / "videos" / "clip.mp4", fps=25, audio=(audio, 16000)) as writer:
        for i in range(CLIP_FRAMES):
            m = cv2.getRotationMatrix2D((128, 128), 2 * np.sin(i / 3), 1 + 0.01 * i)
            writer.write(cv2.warpAffine(face, m, (256, 256), borderMode=cv2.BORDER_REFLECT))
    data = work / "data"
    w2v = save_tiny_wav2vec2(work / "wav2vec2")
    report = prepare_dataset(work / "videos", data, resolution=RES, audio_model=str(w2v))
    assert report.prepared == ["clip"], str(report)
    _add_reversed_clip(data, "clip", "clip_reversed")
    return data


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """(checkpoint dir, {stage: TrainResult}, {stage: names of the clips training read})."""
    out = tmp_path_factory.mktemp("difftalk_samples_ckpt")
    read: dict[str, set[str]] = {}
    stage = ["?"]
    frame = DiffTalkDataset.frame

    def spy(self, clip, i):
        read.setdefault(stage[0], set()).add(self.clips[clip].name)
        return frame(self, clip, i)

    mp = pytest.MonkeyPatch()
    mp.setattr(DiffTalkDataset, "frame", spy)
    try:
        stage[0] = "autoencoder"
        results = {"autoencoder": train_autoencoder(dataset, out, AE)}
        stage[0] = "ldm"
        results["ldm"] = train_ldm(dataset, out, LDM)
    finally:
        mp.undo()
    return out, results, read


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("stage", ["autoencoder", "ldm"])
def test_samples_every_n_steps_are_videos_of_the_held_out_clip(dataset, trained, stage):
    out, results, read = trained
    result = results[stage]
    (held,) = result.holdout  # sampling on, two clips: one held out by default
    assert read[stage] and held not in read[stage]  # training never read its frames
    folder = out / "samples" / stage
    names = ["step_00000002.mp4", "step_00000004.mp4"]
    assert sorted(p.name for p in folder.iterdir()) == names
    assert result.samples == [folder / n for n in names]
    frames = _frames(folder / names[-1]).astype(int)
    assert frames.shape == (SAMPLE_FRAMES, RES, 2 * RES, 3)  # truth | model
    clips = {c.name: c for c in DiffTalkDataset(dataset).clips}
    truth, wrong = (
        np.stack([DiffTalkDataset.clip_frame(clips[name], i) for i in range(SAMPLE_FRAMES)])
        .astype(int)
        for name in (held, *(n for n in clips if n != held))
    )  # fmt: skip
    error = np.abs(frames[:, :, :RES] - truth).mean()
    assert error < 8 and error < 0.5 * np.abs(frames[:, :, :RES] - wrong).mean()
    if stage == "ldm":  # the generated lower face only: the top of the crop is the clip's
        top = RES // 3
        assert np.abs(frames[:, :top, RES:] - truth[:, :top]).mean() < 8
    payload = read_component(out / f"{'ldm' if stage == 'ldm' else 'autoencoder'}.pt", stage)
    assert payload["holdout_clips"] == [held]
    assert payload["train"]["sample_every"] == 2 and payload["train"]["holdout"] == 1


def test_a_failing_sample_does_not_stop_training(dataset, trained, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(difftalk_train, "write_sample_video", broken)
    ae = trained[0] / "autoencoder.pt"
    with caplog.at_level(logging.WARNING, logger="talkinghead.training.samples"):
        result = train_ldm(dataset, tmp_path, LDM, autoencoder=ae)
    assert result.samples == [] and len(result.losses) == LDM.steps
    assert read_component(tmp_path / "ldm.pt", "ldm")["step"] == LDM.steps
    assert caplog.text.count("validation sample failed (disk full)") == 2
    assert list((tmp_path / "samples" / "ldm").iterdir()) == []


def test_sampling_options_on_the_command_line_and_resume(dataset, trained, tmp_path):
    from talkinghead.cli import app

    args = ["train-difftalk", str(dataset), str(tmp_path), "--stage", "ldm", "--preset", "tiny",
            "--autoencoder", str(trained[0] / "autoencoder.pt"), "--batch-size", "2",
            "--sample-every", "1", "--sample-seconds", "0.08", "--sample-steps", "1"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--steps", "1", "--holdout", "1"])
    assert result.exit_code == 0, result.output
    assert "1 samples in" in result.output
    assert _frames(tmp_path / "samples" / "ldm" / "step_00000001.mp4").shape == (2, RES, 2 * RES, 3)
    bad = CliRunner().invoke(app, [*args, "--steps", "1", "--sample-every", "-1", "--overwrite"])
    assert isinstance(bad.exception, SettingsError) and "--sample-every" in str(bad.exception)
    # a resume keeps the held-out clip; asking for another split is refused before training
    refused = CliRunner().invoke(app, [*args, "--steps", "2", "--resume", "--holdout", "0"])
    assert isinstance(refused.exception, SettingsError)
    assert "resume with --holdout 1" in str(refused.exception)
    more = train_ldm(
        dataset, tmp_path, replace(LDM, steps=2, resume=True),
        autoencoder=trained[0] / "autoencoder.pt",
    )  # fmt: skip
    assert len(more.losses) == 1 and more.holdout == trained[1]["ldm"].holdout
    assert (tmp_path / "samples" / "ldm" / "step_00000002.mp4").is_file()  # kept on resume
    assert (tmp_path / "samples" / "ldm" / "step_00000001.mp4").is_file()
