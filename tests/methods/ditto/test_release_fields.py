"""The release's ch_info and N_d, and the eye/lip retargeting sliders, on a tiny release."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from _conformance import MEDIA_DIR, skip_missing
from _tiny_liveportrait import build_tiny_liveportrait
from _tiny_release import build_tiny_release
from talkinghead.errors import SettingsError
from talkinghead.methods.ditto.config import ConditionSource, DittoConfig, config_from_release
from talkinghead.methods.ditto.motion import EYE_KEYPOINTS, LIP_KEYPOINTS, StitchConfig
from talkinghead.methods.ditto.motion.stitch import blink_schedule
from talkinghead.methods.ditto.pipeline import DittoPipeline
from talkinghead.models.keypoints import bin66_to_degree

PORTRAIT = MEDIA_DIR / "ditto_example_face.jpg"
SPEECH = MEDIA_DIR / "ditto_example_speech.wav"
SETTINGS = {"steps": 2, "seed": 0, "max_size": 256, "batch_size": 4}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> DittoPipeline:
    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA_DIR}")
    release = build_tiny_release(tmp_path_factory.mktemp("release"))
    return DittoPipeline.from_pretrained(release, download=False, cache=False, **SETTINGS)


@pytest.fixture(scope="module")
def avatar(pipe):
    return pipe.register(PORTRAIT)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    """0.4 s of the example speech at 16 kHz: 10 frames."""
    data, sr = sf.read(SPEECH, dtype="float32")
    assert sr == 16000 or sr > 0
    from talkinghead.audio.io import to_sample_rate

    return to_sample_rate(data[: int(sr * 0.4)], sr, 16000, "speech")


def other_source(avatar) -> ConditionSource:
    """Another registration: a bigger face (scale x 1.25) with other eyes and shape code."""
    info = {k: v.copy() for k, v in avatar.x_s_info_at(0).items()}
    info["scale"] = info["scale"] * 1.25
    return ConditionSource(
        info, avatar.eye_open * 0.5 + 0.1, avatar.eye_ball + 0.05, avatar.sc + 0.1
    )


def release_source_info(cond: ConditionSource) -> dict:
    """The release's source_info layout (what its ch_info is)."""
    return {
        "x_s_info_lst": [cond.x_s_info],
        "sc": cond.sc,
        "eye_open_lst": [e[None] for e in cond.eye_open],
        "eye_ball_lst": [e[None] for e in cond.eye_ball],
    }


# ------------------------------------------------------------------ config


def test_release_ch_info_and_n_d_map_to_settings(avatar, caplog) -> None:
    cond = other_source(avatar)
    cfg = config_from_release(
        {"default_kwargs": {"ch_info": release_source_info(cond), "N_d": 120}}
    )
    assert "no counterpart" not in caplog.text
    assert isinstance(cfg.condition_source, ConditionSource)
    np.testing.assert_array_equal(cfg.condition_source.sc, cond.sc)
    np.testing.assert_array_equal(cfg.condition_source.eye_open, cond.eye_open)
    assert cfg.condition_source.scale == pytest.approx(cond.scale)
    assert cfg.driving_frames == 120
    assert config_from_release({"default_kwargs": {"N_d": -1}}).driving_frames is None


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"driving_frames": 0}, "driving_frames"),
        ({"condition_source": {"sc": np.zeros(63)}}, "x_s_info_lst"),
        ({"condition_source": 3}, "condition_source"),
        ({"eye_open_retarget": 0.3}, "--retargeting"),
        ({"retargeting": "/nonexistent/stitching_retargeting_module.pth"}, "not found"),
    ],
)
def test_bad_release_field_settings_are_named(changes, needle) -> None:
    with pytest.raises(SettingsError, match=needle.replace("-", r"\-")):
        DittoConfig(**changes)


# ------------------------------------------------------------------ ch_info


