"""The control timeline, the release config fields it completes, and the motion-model seam."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from _conformance import MEDIA_DIR, skip_missing
from _tiny_release import build_tiny_release
from talkinghead.errors import SettingsError, TalkingHeadError
from talkinghead.methods.ditto.config import DittoConfig, config_from_release
from talkinghead.methods.ditto.controls import ControlTimeline, load_controls
from talkinghead.methods.ditto.motion import MotionStitcher, StitchConfig, dict_to_motion
from talkinghead.methods.ditto.pipeline import DittoPipeline

PORTRAIT = MEDIA_DIR / "ditto_example_face.jpg"
SPEECH = MEDIA_DIR / "ditto_example_speech.wav"
SETTINGS = {"steps": 2, "seed": 0, "max_size": 256, "batch_size": 4}
RAMP = {"keyframes": [{"frame": 0, "delta_yaw": 0.0}, {"frame": 10, "delta_yaw": 20.0}]}


def _ref_stitch_module():
    """The numpy transcription of the release's MotionStitch kept by the stitcher's tests."""
    path = Path(__file__).parent / "motion" / "test_stitch.py"
    spec = importlib.util.spec_from_file_location("_ref_stitch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------- the timeline itself


def test_keyframes_interpolate_and_hold() -> None:
    t = ControlTimeline.coerce(RAMP)
    yaw = [c.delta_yaw for c in t.stitch_controls(0, 13)]
    assert yaw == [2.0 * i for i in range(11)] + [20.0, 20.0]
    step = ControlTimeline.coerce({**RAMP, "interpolation": "step"})
    assert [c.delta_yaw for c in step.stitch_controls(8, 4)] == [0.0, 0.0, 20.0, 20.0]
    # Seconds at 25 fps; the first value holds before the first keyframe.
    timed = ControlTimeline.coerce({"keyframes": [{"time": 0.4, "alpha_pitch": 0.5}]})
    assert timed.keyframes[0].frame == 10
    assert timed.stitch_controls(0, 1)[0].alpha_pitch == 0.5


def test_release_ctrl_info_is_taken_as_it_is() -> None:
    info = {0: {"delta_yaw": 3.0}, "2": {"fade_alpha": 0.5, "fade_out_keys": ["exp"]}}
    t = ControlTimeline.coerce(info)
    frames = t.stitch_controls(0, 4)
    assert frames[0].delta_yaw == 3.0 and frames[1].delta_yaw is None
    assert frames[2].fade_alpha == 0.5 and frames[2].fade_out_keys == ("exp",)
    assert frames[3] == frames[1]  # no value outside the given frames
    as_list = ControlTimeline.coerce([{"delta_pitch": 1.0}, {}, {"delta_pitch": 2.0}])
    assert [c.delta_pitch for c in as_list.stitch_controls(0, 3)] == [1.0, None, 2.0]


def test_expression_offsets_per_keypoint_and_gaze() -> None:
    t = ControlTimeline.coerce({"keyframes": [{"frame": 0, "delta_exp": {"6": [0, 0.01, 0]}}]})
    exp = t.stitch_controls(0, 1)[0].delta_exp.reshape(21, 3)
    assert exp[6, 1] == pytest.approx(0.01) and exp.abs().sum() == pytest.approx(0.01)
    gaze = ControlTimeline.coerce({"keyframes": [{"frame": 0, "gaze": [10.0, 0.0]}]})
    moved = gaze.stitch_controls(0, 1)[0].delta_exp.nonzero().flatten().tolist()
    assert moved == [33, 45]  # the x of pupil keypoints 11 and 15


def test_files_json_and_yaml(tmp_path) -> None:
    js = tmp_path / "t.json"
    js.write_text(json.dumps(RAMP))
    ym = tmp_path / "t.yaml"
    ym.write_text("keyframes:\n  - {frame: 0, delta_yaw: 0}\n  - {frame: 10, delta_yaw: 20}\n")
    a, b = load_controls(js), load_controls(ym)
    assert [c.delta_yaw for c in a.stitch_controls(0, 11)] == [
        c.delta_yaw for c in b.stitch_controls(0, 11)
    ]
    assert DittoConfig(controls=str(js)).controls.controls == ("delta_yaw",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"keyframes": [{"frame": 0, "delta_yw": 1}]}', "unknown controls"),
        ('{"keyframes": [{"delta_yaw": 1}]}', "exactly one of 'frame' or 'time'"),
        ('{"keyframes": [{"frame": -1, "delta_yaw": 1}]}', "frame index >= 0"),
        ('{"keyframes": [{"frame": 0, "delta_exp": {"30": [0, 0, 0]}}]}', "not in 0..20"),
        ('{"keyframes": [{"frame": 0, "emotion": "Bored"}]}', "unknown emotion"),
        ('{"keyframes": [], "interpolation": "cubic"}', "interpolation must be"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, content, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SettingsError, match=message) as exc:
        load_controls(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(SettingsError, match="file not found"):
        load_controls(tmp_path / "missing.json")


def test_yaw_ramp_equals_per_frame_ctrl_info_through_the_release_stitcher() -> None:
    """The acceptance test: the timeline's frames, stitched in batches, equal the release's
    per-frame stitching of the equivalent ctrl_info."""
    ref = _ref_stitch_module()
    from talkinghead.models.stitching_network import StitchingNetwork

    torch.manual_seed(0)
    net = StitchingNetwork().eval()
    weights = {k: v.numpy().astype(np.float32) for k, v in net.state_dict().items()}
    rng = np.random.default_rng(3)
    n = 13
    x_s, x_d = ref.make_info(rng, 1, True), ref.make_info(rng, n, False)
    ctrl_info = {i: {"delta_yaw": min(2.0 * i, 20.0)} for i in range(n)}
    want = ref.run_ref(weights, x_s, True, x_d, [ctrl_info[i] for i in range(n)])

    timeline = ControlTimeline.coerce(RAMP)
    st = MotionStitcher(net, StitchConfig()).setup(x_s, True)
    got_s, got_d = [], []
    with torch.no_grad():
        for start in range(0, n, 4):  # the renderer's batches
            b = min(4, n - start)
            batch = {k: v[start : start + b] for k, v in x_d.items()}
            kp_s, kp_d = st(x_s, batch, start, timeline.stitch_controls(start, b))
            got_s.append(kp_s.numpy())
            got_d.append(kp_d.numpy())
    np.testing.assert_allclose(np.concatenate(got_s), want[0], atol=ref.ATOL, rtol=0)
    np.testing.assert_allclose(np.concatenate(got_d), want[1], atol=ref.ATOL, rtol=0)


# ----------------------------------------------------------------- release config fields


def test_release_fields_are_imported() -> None:
    cfg = config_from_release(
        {
            "default_kwargs": {
                "fix_kp_cond": 1,
                "fix_kp_cond_dim": [0, 202],
                "smo_k_s": 5,
                "ctrl_info": {3: {"delta_roll": 4.0}},
            }
        }
    )
    assert cfg.fix_kp_cond_dim == (0, 202) and cfg.clipwise(False).fix_cond_keep == (0, 202)
    assert cfg.source_smooth_k == 5
    assert cfg.controls.interpolation == "none"
    assert cfg.controls.stitch_controls(3, 1)[0].delta_roll == 4.0
    with pytest.raises(TalkingHeadError, match="fix_kp_cond_dim"):
        DittoConfig(fix_kp_cond_dim=(5, 2))


# ----------------------------------------------------------------- through the pipeline


class RecordingSampler:
    """A stand-in window sampler: records its inputs, returns the conditioning frame plus a
    fixed function of the conditions (deterministic, one 'step')."""

    def __init__(self, dim: int) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.proj = torch.randn(dim, 265, generator=torch.Generator().manual_seed(1)) * 1e-3

    def __call__(self, cond_frame, cond, generator):
        self.calls.append((cond_frame.clone(), cond.clone()))
        return cond_frame[:, None, :] + cond @ self.proj


class FewStepDenoiser(torch.nn.Module):
    """A stand-in distilled denoiser with the LMDM's signature: x_0 from the condition."""

    seq_frames = 80
    motion_feat_dim = 265

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(dim, 265)
        self.calls = 0

    def forward(self, x, cond_frame, cond, t):
        self.calls += 1
        x0 = cond_frame[:, None, :] + 1e-3 * self.proj(cond)
        return x - x0, x0  # (pred_noise, x_0), as the LMDM


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA_DIR}")
    return build_tiny_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def pipe(release) -> DittoPipeline:
    return DittoPipeline.from_pretrained(release, download=False, cache=True, **SETTINGS)


