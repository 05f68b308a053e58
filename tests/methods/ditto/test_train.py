"""MotionDiT (LMDM) training: windows and conditions, overfitting a tiny set, resume, export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from _conformance import REPO_ROOT, skip_missing
from talkinghead.errors import TalkingHeadError
from talkinghead.methods.ditto.train import (
    PRESETS,
    MotionTrainConfig,
    MotionWindowDataset,
    install_checkpoint,
    load_data_list,
    motion_loss,
    train_motion,
)

AUD_DIM = 16
TINY = PRESETS["tiny"]


def write_dataset(
    root: Path, lengths=(40, 33), aud_dim: int = AUD_DIM, seed: int = 0, lmk: bool = False
) -> Path:
    """Arrays in prepare-data's layout; the motion is a smooth function of the audio features,
    so the condition determines x_0 and a small network can fit it. With `lmk`, also
    MediaPipe-shaped landmarks [n, 478, 3], and keypoints and landmarks that differ per
    frame (so a condition row tells which frame it came from)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((aud_dim, 265)).astype(np.float32) / np.sqrt(aud_dim)
    base = rng.uniform(-1, 1, 265).astype(np.float32)
    entries = []
    for i, n in enumerate(lengths):
        t = np.arange(n, dtype=np.float32)[:, None]
        freqs = rng.uniform(0.05, 0.3, aud_dim).astype(np.float32)
        aud = np.sin(t * freqs + rng.uniform(0, 6, aud_dim)).astype(np.float32)
        kp = np.tile(rng.standard_normal(63), (n, 1)) * 0.3
        if lmk:
            kp = kp + 0.01 * t
        mtn = np.concatenate([np.tanh(aud @ w) * 0.7 + base, kp], 1).astype(np.float32)
        arrays = {
            "aud": aud,
            "mtn": mtn,
            "emo": np.tile(np.eye(8, dtype=np.float32)[i % 8], (n, 1)),
            "eye_open": 1 + 0.1 * np.sin(t / 3 + np.arange(2)).astype(np.float32),
            "eye_ball": 0.01 * np.cos(t / 5 + np.arange(6)).astype(np.float32),
            "sc": mtn[0, 265:],
        }
        if lmk:
            mesh = rng.uniform(0.2, 0.8, (478, 3)).astype(np.float32)
            arrays["lmk"] = mesh[None] + 0.001 * t[:, :, None].astype(np.float32)
        name = f"video{i}"
        entry = {"frame_num": n, "name": name}
        for kind, arr in arrays.items():
            rel = f"{kind}_npy/{name}.npy"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / rel, arr)
            entry[kind] = rel
        entries.append(entry)
    (root / "data_list.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("motion_data"))


def quick(**kw) -> MotionTrainConfig:
    kw.setdefault("tensorboard", False)
    return replace(TINY, **kw)


# --- data -----------------------------------------------------------------------------------


def test_windows_and_condition_layout(data):
    cfg = quick()
    videos = load_data_list(data, cfg)
    ds = MotionWindowDataset(videos, cfg)
    L = cfg.seq_frames
    assert len(ds) == (40 - L) + (33 - L)  # starts 1 .. n - L: the frame before is the condition
    assert ds.cond_dim == AUD_DIM + 8 + 2 + 6 + 63
    assert ds.describe_condition().endswith(f"= {ds.cond_dim}")
    x0, cond_frame, cond = ds[0]
    mtn = np.load(data / "mtn_npy" / "video0.npy")
    aud = np.load(data / "aud_npy" / "video0.npy")
    assert x0.shape == (L, 265) and cond_frame.shape == (265,) and cond.shape == (L, ds.cond_dim)
    np.testing.assert_array_equal(x0, mtn[1 : 1 + L, :265])
    np.testing.assert_array_equal(cond_frame, mtn[0, :265])  # use_last_frame
    np.testing.assert_array_equal(cond[:, :AUD_DIM], aud[1 : 1 + L])
    np.testing.assert_array_equal(cond[:, AUD_DIM : AUD_DIM + 8], np.tile(np.eye(8)[0], (L, 1)))
    sc = cond[:, -63:]
    assert (sc == sc[0]).all()
    assert any(np.allclose(sc[0], row) for row in mtn[:, 265:])  # some frame's keypoints

    # Without the optional blocks the condition is the audio alone.
    bare = quick(use_emo=False, use_eye_open=False, use_eye_ball=False, use_sc=False)
    assert MotionWindowDataset(load_data_list(data, bare), bare).cond_dim == AUD_DIM


def test_short_videos_are_dropped_and_errors_are_clear(data, tmp_path):
    cfg = quick(seq_frames=35)
    assert [v.name for v in load_data_list(data, cfg)] == ["video0"]
    with pytest.raises(TalkingHeadError, match="no video with at least 41"):
        load_data_list(data, quick(seq_frames=40))
    with pytest.raises(TalkingHeadError, match="data list not found"):
        load_data_list(tmp_path, cfg)
    with pytest.raises(TalkingHeadError, match=r"audio_feat_dim 1103 does not match .* = 95"):
        train_motion(data, tmp_path / "run", quick(audio_feat_dim=1103))


def test_preload_cache_gives_the_same_items(data, tmp_path):
    from talkinghead.methods.ditto.train import preload

    cfg = quick()
    lazy = MotionWindowDataset(load_data_list(data, cfg), cfg)
    cache = tmp_path / "data_preload.npz"
    for _ in range(2):  # built, then read back
        videos = load_data_list(data, cfg)
        preload(videos, cfg, cache)
        assert all(
            isinstance(a, np.ndarray) and not isinstance(a, np.memmap)
            for a in videos[0].arrays.values()
        )
        eager = MotionWindowDataset(videos, cfg)
        for i in (0, 5, len(lazy) - 1):
            torch.testing.assert_close(eager[i][0], lazy[i][0])
            torch.testing.assert_close(eager[i][2][:, :-63], lazy[i][2][:, :-63])
    assert cache.is_file()


def test_loss_terms():
    cfg = quick()
    x = torch.randn(2, 16, 265)
    total, terms = motion_loss(x, x, x[:, 0], cfg)
    assert float(total) == 0.0
    assert set(terms) == {
        f"{p}_{k}" for p in ("scale", "pitch", "yaw", "roll", "t", "exp") for k in "PVAL"
    }
    pred = x.clone()
    pred[..., 202:] += 1.0  # a constant offset on exp: position and last-frame terms only
    total, terms = motion_loss(pred, x, x[:, 0], cfg)
    assert float(terms["exp_P"]) == pytest.approx(1.0) and float(terms["exp_L"]) == pytest.approx(
        1.0
    )
    assert float(terms["exp_V"]) == pytest.approx(0.0, abs=1e-6)
    assert float(total) == pytest.approx(2.0, abs=1e-5)
    weighted, _ = motion_loss(pred, x, x[:, 0], replace(cfg, part_weights={"exp": 3.0}))
    assert float(weighted) == pytest.approx(6.0, abs=1e-4)


# --- training -------------------------------------------------------------------------------


def test_tiny_model_overfits(data, tmp_path):
    # The release's condition dropout (0.2) stays on: the unconditional branch learns too.
    cfg = quick(epochs=1000, max_steps=100, seq_frames=8, tensorboard=True)
    result = train_motion(data, tmp_path / "run", cfg)
    assert result.step == 100 and len(result.losses) == 100
    first, last = np.mean(result.losses[:20]), np.mean(result.losses[-20:])
    assert first / last >= 5, (first, last)
    log_lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    logged = json.loads(log_lines[-1])
    assert logged["step"] == 100 and {"loss/total", "loss/exp_P", "lr", "grad_norm"} <= set(logged)
    events = list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))
    try:
        import tensorboard  # noqa: F401  (optional: without it only the JSONL log is written)
    except ImportError:
        assert not events
    else:
        assert events


