"""Ditto motion training's validation samples: held-out videos, sample files, no effect on
training, a failed sample that training survives, resume and the command line.

The tiny prepared data of test_train (two videos of 40 and 33 frames), the tiny preset, a
few CPU steps and a few DDIM steps per sample.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tests.methods.ditto.test_train import invoke, write_dataset

from _extras import needs_offline_face
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


# --- video samples (--sample-renderer) --------------------------------------------------------

MEDIA = Path(__file__).resolve().parents[3].parent / "shared" / "media"


@pytest.fixture(scope="module")
def rendered_data(tmp_path_factory) -> Path:
    """The tiny data, each video's recorded source (manifest.json, as prepare-data writes
    it) a 1 s clip of the example portrait speaking the example speech."""
    from PIL import Image

    from talkinghead.audio.io import load_audio
    from talkinghead.media.writer import VideoWriter

    portrait, speech = MEDIA / "ditto_example_face.jpg", MEDIA / "ditto_example_speech.wav"
    if not (portrait.is_file() and speech.is_file()):
        pytest.skip(f"{MEDIA}: shared media missing")
    pytest.importorskip("mediapipe")  # generate's face backend without the release's models
    root = write_dataset(tmp_path_factory.mktemp("motion_video_data"))
    face = np.asarray(Image.open(portrait).convert("RGB").resize((256, 256)))
    clip = root / "clips" / "speaker.mp4"
    clip.parent.mkdir()
    with VideoWriter(clip, fps=25, audio=(load_audio(speech)[:16000], 16000)) as writer:
        for _ in range(25):
            writer.write(face)
    videos = {f"video{i}": {"status": "ok", "source": str(clip)} for i in range(2)}
    (root / "manifest.json").write_text(json.dumps({"videos": videos}))
    return root


@pytest.fixture(scope="module")
def renderer(tmp_path_factory) -> Path:
    from _tiny_release import build_tiny_release

    return build_tiny_release(tmp_path_factory.mktemp("renderer"))


def _frames_and_audio(path: Path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as container:
        audio = len(container.streams.audio)
        return sum(1 for _ in container.decode(video=0)), audio


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@needs_offline_face
def test_sample_renderer_renders_a_video_of_the_held_out_clip(rendered_data, renderer, tmp_path):
    before = _tree_bytes(renderer)
    cfg = sampling(max_steps=2, sample_seconds=0.4, sample_steps=2, sample_renderer=str(renderer))
    run = train_motion(rendered_data, tmp_path / "run", cfg)
    assert [p.name for p in run.samples] == ["step_00000002.mp4", "step_00000002.npz"]
    frames, audio_streams = _frames_and_audio(tmp_path / "run" / "samples" / "step_00000002.mp4")
    assert frames == 10 and audio_streams == 1  # ceil(0.4 s x 25 fps), with its speech
    # Temporaries gone; the renderer's own files untouched by the temporary install.
    assert not list((tmp_path / "run").glob(".sample_render_*"))
    assert not list((tmp_path / "run" / "samples").glob(".*"))
    assert _tree_bytes(renderer) == before


def test_a_failing_render_is_logged_and_training_goes_on(rendered_data, renderer, tmp_path, caplog):
    broken = tmp_path / "broken"
    shutil.copytree(renderer, broken)
    (broken / "ditto_pytorch" / "models" / "decoder.pth").write_bytes(b"not a checkpoint")
    cfg = sampling(max_steps=2, sample_seconds=0.4, sample_steps=2, sample_renderer=str(broken))
    with caplog.at_level(logging.WARNING):
        run = train_motion(rendered_data, tmp_path / "run", cfg)
    assert run.step == 2 and run.checkpoint is not None
    assert [p.name for p in run.samples] == ["step_00000002.npz"]  # the motion sample stays
    assert not list((tmp_path / "run" / "samples").glob("*.mp4"))
    assert "generate exited with status 1" in caplog.text
    assert "generate's stderr" in caplog.text and "decoder.pth" in caplog.text
    assert not list((tmp_path / "run").glob(".sample_render_*"))


def test_cli_refuses_a_broken_renderer_up_front(rendered_data, tmp_path):
    from talkinghead.errors import CheckpointError, TalkingHeadError

    not_a_release = tmp_path / "not_a_release"
    not_a_release.mkdir()
    out = tmp_path / "run"
    for folder, match in ((not_a_release, "not a Ditto release folder"),
                          (tmp_path / "missing", "folder not found")):  # fmt: skip
        result = invoke(["train-motion", str(rendered_data), str(out), "--preset", "tiny",
                         "--no-tensorboard", "--max-steps", "2", "--sample-every", "2",
                         "--sample-renderer", str(folder)])  # fmt: skip
        assert result.exit_code == 1 and isinstance(result.exception, CheckpointError)
        message = str(result.exception)
        assert match in message and "--sample-renderer" in message and "\n" not in message
    assert not (out / "state").exists()  # refused before training
    # Data without recorded sources (no manifest.json): refused up front as well.
    from _tiny_release import make_release

    release = make_release(tmp_path / "names_only")  # the file names are what is checked
    no_sources = write_dataset(tmp_path / "no_manifest")
    with pytest.raises(TalkingHeadError, match="records no source video"):
        train_motion(no_sources, tmp_path / "run2", sampling(sample_renderer=str(release)))
    assert not (tmp_path / "run2").exists()