def _speech(seconds: float) -> tuple[np.ndarray, int]:
    data, sr = sf.read(SPEECH, dtype="float32")
    return data[: int(sr * seconds)], sr


def test_pipeline_timeline_equals_ctrl_info_and_changes_frames(pipe) -> None:
    audio = _speech(0.5)  # 13 frames
    ramp = pipe.generate(PORTRAIT, audio, controls=RAMP).frames
    ctrl_info = {i: {"delta_yaw": min(2.0 * i, 20.0)} for i in range(13)}
    same = pipe.generate(PORTRAIT, audio, controls=ctrl_info).frames
    plain = pipe.generate(PORTRAIT, audio).frames
    assert len(ramp) == 13 and np.array_equal(ramp, same)
    assert np.array_equal(ramp[0], plain[0])  # yaw offset 0 at frame 0
    assert not np.array_equal(ramp[-1], plain[-1])


def test_few_step_denoiser_and_window_sampler_plug_in(release) -> None:
    dim = 16 + 8 + 2 + 6 + 63
    denoiser = FewStepDenoiser(dim)
    few = DittoPipeline.from_pretrained(
        release, download=False, cache=False, motion_denoiser=denoiser, **{**SETTINGS, "steps": 3}
    )
    avatar = few.register(PORTRAIT)
    audio = _speech(0.5)[0]
    from talkinghead.audio.io import to_sample_rate

    pcm = to_sample_rate(audio, sf.info(SPEECH).samplerate, 16000, "speech")
    motion, _ = few.motion(avatar, pcm)
    assert motion.shape == (13, 265) and denoiser.calls == 3  # one window, 3 steps
    sampler = RecordingSampler(dim)
    plugged = DittoPipeline(few.models, few.config, motion_sampler=sampler)
    motion2, _ = plugged.motion(avatar, pcm)
    source = np.asarray(dict_to_motion(avatar.x_s_info_at(0))[0], np.float32)
    window = sampler(torch.as_tensor(source)[None], sampler.calls[0][1], None)[0].numpy()
    # One window, smoothed over the pose dims only: the expression is the sampler's own.
    np.testing.assert_allclose(motion2[:, 202:], window[:13, 202:], atol=1e-6)
    assert len(plugged.generate(avatar, (pcm, 16000)).frames) == 13
    with pytest.raises(TalkingHeadError, match="not both"):
        DittoPipeline(few.models, motion_sampler=sampler, motion_denoiser=denoiser)