def _decoder_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]


def test_resume_continues_from_the_saved_step(data, tmp_path):
    # 2 steps per epoch: the first run stops in the middle of the third epoch.
    cfg = quick(save_every_steps=2, max_steps=5)
    first = train_motion(data, tmp_path / "split", cfg)
    assert (first.start_step, first.step) == (0, 5)
    states = sorted((tmp_path / "split" / "state").iterdir())
    assert [p.name for p in states] == ["step_00000004", "step_00000005"]  # keep_states = 2
    trainer = json.loads((states[-1] / "trainer.json").read_text())
    assert trainer == {"step": 5, "epoch": 2, "batch": 1}
    resumed = train_motion(data, tmp_path / "split", replace(cfg, max_steps=10))
    assert (resumed.start_step, resumed.step) == (5, 10) and len(resumed.losses) == 5
    straight = train_motion(data, tmp_path / "straight", replace(cfg, max_steps=10))
    # Optimizer, EMA, RNG and the position in the epoch come back: the same weights.
    a = _decoder_state(resumed.checkpoint)
    b = _decoder_state(straight.checkpoint)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first.losses + resumed.losses, straight.losses, rtol=1e-5)
    # Finished: running again trains nothing and points at the export.
    again = train_motion(data, tmp_path / "split", replace(cfg, max_steps=10))
    assert again.step == 10 and again.losses == [] and again.checkpoint == resumed.checkpoint
    with pytest.raises(TalkingHeadError, match="another network"):
        train_motion(data, tmp_path / "split", replace(cfg, latent_dim=64, max_steps=12))
    with pytest.raises(TalkingHeadError, match="holds a training run"):
        train_motion(data, tmp_path / "split", cfg, resume=False)