def test_ch_info_scales_the_driven_expression_and_angles_as_the_release(avatar) -> None:
    """release: use_d_keys -> {exp, pitch, yaw, roll: scale_a / scale_b, t: 1}, so the
    relative motion ``source + (d - d0) * ratio`` is scaled on those keys only."""
    cond = other_source(avatar)
    ratio = cond.scale / float(avatar.x_s_info["scale"][0, 0])
    cfg = DittoConfig(condition_source=cond, stitch=StitchConfig(flag_stitching=False))
    stitch = cfg.stitch_config(float(avatar.x_s_info["scale"][0, 0]), is_image=True)
    assert stitch.use_d_keys == pytest.approx(
        {"exp": ratio, "pitch": ratio, "yaw": ratio, "roll": ratio, "t": 1.0}
    )
    from talkinghead.methods.ditto.motion import MotionStitcher

    x_s = {k: torch.from_numpy(v) for k, v in avatar.x_s_info_at(0).items()}
    g = torch.Generator().manual_seed(0)
    x_d = {
        k: v.repeat(3, 1) + 0.05 * torch.randn(3, v.shape[1], generator=g) for k, v in x_s.items()
    }
    plain = MotionStitcher(
        None, DittoConfig(stitch=StitchConfig(flag_stitching=False)).stitch_config()
    )
    scaled = MotionStitcher(None, stitch)
    outs = []
    for st in (plain, scaled):
        st.setup(x_s, True, num_frames=3)
        outs.append(st.driving_info(x_s, x_d, 0)[0])
    d0 = {k: v[:1] for k, v in x_d.items()}
    lip = [3 * k + j for k in LIP_KEYPOINTS for j in range(3)]
    want_exp = x_s["exp"][:, lip] + (x_d["exp"][:, lip] - d0["exp"][:, lip]) * ratio
    torch.testing.assert_close(outs[1]["exp"][:, lip], want_exp)
    for k in ("pitch", "roll"):  # yaw also carries the gaze fix's input; its angle is the same rule
        want = bin66_to_degree(x_s[k] + (x_d[k] - d0[k]) * ratio)
        torch.testing.assert_close(outs[1][k], want.reshape(-1))
    torch.testing.assert_close(outs[1]["t"], outs[0]["t"])  # t keeps weight 1
    assert not torch.allclose(outs[1]["exp"], outs[0]["exp"])


def test_ch_info_drives_the_conditions_and_the_motion(pipe, avatar, audio) -> None:
    cond = other_source(avatar)
    cfg = pipe.config.replace(condition_source=cond)
    feats = pipe.features.features(audio)
    c_own = pipe._conditions(avatar, pipe.config)(feats, start=0)
    c_other = pipe._conditions(avatar, cfg)(feats, start=0)
    d = c_own.shape[1]
    eye_ball_sc = slice(d - 6 - 63, d)  # the eye-ball and shape-code blocks end the vector
    assert not torch.allclose(c_own[:, eye_ball_sc], c_other[:, eye_ball_sc])
    torch.testing.assert_close(c_other[0, d - 63 :], torch.from_numpy(cond.sc))
    torch.testing.assert_close(
        c_own[:, : d - 6 - 63 - 2], c_other[:, : d - 6 - 63 - 2]
    )  # audio, emotion
    own, _ = pipe.motion(avatar, audio)
    other, _ = pipe.motion(avatar, audio, config=cfg)
    assert not np.allclose(own, other)
    # The source's own registration as ch_info is what no ch_info does.
    same, _ = pipe.motion(avatar, audio, config=pipe.config.replace(condition_source=avatar))
    np.testing.assert_array_equal(own, same)


def test_ch_info_as_a_file_is_registered_and_the_same_source_changes_nothing(pipe, audio) -> None:
    plain = pipe.generate(PORTRAIT, (audio, 16000)).frames
    same = pipe.generate(PORTRAIT, (audio, 16000), condition_source=PORTRAIT).frames
    np.testing.assert_array_equal(plain, same)


# ------------------------------------------------------------------ N_d


def test_n_d_limits_a_video_source_as_the_release_registers_n_d_frames(pipe, avatar, audio) -> None:
    video = np.repeat(avatar.frames, 6, axis=0)  # a 6-frame still video
    seen = []
    register = pipe.register

    def spy(source, **kw):
        out = register(source, **kw)
        seen.append(out.num_frames)
        return out

    pipe.register = spy  # type: ignore[method-assign]
    try:
        pipe.generate(video, (audio, 16000), driving_frames=4)
        pipe.generate(video, (audio, 16000))
    finally:
        del pipe.register
    assert seen == [4, 6]


def test_n_d_plans_the_streaming_blinks_as_the_release(pipe, avatar) -> None:
    blink = np.zeros((3, 63), np.float32)
    blink[:, 3 * EYE_KEYPOINTS[0] + 1] = [0.1, 0.2, 0.1]
    stitch = StitchConfig(delta_eye_arr=blink, delta_eye_open_n=5)
    planned = pipe._renderer(
        avatar, pipe.config.replace(stitch=stitch, driving_frames=20), None, None
    )
    unknown = pipe._renderer(avatar, pipe.config.replace(stitch=stitch), None, None)
    # release: delta_eye_idx_list over N_d frames (3000 when N_d = -1), indexed idx % len.
    assert planned.stitcher.blink_index.tolist() == blink_schedule(20, 3, 5)
    assert unknown.stitcher.blink_index.tolist() == blink_schedule(3000, 3, 5)
    x_s = {k: torch.from_numpy(v) for k, v in avatar.x_s_info_at(0).items()}
    x_d = {k: v.repeat(3, 1) for k, v in x_s.items()}
    a = planned.stitcher.driving_info(x_s, x_d, 21)[0]["exp"]  # frames 21-23
    b = unknown.stitcher.driving_info(x_s, x_d, 21)[0]["exp"]
    assert not torch.allclose(a, b)  # 21 % 20 = frame 1 (open) vs a blink at 21
    # Offline the audio's length plans the blinks whatever N_d says (the release's setup_Nd).
    offline = pipe._renderer(
        avatar, pipe.config.replace(stitch=stitch, driving_frames=20), 40, None
    )
    assert offline.stitcher.blink_index.tolist() == blink_schedule(40, 3, 5)