def test_emotion_and_eye_open_keyframes_reach_the_conditions(pipe) -> None:
    dim = 16 + 8 + 2 + 6 + 63
    sampler = RecordingSampler(dim)
    plugged = DittoPipeline(pipe.models, pipe.config, motion_sampler=sampler)
    controls = {
        "keyframes": [
            {"frame": 0, "emotion": "Neutral", "eye_open": [0.2, 0.2]},
            {"frame": 12, "emotion": "Happy", "eye_open": [0.8, 0.6]},
        ]
    }
    plugged.generate(PORTRAIT, _speech(0.5), controls=controls)
    cond = sampler.calls[0][1][0]  # [80, C]
    emotion, eye = cond[:13, 16:24], cond[:13, 24:26]
    assert emotion[0, 4] > 0.99 and emotion[12, 3] > 0.99
    assert emotion[6, 3] == pytest.approx(emotion[6, 4].item(), abs=1e-3)  # half way
    np.testing.assert_allclose(eye[12], [0.8, 0.6], atol=1e-6)
    np.testing.assert_allclose(eye[6], [0.5, 0.4], atol=1e-6)


def test_fix_kp_cond_dim_changes_the_conditioned_dims_only(pipe) -> None:
    """The release's _update_kp_cond: at a reset, the source's motion except dims [ds, de),
    which stay the previous window's."""
    dim = 16 + 8 + 2 + 6 + 63
    audio = _speech(3.2)  # 80 frames: two windows
    runs = {}
    for keep in (None, (202, 265)):
        sampler = RecordingSampler(dim)
        plugged = DittoPipeline(pipe.models, pipe.config, motion_sampler=sampler)
        avatar = plugged.register(PORTRAIT)
        from talkinghead.audio.io import to_sample_rate

        pcm = to_sample_rate(audio[0], audio[1], 16000, "speech")
        plugged.motion(avatar, pcm, config=pipe.config.replace(fix_kp_cond=1, fix_kp_cond_dim=keep))
        runs[keep] = [c[0][0] for c in sampler.calls]
    source = runs[None][0]
    assert len(runs[None]) == 2
    torch.testing.assert_close(runs[None][1], source)  # reset to the source entirely
    kept = runs[(202, 265)][1]
    torch.testing.assert_close(kept[:202], source[:202])  # only [202, 265) differs
    assert not torch.allclose(kept[202:], source[202:])


def test_source_smooth_k_smooths_a_video_source(pipe) -> None:
    portrait = np.asarray(Image.open(PORTRAIT).convert("RGB").resize((256, 256)))
    video = np.stack([np.roll(portrait, 4 * i, axis=1) for i in range(4)])
    raw = pipe.register(video, config=pipe.config.replace(source_smooth_k=1))
    smooth = pipe.register(video, config=pipe.config.replace(source_smooth_k=3))
    assert not np.allclose(raw.x_s_info["t"], smooth.x_s_info["t"])
    np.testing.assert_allclose(
        smooth.x_s_info["t"][1], raw.x_s_info["t"][:3].mean(0), rtol=1e-5, atol=1e-6
    )


def test_live_session_controls(pipe) -> None:
    from talkinghead.audio.io import to_sample_rate

    audio, sr = _speech(0.5)
    pcm = to_sample_rate(audio, sr, 16000, "speech")
    plain = pipe.stream(PORTRAIT).frames([pcm])
    plain = list(plain)
    session = pipe.stream(PORTRAIT)
    session.set_controls(copy.deepcopy(RAMP))
    controlled = list(session.frames([pcm]))
    assert len(controlled) == len(plain) == 13
    assert np.array_equal(controlled[0], plain[0])
    assert not np.array_equal(controlled[-1], plain[-1])