def test_epoch_saves_and_export_load_and_sample(data, tmp_path):
    from talkinghead.diffusion import DDIMSampler
    from talkinghead.methods.ditto.checkpoints import ReleaseCheckpoints
    from talkinghead.models import load_official

    cfg = quick(epochs=2, save_ckpt_freq=1)
    result = train_motion(data, tmp_path / "run", cfg)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "ckpts").iterdir())
    steps_per_epoch = result.step // 2
    assert ckpts == [f"lmdm_e0001_s{steps_per_epoch:08d}.pth", f"lmdm_e0002_s{result.step:08d}.pth"]
    assert result.checkpoint.name == "lmdm_v0.4_hubert.pth"
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["lmdm"]["audio_feat_dim"] == AUD_DIM + 79 and sidecar["lmdm"]["latent_dim"] == 32
    obj = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert list(obj) == ["model_state_dict"]

    net = load_official("lmdm", result.checkpoint, **sidecar["lmdm"])
    ds = MotionWindowDataset(load_data_list(data, cfg), replace(cfg, audio_feat_dim=None))
    _, cond_frame, cond = ds[3]
    g = torch.Generator().manual_seed(0)
    out = DDIMSampler(num_steps=4)(net, cond_frame[None], cond[None], generator=g)
    assert out.shape == (1, cfg.seq_frames, 265) and torch.isfinite(out).all()

    # Installed into a checkpoints root: the file and sidecar generate reads.
    root = tmp_path / "checkpoints"
    models = root / "ditto_pytorch" / "models"
    models.mkdir(parents=True)
    (models / "lmdm_v0.4_hubert.pth").write_bytes(b"release weights")
    (models / "talkinghead.json").write_text(json.dumps({"decoder": {"x": 1}}))
    target = install_checkpoint(tmp_path / "run", root)
    assert target == ReleaseCheckpoints.from_root(root).model("lmdm")
    assert (models / "lmdm_v0.4_hubert.pth.orig").read_bytes() == b"release weights"
    merged = json.loads((models / "talkinghead.json").read_text())
    assert merged == {"decoder": {"x": 1}, "lmdm": sidecar["lmdm"]}
    load_official("lmdm", target, **merged["lmdm"])


def test_release_sized_config_needs_no_sidecar(tmp_path):
    cfg = MotionTrainConfig()
    assert cfg.lmdm_overrides(1103) == {}
    assert cfg.lmdm_overrides(1059) == {"audio_feat_dim": 1059}