# ------------------------------------------------------------------ retargeting sliders


@pytest.fixture(scope="module")
def retargeting_file(tmp_path_factory) -> Path:
    root = build_tiny_liveportrait(tmp_path_factory.mktemp("lp"), seed=3)
    return (
        root / "pretrained_weights/liveportrait/retargeting_models/stitching_retargeting_module.pth"
    )


class _Recorder(torch.nn.Module):
    """The warp network, recording the driving keypoints it is given."""

    def __init__(self, warp: torch.nn.Module) -> None:
        super().__init__()
        self.warp, self.kp_d = warp, []

    def forward(self, f_s, x_s, x_d):
        self.kp_d.append(x_d.detach().clone())
        return self.warp(f_s, x_s, x_d)


def changed_keypoints(a: torch.Tensor, b: torch.Tensor) -> set[int]:
    return set(torch.nonzero((a - b).abs().amax(dim=(0, 2)) > 1e-7).flatten().tolist())


@pytest.mark.parametrize(
    ("slider", "region"),
    [("eye_open_retarget", EYE_KEYPOINTS), ("lip_open_retarget", LIP_KEYPOINTS)],
)
def test_retargeting_sliders_change_only_their_keypoints_of_ditto_output(
    pipe, avatar, audio, retargeting_file, slider, region
) -> None:
    recorder = _Recorder(pipe.models.warp_network)
    warp = pipe.models.warp_network
    pipe.models.warp_network = recorder
    try:
        # runtime torch: the pipeline looks the (recording) module up for every batch
        common = {
            "stitch": StitchConfig(flag_stitching=False),
            "retargeting": retargeting_file,
            "runtime": "torch",
        }
        plain = pipe.generate(avatar, (audio, 16000), **common).frames
        kp_plain = torch.cat(recorder.kp_d)
        recorder.kp_d.clear()
        moved = pipe.generate(avatar, (audio, 16000), **common, **{slider: 0.0}).frames
        kp_moved = torch.cat(recorder.kp_d)
    finally:
        pipe.models.warp_network = warp
    assert changed_keypoints(kp_plain, kp_moved) == set(region)
    assert not np.array_equal(plain, moved)  # and the video shows it


def test_retargeting_with_stitching_runs_before_the_stitching_network(
    pipe, avatar, audio, retargeting_file
) -> None:
    plain = pipe.generate(avatar, (audio, 16000)).frames
    unset = pipe.generate(avatar, (audio, 16000), retargeting=retargeting_file).frames
    np.testing.assert_array_equal(plain, unset)  # the file alone changes nothing
    opened = pipe.generate(
        avatar, (audio, 16000), retargeting=retargeting_file, lip_open_retarget=0.8
    ).frames
    assert opened.shape == plain.shape and not np.array_equal(plain, opened)


def test_dataclass_replace_keeps_condition_source(avatar) -> None:
    cfg = DittoConfig(condition_source=avatar)
    assert isinstance(dataclasses.replace(cfg, steps=3).condition_source, ConditionSource)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--eye-open", "0.3"], "--retargeting"),
        (["--retargeting", "/nonexistent/r.pth", "--lip-open", "0.5"], "not found"),
        (["--retargeting", "{lp}", "--lip-open", "7"], "close ratio"),
    ],
)
def test_cli_retargeting_errors_are_one_line_before_any_model(
    args, needle, retargeting_file, tmp_path, monkeypatch, capsys
) -> None:
    from _cli_in_process import run_cli

    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA_DIR}")
    args = [a.replace("{lp}", str(retargeting_file)) for a in args]
    out = tmp_path / "out.mp4"
    # In this process (the refusal comes before any model); the hub stays offline here too.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    env = {"TALKINGHEAD_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = run_cli(
        ["generate", "-s", str(PORTRAIT), "-a", str(SPEECH), "-o", str(out), *args],
        monkeypatch, capsys, env,
    )  # fmt: skip
    assert proc.returncode != 0
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