def test_bf16_mixed_precision_runs(data, tmp_path):
    result = train_motion(data, tmp_path / "run", quick(max_steps=2, mixed_precision="bf16"))
    assert result.step == 2 and all(np.isfinite(result.losses))


# --- the train-motion command ---------------------------------------------------------------


def invoke(args: list[str]):
    from typer.testing import CliRunner

    from talkinghead.cli import app

    return CliRunner().invoke(app, args)


def test_cli_trains_resumes_and_installs(data, tmp_path):
    out, root = tmp_path / "run", tmp_path / "checkpoints"
    args = ["train-motion", str(data), str(out), "--preset", "tiny", "--no-tensorboard"]
    result = invoke([*args, "--max-steps", "3", "--install-to", str(root)])
    assert result.exit_code == 0, result.output
    assert "trained to step 3" in result.output and "checkpoint:" in result.output
    installed = root / "ditto_pytorch" / "models"
    assert (installed / "lmdm_v0.4_hubert.pth").is_file()
    assert json.loads((installed / "talkinghead.json").read_text())["lmdm"]["latent_dim"] == 32
    again = invoke([*args, "--max-steps", "4", "--use-sc"])
    assert again.exit_code == 0, again.output
    assert "resumed at step 3" in again.output and "trained to step 4" in again.output


def test_cli_errors_are_one_line(data, tmp_path):
    for args, match in (
        ([str(tmp_path / "missing"), str(tmp_path / "run")], "data not found"),
        ([str(data), str(tmp_path / "run"), "--preset", "huge"], "unknown preset 'huge'"),
        ([str(data), str(tmp_path / "run"), "--mixed-precision", "fp8"], "mixed_precision"),
        # once tracebacks from the optimiser and from numpy's seeding
        ([str(data), str(tmp_path / "run"), "--lr", "-1"], "lr must be a positive number"),
        ([str(data), str(tmp_path / "run"), "--seed", "-1"], "seed must be a whole number"),
        (
            [str(data), str(tmp_path / "run"), "--preset", "tiny", "--audio-feat-dim", "7"],
            "audio_feat_dim 7",
        ),
    ):
        result = invoke(["train-motion", *args])
        assert result.exit_code == 1
        assert isinstance(result.exception, TalkingHeadError), result.output
        assert match in str(result.exception) and "\n" not in str(result.exception)


def test_trained_checkpoint_drives_generate(data, tmp_path):
    """Train -> install into a (tiny) release -> the pipeline `generate` builds loads it and
    makes motion with it (rendering itself is the pipeline tests' business)."""
    from _tiny_release import build_tiny_release
    from talkinghead.audio.io import load_audio
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    media = REPO_ROOT.parent / "shared" / "media"
    portrait, speech = media / "ditto_example_face.jpg", media / "ditto_example_speech.wav"
    if not (portrait.is_file() and speech.is_file()):
        skip_missing(f"{media}")
    pytest.importorskip("mediapipe")
    root = build_tiny_release(tmp_path / "release")
    result = train_motion(data, tmp_path / "run", quick(max_steps=3))
    install_checkpoint(tmp_path / "run", root)

    pipe = DittoPipeline.from_pretrained(
        root, download=False, cache=False, steps=2, seed=0, max_size=256
    )
    trained = torch.load(result.checkpoint, weights_only=True)["model_state_dict"]
    loaded = pipe.models.lmdm.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())
    avatar = pipe.register(portrait)
    motion, _ = pipe.motion(avatar, load_audio(speech)[: 16000 * 2])
    assert motion.shape == (50, 265) and np.isfinite(motion).all()


def test_a_model_trained_without_some_conditions_drives_generate(data, tmp_path, monkeypatch):
    """--no-use-emo --no-use-eye-ball: the export's sidecar records the layout, the install
    carries it, and generate builds those conditions (audio, eye openness, shape code);
    an emotion it cannot show is refused before any model loads."""
    from _tiny_release import build_tiny_release
    from talkinghead.audio.io import load_audio
    from talkinghead.errors import SettingsError
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    media = REPO_ROOT.parent / "shared" / "media"
    portrait, speech = media / "ditto_example_face.jpg", media / "ditto_example_speech.wav"
    if not (portrait.is_file() and speech.is_file()):
        skip_missing(f"{media}")
    pytest.importorskip("mediapipe")
    root = build_tiny_release(tmp_path / "release")
    cfg = quick(max_steps=2, use_emo=False, use_eye_ball=False)
    result = train_motion(data, tmp_path / "run", cfg)
    assert json.loads(result.sidecar.read_text())["conditions"] == {
        "use_emo": False,
        "use_eye_ball": False,
    }
    install_checkpoint(tmp_path / "run", root)
    installed = json.loads((root / "ditto_pytorch" / "models" / "talkinghead.json").read_text())
    assert installed["conditions"] == {"use_emo": False, "use_eye_ball": False}

    pipe = DittoPipeline.from_pretrained(root, download=False, cache=False, steps=2, seed=0)
    assert pipe.models.conditions == {
        "use_emotion": False,
        "use_eye_open": True,
        "use_eye_ball": False,
        "use_shape": True,
        "use_landmarks": False,
    }
    avatar = pipe.register(portrait)
    motion, _ = pipe.motion(avatar, load_audio(speech)[: 16000 * 2])
    assert motion.shape == (50, 265) and np.isfinite(motion).all()
    with pytest.raises(SettingsError, match=r"without the emotion condition \(use_emo off\)"):
        DittoPipeline.from_pretrained(root, download=False, cache=False, emotion="Happy")

    monkeypatch.setenv("TALKINGHEAD_CACHE", str(tmp_path / "cache"))
    video = tmp_path / "out.mp4"
    args = ["generate", "--checkpoints", str(root), "-s", str(portrait), "-a", str(speech)]
    refused = invoke([*args, "-o", str(video), "--emotion", "Happy"])
    assert refused.exit_code == 1 and isinstance(refused.exception, SettingsError)
    assert "leave --emotion at Neutral" in str(refused.exception) and not video.exists()

    # A model of the release's layout installed over it takes the conditions entry away.
    train_motion(data, tmp_path / "run2", quick(max_steps=1))
    install_checkpoint(tmp_path / "run2", root)
    installed = json.loads((root / "ditto_pytorch" / "models" / "talkinghead.json").read_text())
    assert "conditions" not in installed


# --- at scale ---------------------------------------------------------------------------------


def test_400_prepared_videos_load_under_a_descriptor_limit_of_256(tmp_path):
    """One memory map per array would need 2000 descriptors; the pool keeps 64 open."""
    import subprocess
    import sys
    import textwrap

    write_dataset(tmp_path, lengths=(20,) * 400)
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        from dataclasses import replace
        from talkinghead.methods.ditto.train import PRESETS, MotionWindowDataset, load_data_list
        cfg = replace(PRESETS["tiny"], seq_frames=8, tensorboard=False)
        ds = MotionWindowDataset(load_data_list({str(tmp_path)!r}, cfg), cfg)
        assert len(ds) == 400 * 12, len(ds)
        for i in range(0, len(ds), 7):  # every video, several windows each
            x0, cond_frame, cond = ds[i]
        print("ok", len(ds))
        """
    )
    src = REPO_ROOT / "src"
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok 4800" in out.stdout


def test_release_options_are_used_and_recorded(data, tmp_path):
    mv = np.stack([np.full(265, 0.5, np.float32), np.full(265, 4.0, np.float32)])
    np.save(tmp_path / "mv.npy", mv)
    ws = np.ones(265, np.float32)
    ws[202:] = 0.0  # expression not counted
    np.save(tmp_path / "ws.npy", ws)
    cfg = quick(mtn_mean_var_npy=str(tmp_path / "mv.npy"), dim_ws_npy=str(tmp_path / "ws.npy"))
    ds = MotionWindowDataset(load_data_list(data, cfg), cfg)
    mtn = np.load(data / "mtn_npy" / "video0.npy")
    np.testing.assert_allclose(ds[0][0].numpy(), (mtn[1:17, :265] - 0.5) / 2.0, rtol=1e-6)

    x = torch.randn(2, 16, 265)
    pred = x.clone()
    pred[..., 202:] += 1.0
    weights = torch.from_numpy(ws)
    total, _ = motion_loss(pred, x, x[:, 0], cfg, weights)
    assert float(total) == pytest.approx(0.0, abs=1e-6)

    result = train_motion(data, tmp_path / "run", replace(cfg, max_steps=2, optimizer="adan"))
    recorded = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert recorded["optimizer"] == "adan" and recorded["mtn_mean_var_npy"].endswith("mv.npy")
    assert recorded["dim_ws_npy"].endswith("ws.npy") and recorded["mixed_precision"] == "no"
    assert result.step == 2 and all(np.isfinite(result.losses))


def test_cli_release_options_and_loss_lines(data, tmp_path):
    out = tmp_path / "run"
    args = ["train-motion", str(data), str(out), "--preset", "tiny", "--no-tensorboard"]
    result = invoke(
        [
            *args,
            "--max-steps",
            "4",
            "--log-every",
            "2",
            "--optimizer",
            "adan",
            "--part-weight",
            "exp=2",
            "--part-weight",
            "t=0.5",
        ]
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["part_weights"] == {"exp": 2.0, "t": 0.5} and recorded["optimizer"] == "adan"
    assert [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()] == [
        2,
        4,
    ]
    bad = invoke([*args, "--part-weight", "mouth=2"])
    assert bad.exit_code == 1 and "PART=WEIGHT" in str(bad.exception)
    missing = invoke([*args, "--dim-ws-npy", str(tmp_path / "nope.npy")])
    assert missing.exit_code == 1 and "file not found" in str(missing.exception)


def test_two_process_accelerate_launch_resume_is_exact(data, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): 3 steps + resume to 6 == 6 straight
    (one launch; the straight run comes between the split one and its resume)."""
    from _accelerate_launch import launch_commands

    base = [
        "train-motion",
        str(data),
        "--preset",
        "tiny",
        "--no-tensorboard",
        "--batch-size",
        "4",
        "--save-every-steps",
        "3",
    ]
    runs = [
        [*base[:2], str(tmp_path / out), *base[2:], "--max-steps", str(steps)]
        for out, steps in (("split", 3), ("straight", 6), ("split", 6))
    ]
    run = launch_commands(runs, mixed_precision="no", timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "split" / "state" / "step_00000006" / "rank_state_1.pt").is_file()
    a = _decoder_state(tmp_path / "split" / "export" / "lmdm_v0.4_hubert.pth")
    b = _decoder_state(tmp_path / "straight" / "export" / "lmdm_v0.4_hubert.pth")
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# --- the release's use_reg_loss, use_lmk and use_cond_end ------------------------------------

LMK_DIM = 478 * 3


@pytest.fixture(scope="module")
def lmk_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("lmk_data"), lmk=True)


def test_reg_loss_is_the_releases_l1_pull_on_every_part_but_the_scale():
    """By hand: R = 1e-4 * mean |pred| per part (scale none); P/V/A/L vanish as pred == target."""
    pred = torch.zeros(2, 4, 265)
    pred[:, :, 0] = 7.0  # scale: not regularised
    pred[0, :, 1:67] = 0.5  # pitch: mean |.| over both samples = (0.5 + 1.5) / 2 = 1
    pred[1, :, 1:67] = -1.5
    pred[:, :, 202:] = -3.0  # exp: mean |.| = 3; yaw, roll and t stay 0
    cfg = quick(use_reg_loss=True)
    total, terms = motion_loss(pred, pred.clone(), pred[:, 0].clone(), cfg)
    assert {k for k in terms if k.endswith("_R")} == {
        f"{p}_R" for p in ("pitch", "yaw", "roll", "t", "exp")
    }
    assert float(terms["pitch_R"]) == pytest.approx(1e-4)
    assert float(terms["exp_R"]) == pytest.approx(3e-4)
    assert float(terms["yaw_R"]) == float(terms["t_R"]) == 0.0
    assert float(total) == pytest.approx(4e-4)
    # Neither the part weights, the dimension weights nor the loss type touch it (as there).
    other = replace(cfg, part_weights={"pitch": 0.0, "exp": 5.0}, loss_type="l1")
    weighted, _ = motion_loss(
        pred, pred.clone(), pred[:, 0].clone(), other, torch.full((265,), 3.0)
    )
    assert float(weighted) == pytest.approx(4e-4)
    _, plain = motion_loss(pred, pred.clone(), pred[:, 0].clone(), quick())
    assert not any(k.endswith("_R") for k in plain)


def test_lmk_and_cond_end_follow_the_releases_layout(lmk_data, tmp_path):
    cfg = quick(use_lmk=True, use_cond_end=True)
    ds = MotionWindowDataset(load_data_list(lmk_data, cfg), cfg)
    assert [k for k, _ in ds.blocks] == ["aud", "emo", "eye_open", "eye_ball", "sc", "lmk"]
    assert ds.cond_dim == AUD_DIM + 8 + 2 + 6 + 63 + LMK_DIM
    mtn = np.load(lmk_data / "mtn_npy" / "video0.npy")
    lmk = np.load(lmk_data / "lmk_npy" / "video0.npy")
    L, n = cfg.seq_frames, 40
    for index, end in ((0, 1 + L), (n - L - 1, n - 1)):  # the last window ends the video
        f = index + 1
        x0, cond_frame, cond, cond_end = ds[index]
        np.testing.assert_array_equal(x0, mtn[f : f + L, :265])
        np.testing.assert_array_equal(cond_frame, mtn[f - 1, :265])
        np.testing.assert_array_equal(cond_end, mtn[end, :265])
        sc, lm = cond[:, -LMK_DIM - 63 : -LMK_DIM].numpy(), cond[:, -LMK_DIM:].numpy()
        assert (sc == sc[0]).all() and (lm == lm[0]).all()
        # One random frame r gives both the shape code and the landmarks (flattened x, y, z).
        r = int(np.argmin(np.abs(mtn[:, 265:] - sc[0]).sum(1)))
        np.testing.assert_array_equal(sc[0], mtn[r, 265:])
        np.testing.assert_array_equal(lm[0], lmk[r].reshape(-1))
    # The end frame is normalised like the other motion frames.
    mv = np.stack([np.full(265, 0.5, np.float32), np.full(265, 4.0, np.float32)])
    np.save(tmp_path / "mv.npy", mv)
    normed = replace(cfg, mtn_mean_var_npy=str(tmp_path / "mv.npy"))
    end = MotionWindowDataset(load_data_list(lmk_data, normed), normed)[0][3]
    np.testing.assert_allclose(end.numpy(), (mtn[1 + L, :265] - 0.5) / 2.0, rtol=1e-6)
    # Off (the default): three items, no landmark block.
    assert len(MotionWindowDataset(load_data_list(lmk_data, quick()), quick())[0]) == 3


def test_use_lmk_without_landmarks_in_the_data_is_a_clear_error(data):
    with pytest.raises(TalkingHeadError, match=r"entry 0 lacks lmk .*prepare-data --landmarks"):
        load_data_list(data, quick(use_lmk=True))


def test_cli_trains_with_lmk_cond_end_and_reg_loss_and_records_them(lmk_data, tmp_path):
    out = tmp_path / "run"
    args = [
        "train-motion",
        str(lmk_data),
        str(out),
        "--preset",
        "tiny",
        "--no-tensorboard",
        "--seq-frames",
        "12",
        "--log-every",
        "1",
    ]
    result = invoke([*args, "--max-steps", "3", "--use-lmk", "--use-cond-end", "--use-reg-loss"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["use_lmk"] and recorded["use_cond_end"] and recorded["use_reg_loss"]
    assert recorded["audio_feat_dim"] == AUD_DIM + 8 + 2 + 6 + 63 + LMK_DIM
    sidecar = json.loads((out / "export" / "talkinghead.json").read_text())["lmdm"]
    assert sidecar["audio_feat_dim"] == recorded["audio_feat_dim"]
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert all(np.isfinite(x["loss/total"]) and x["loss/exp_R"] > 0 for x in lines)
    assert not any("loss/scale_R" in x for x in lines)
    # The landmark block widens the network: resuming without it is refused.
    again = invoke([*args, "--max-steps", "4", "--use-cond-end"])
    assert again.exit_code == 1 and "use_lmk: True -> False" in str(again.exception)


def test_generate_conditions_a_use_lmk_model_on_the_portrait_s_mesh(
    lmk_data, tmp_path, monkeypatch
):
    """A train-motion --use-lmk model drives generate: its landmark block is the mesh the
    face analyser found on the source's crop (frame 0), as prepare-data --landmarks stores it."""
    from _tiny_release import build_tiny_release
    from talkinghead.audio.io import load_audio
    from talkinghead.face.recorded import RecordedFaceAnalyzer
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    media = REPO_ROOT.parent / "shared" / "media"
    portrait, speech = media / "ditto_example_face.jpg", media / "ditto_example_speech.wav"
    if not (portrait.is_file() and speech.is_file()):
        skip_missing(f"{media}")
    pytest.importorskip("mediapipe")
    root = build_tiny_release(tmp_path / "release")
    train_motion(lmk_data, tmp_path / "run", quick(max_steps=1, use_lmk=True))
    install_checkpoint(tmp_path / "run", root)
    monkeypatch.setenv("TALKINGHEAD_CACHE", str(tmp_path / "cache"))
    clip = tmp_path / "speech.wav"
    import soundfile as sf

    sf.write(clip, load_audio(speech)[:8000], 16000)
    video = tmp_path / "out.mp4"
    args = ["-s", str(portrait), "-a", str(clip), "-o", str(video), "--steps", "1"]
    result = invoke(["generate", "--checkpoints", str(root), *args, "--max-size", "256"])
    assert result.exit_code == 0, result.output
    assert video.stat().st_size > 0
    info = invoke(["info", "--checkpoints", str(root)])
    assert "conditions: audio + emotion + eye_open + eye_ball + shape + landmarks" in info.output

    pipe = DittoPipeline.from_pretrained(
        root, download=False, cache=False, steps=1, seed=0, max_size=256
    )
    avatar = pipe.register(portrait)
    face = pipe.models.registrar.face_analyzer.analyze(avatar.frames[0])
    assert avatar.mesh.shape == (478, 3)
    np.testing.assert_array_equal(avatar.mesh, face.mesh)
    cond = pipe._conditions(avatar, pipe.config)(torch.zeros(3, AUD_DIM))
    assert cond.shape == (3, AUD_DIM + 8 + 2 + 6 + 63 + LMK_DIM)
    assert torch.equal(cond[:, -LMK_DIM:], torch.from_numpy(avatar.mesh.reshape(-1)).expand(3, -1))
    # Another registration driving the conditions (the release's ch_info) brings its own mesh.
    mirrored = pipe.register(np.ascontiguousarray(avatar.frames[0][:, ::-1]))
    assert not np.array_equal(mirrored.mesh, avatar.mesh)
    cond = pipe._conditions(avatar, pipe.config.replace(condition_source=mirrored))
    assert torch.equal(
        cond(torch.zeros(1, AUD_DIM))[0, -LMK_DIM:], torch.from_numpy(mirrored.mesh.reshape(-1))
    )

    # An analyser that keeps no mesh (an old recording): a one-line error, nothing written.
    recorded = RecordedFaceAnalyzer(face.landmarks, face.eye_open, face.eye_ball)
    pipe = DittoPipeline.from_pretrained(
        root, download=False, cache=False, steps=1, face_analyzer=recorded, max_size=256
    )
    with pytest.raises(TalkingHeadError, match=r"trained with use_lmk.*gave none") as err:
        pipe.generate(portrait, clip, tmp_path / "none.mp4")
    assert "\n" not in str(err.value) and not (tmp_path / "none.mp4").exists()
