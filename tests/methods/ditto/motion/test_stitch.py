"""Motion stitching against a numpy transcription of the release's `MotionStitch`.

`RefStitch` below follows the release's per-frame logic step by step (quirks
included); the stitcher must match it wherever we keep the release's behaviour,
and differ exactly as documented where we do not.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from talkinghead.methods.ditto.motion import (
    EYE_KEYPOINTS,
    LIP_KEYPOINTS,
    MotionStitcher,
    StitchConfig,
    StitchControl,
    blink_schedule,
    dict_to_motion,
)
from talkinghead.models import load_official

pytestmark = pytest.mark.conformance

ATOL = 3e-5

# ----------------------------------------------------------------- the release, in numpy

_LIP = [6, 12, 14, 17, 19, 20]
_EYE = [11, 13, 15, 16, 18]


def ref_degree(p):
    if p.ndim > 1 and p.shape[1] == 66:
        e = np.exp(p - p.max(1, keepdims=True))
        prob = e / e.sum(1, keepdims=True)
        return (prob * np.arange(66, dtype=np.float32)).sum(1) * 3 - 97.5
    return p


def ref_rotation(pitch, yaw, roll):
    x, y, z = (np.asarray(a, np.float32).reshape(-1) / 180 * np.pi for a in (pitch, yaw, roll))
    n = x.shape[0]
    o, zz = np.ones(n, np.float32), np.zeros(n, np.float32)
    rx = np.stack([o, zz, zz, zz, np.cos(x), -np.sin(x), zz, np.sin(x), np.cos(x)], 1)
    ry = np.stack([np.cos(y), zz, np.sin(y), zz, o, zz, -np.sin(y), zz, np.cos(y)], 1)
    rz = np.stack([np.cos(z), -np.sin(z), zz, np.sin(z), np.cos(z), zz, zz, zz, o], 1)
    r = rz.reshape(n, 3, 3) @ ry.reshape(n, 3, 3) @ rx.reshape(n, 3, 3)
    return r.transpose(0, 2, 1)


def ref_transform(info):
    kp = info["kp"]
    bs = kp.shape[0]
    rot = ref_rotation(*(ref_degree(info[k]) for k in ("pitch", "yaw", "roll")))
    out = kp.reshape(bs, 21, 3) @ rot + info["exp"].reshape(bs, 21, 3)
    out = out * info["scale"][..., None]
    out[:, :, :2] += info["t"][:, None, :2]
    return out


def ref_blink_idx(n, blink_n, open_n, rng):
    idx = [0] * n
    if isinstance(open_n, int):
        if open_n < 0:
            return idx
        gaps = [open_n] if open_n > 0 else []
    else:
        gaps = list(open_n)
    start = gaps[0] if gaps else rng.randint(60, 100)
    end = gaps[-1] if gaps else rng.randint(60, 100)
    limit = n - max(end, blink_n)
    cur, j = start, 1
    while cur < limit:
        idx[cur : cur + blink_n] = list(range(blink_n))
        if gaps:
            gap = gaps[j % len(gaps)]
            j += 1
        else:
            gap = rng.randint(60, 100)
        cur = cur + blink_n + gap
    return idx


class RefStitch:
    """The release's MotionStitch (numpy, batch 1 per call), with two test switches:
    `gaze` (False skips the gaze fix) and `gaze_per_frame` (pose reference = this call's source)."""

    def __init__(self, weights, gaze=True, gaze_per_frame=False):
        self.w = weights
        self.gaze = gaze
        self.gaze_per_frame = gaze_per_frame

    def net(self, kp_s, kp_d):
        h = np.concatenate([kp_s.reshape(1, -1), kp_d.reshape(1, -1)], 1)
        for i in range(4):
            h = h @ self.w[f"mlp.{2 * i}.weight"].T + self.w[f"mlp.{2 * i}.bias"]
            if i < 3:
                h = np.maximum(h, 0)
        out = kp_d + h[:, :63].reshape(1, 21, 3)
        out[..., :2] += h[:, 63:65].reshape(1, 1, 2)
        return out

    def setup(
        self,
        N_d=-1,
        use_d_keys=None,
        relative_d=True,
        drive_eye=None,
        delta_eye_arr=None,
        delta_eye_open_n=-1,
        fade_out_keys=("exp",),
        fade_type="",
        flag_stitching=True,
        is_image_flag=True,
        x_s_info=None,
        d0=None,
        overall_ctrl_info=None,
        rng=None,
    ):
        self.is_image = is_image_flag
        if use_d_keys is None:
            use_d_keys = ("exp", "pitch", "yaw", "roll", "t") if is_image_flag else ("exp",)
        self.use_d_keys = use_d_keys
        self.drive_eye = is_image_flag if drive_eye is None else drive_eye
        self.relative_d, self.fade_out_keys = relative_d, fade_out_keys
        self.fade_type, self.flag_stitching = fade_type, flag_stitching
        self.delta_eye_arr = delta_eye_arr
        a1 = np.zeros((21, 3), np.float32)
        a1[_LIP] = 1
        a2 = 0
        if self.drive_eye:
            if delta_eye_arr is None:
                a1[_EYE] = 1
            else:
                a2 = np.zeros((21, 3), np.float32)
                a2[_EYE] = 1
                a2 = a2.reshape(1, -1)
        a1 = a1.reshape(1, -1)
        self.a1, self.a2, self.a3 = a1 * (1 - a2), (1 - a1) + a1 * a2, a2
        if self.drive_eye and delta_eye_arr is not None:
            n = 3000 if N_d == -1 else N_d
            self.blink = ref_blink_idx(n, len(delta_eye_arr), delta_eye_open_n, rng)
        self.pose_s = self.x_s = self.fade_dst = None
        if is_image_flag:
            self.pose_s = [ref_degree(x_s_info["yaw"]).item(), ref_degree(x_s_info["pitch"]).item()]
            self.x_s = ref_transform(x_s_info)
            if fade_type == "s":
                self.fade_dst = copy.deepcopy(x_s_info)
        self.overall = overall_ctrl_info
        self.d0 = d0
        self.idx = 0

    def mix(self, x_s, x_d):
        keys = self.use_d_keys
        if self.d0 is not None:
            w = keys if isinstance(keys, dict) else {}
            x_d = {k: x_s[k] + (v - self.d0[k]) * w.get(k, 1) for k, v in x_d.items()}
        for k, v in x_s.items():
            if k not in x_d or k not in keys:
                x_d[k] = v
        if isinstance(keys, dict) and self.d0 is None:
            for k, a in keys.items():
                x_d[k] *= a  # in place, on the caller's arrays (a release quirk)
        return x_d

    def __call__(self, x_s, x_d, **kw):
        for k, v in (self.overall or {}).items():
            kw.setdefault(k, v)
        if self.relative_d and self.d0 is None:
            self.d0 = copy.deepcopy(x_d)
        x_d = self.mix(x_s, x_d)
        eye = 0
        if self.drive_eye and self.delta_eye_arr is not None:
            eye = self.delta_eye_arr[self.blink[self.idx % len(self.blink)]][None]
        x_d["exp"] = x_d["exp"] * self.a1 + x_s["exp"] * self.a2 + eye * self.a3
        if kw.get("vad_alpha", 1) < 1:
            a = kw["vad_alpha"]
            x_d["exp"] = x_d["exp"] * a + x_s["exp"] * (1 - a)
        for k in ("pitch", "yaw", "roll"):
            if f"delta_{k}" in kw:
                x_d[k] = ref_degree(x_d[k]) + kw[f"delta_{k}"]
        for k in ("pitch", "yaw", "roll"):
            if f"alpha_{k}" in kw:
                x_d[k] = x_d[k] * kw[f"alpha_{k}"]
        if "delta_exp" in kw:
            x_d["exp"] = x_d["exp"] + kw["delta_exp"]
        if self.fade_type == "d0" and self.fade_dst is None:
            self.fade_dst = copy.deepcopy(x_d)
        if "fade_alpha" in kw and self.fade_type in ("d0", "s"):
            a = kw["fade_alpha"]
            if self.fade_type == "s" and self.fade_dst is None:
                dst = copy.deepcopy(x_s)
            else:
                dst = self.fade_dst
            for k in kw.get("fade_out_keys", self.fade_out_keys):
                if k != "kp":
                    x_d[k] = x_d[k] * a + dst[k] * (1 - a)
        if self.drive_eye and self.gaze:
            if self.pose_s is None or self.gaze_per_frame:
                self.pose_s = [ref_degree(x_s["yaw"]).item(), ref_degree(x_s["pitch"]).item()]
            dx = (ref_degree(x_d["yaw"]).item() - self.pose_s[0]) * 0.26
            dy = (ref_degree(x_d["pitch"]).item() - self.pose_s[1]) * 0.28
            e = x_d["exp"]
            e[0, 33] += dx * (0.0007 if dx > 0 else 0.001)
            e[0, 45] += dx * (0.001 if dx > 0 else 0.0007)
            e[0, 34] += dy * -0.001
            e[0, 46] += dy * -0.001
        x_s_kp = self.x_s if self.x_s is not None else ref_transform(x_s)
        x_d_kp = ref_transform(x_d)
        if self.flag_stitching:
            x_d_kp = self.net(x_s_kp, x_d_kp)
        self.idx += 1
        return x_s_kp, x_d_kp


# ----------------------------------------------------------------- fixtures and drivers

N = 8


def _logits(rng, n, centre_deg, spread=4.0):
    bins = (centre_deg + 97.5) / 3
    return (
        -((np.arange(66) - bins) ** 2) / (2 * spread**2) + 0.3 * rng.normal(size=(n, 66))
    ).astype(np.float32)


def make_info(rng, n, with_kp):
    f32 = np.float32
    info = {
        "scale": (1.4 + 0.1 * rng.normal(size=(n, 1))).astype(f32),
        "pitch": _logits(rng, n, rng.uniform(-10, 10)),
        "yaw": _logits(rng, n, rng.uniform(-20, 20)),
        "roll": _logits(rng, n, rng.uniform(-5, 5)),
        "t": (0.05 * rng.normal(size=(n, 3))).astype(f32),
        "exp": (0.03 * rng.normal(size=(n, 63))).astype(f32),
    }
    if with_kp:
        info["kp"] = (0.3 * rng.normal(size=(n, 63))).astype(f32)
    return info


def frames(info):
    n = next(iter(info.values())).shape[0]
    return [{k: v[i : i + 1].copy() for k, v in info.items()} for i in range(n)]


@pytest.fixture(scope="module")
def weights(conformance):
    return {
        k: v.numpy().astype(np.float32) for k, v in conformance.state_dict("stitch_network").items()
    }


@pytest.fixture(scope="module")
def net(conformance):
    return load_official("stitch_network", conformance.checkpoint("stitch_network"))


@pytest.fixture()
def data():
    rng = np.random.default_rng(7)
    return {
        "s_img": make_info(rng, 1, True),
        "s_vid": make_info(rng, N, True),
        "d": make_info(rng, N, False),
        "d0": make_info(rng, 1, False),
    }


def run_ref(weights, x_s, is_image, x_d, ctrl=None, ref_kwargs=None, **setup):
    ref = RefStitch(weights, **(ref_kwargs or {}))
    s_frames = frames(x_s)
    ref.setup(is_image_flag=is_image, x_s_info=s_frames[0], **setup)
    out_s, out_d = [], []
    for i, d in enumerate(frames(x_d)):
        kw = dict(ctrl[i]) if ctrl else {}
        a, b = ref(s_frames[0 if is_image else i], copy.deepcopy(d), **kw)
        out_s.append(a)
        out_d.append(b)
    return np.concatenate(out_s), np.concatenate(out_d)


def run_ours(net, config, x_s, is_image, x_d, ctrl=None, **setup):
    st = MotionStitcher(net, config).setup({k: v[:1] for k, v in x_s.items()}, is_image, **setup)
    with torch.no_grad():
        kp_s, kp_d = st(x_s, x_d, 0, ctrl)
    return kp_s.numpy(), kp_d.numpy()


def assert_match(ours, ref, atol=ATOL):
    np.testing.assert_allclose(ours[0], ref[0], atol=atol, rtol=0)
    np.testing.assert_allclose(ours[1], ref[1], atol=atol, rtol=0)


# ----------------------------------------------------------------- release behaviour kept


@pytest.mark.parametrize("is_image", [True, False])
def test_defaults_match_release(weights, net, data, is_image):
    x_s = data["s_img"] if is_image else data["s_vid"]
    ours = run_ours(net, StitchConfig(), x_s, is_image, data["d"])
    assert ours[0].shape == ours[1].shape == (N, 21, 3)
    assert_match(ours, run_ref(weights, x_s, is_image, data["d"]))


@pytest.mark.parametrize(
    "setup",
    [
        {"relative_d": False},
        {"d0": True},
        {"use_d_keys": {"exp": 0.5, "yaw": 2.0, "t": 1.0}},
        {"use_d_keys": {"exp": 0.5, "yaw": 2.0, "t": 1.0}, "relative_d": False},
        {"use_d_keys": ("exp", "scale", "pitch")},
    ],
    ids=["absolute", "given_d0", "weights", "weights_absolute", "keys"],
)
@pytest.mark.parametrize("is_image", [True, False])
def test_driving_modes_match_release(weights, net, data, setup, is_image):
    x_s = data["s_img"] if is_image else data["s_vid"]
    d0 = data["d0"] if setup.pop("d0", False) else None
    x_d = data["d"]
    before = copy.deepcopy(x_d)
    ours = run_ours(net, StitchConfig(**setup), x_s, is_image, x_d, d0=d0)
    for k in x_d:  # never modified in place (the release scales the caller's arrays)
        np.testing.assert_array_equal(x_d[k], before[k])
    assert_match(ours, run_ref(weights, x_s, is_image, x_d, d0=d0, **setup))


def test_pose_delta_exp_and_vad_controls_match_release(weights, net, data):
    rng = np.random.default_rng(1)
    ctrl = [{} for _ in range(N)]
    ctrl[1] = {"delta_yaw": 12.0}
    ctrl[2] = {"delta_pitch": -7.5, "delta_roll": 3.0, "delta_yaw": 0.0}
    ctrl[3] = {"delta_exp": 0.02}
    ctrl[4] = {"delta_exp": (0.01 * rng.normal(size=63)).astype(np.float32), "vad_alpha": 0.3}
    ctrl[5] = {"vad_alpha": 0.6, "delta_yaw": -20.0, "alpha_yaw": 0.5}  # delta + alpha: degrees
    ctrl[6] = {"delta_roll": 5.0}  # overrides the overall value
    overall = {"delta_roll": -4.0, "delta_pitch": 2.0}
    cfg = StitchConfig(overall=overall)
    for is_image, x_s in ((True, data["s_img"]), (False, data["s_vid"])):
        ours = run_ours(net, cfg, x_s, is_image, data["d"], ctrl)
        ref = run_ref(weights, x_s, is_image, data["d"], ctrl, overall_ctrl_info=overall)
        assert_match(ours, ref)


def test_alpha_scales_degrees_not_logits(weights, net, data):
    """Our alpha_* scale the angle; the release's scale the logits unless a delta is given."""
    x_s, x_d = data["s_img"], data["d"]
    ctrl = [{"alpha_yaw": 0.5, "alpha_pitch": 1.5} for _ in range(N)]
    ctrl[3] = {"alpha_roll": 0.0}
    ctrl[4] = {"alpha_yaw": 0.5, "delta_yaw": 6.0}
    # The release's rule, kept as an option:
    ours_logits = run_ours(net, StitchConfig(pose_alpha="logits"), x_s, True, x_d, ctrl)
    release = run_ref(weights, x_s, True, x_d, ctrl)
    assert_match(ours_logits, release)
    # Ours: what the release computes when a (zero) delta puts the angle in degrees first.
    ours = run_ours(net, StitchConfig(), x_s, True, x_d, ctrl)
    with_zero_delta = [
        {**{f"delta_{k[6:]}": 0.0 for k in c if k.startswith("alpha_")}, **c} for c in ctrl
    ]
    assert_match(ours, run_ref(weights, x_s, True, x_d, with_zero_delta))
    assert np.abs(ours[1] - release[1]).max() > 1e-3
    # Directly: yaw = degrees(mixed) * alpha.
    st = MotionStitcher(net, StitchConfig()).setup(x_s, True)
    info, _ = st.driving_info(x_s, x_d, 0, {"alpha_yaw": 0.5})
    mixed = x_s["yaw"] + x_d["yaw"] - x_d["yaw"][:1]
    np.testing.assert_allclose(info["yaw"].numpy(), ref_degree(mixed) * 0.5, atol=ATOL)


def fade_ctrl(n, fade_in, fade_out):
    """Per-frame fade_alpha as the release's pipelines set them (setup_Nd)."""
    ctrl = [{} for _ in range(n)]
    for i in range(fade_in):
        ctrl[i]["fade_alpha"] = i / fade_in
    lo, hi = n - fade_out - 1, n - 1
    for i in range(lo, n):
        ctrl[i]["fade_alpha"] = max((hi - i) / (hi - lo), 0)
    return ctrl


@pytest.mark.parametrize("fade_type", ["d0", "s"])
@pytest.mark.parametrize("is_image", [True, False])
def test_fade_matches_release(weights, net, data, fade_type, is_image):
    x_s = data["s_img"] if is_image else data["s_vid"]
    ctrl = fade_ctrl(N, 3, 2)
    ctrl[4] = {"fade_alpha": 0.5, "fade_out_keys": ("exp", "t", "scale")}
    cfg = StitchConfig(fade_type=fade_type)
    ours = run_ours(net, cfg, x_s, is_image, data["d"], ctrl)
    ref = run_ref(weights, x_s, is_image, data["d"], ctrl, fade_type=fade_type)
    assert_match(ours, ref)
    assert np.abs(ours[1] - run_ours(net, cfg, x_s, is_image, data["d"])[1]).max() > 1e-4


def test_fade_without_target_is_an_error(weights, net, data):
    """The release ignores fade_alpha with fade_type ''; we refuse it."""
    x_s, x_d = data["s_img"], data["d"]
    ctrl = fade_ctrl(N, 3, 2)
    assert_match(run_ref(weights, x_s, True, x_d, ctrl), run_ref(weights, x_s, True, x_d))
    st = MotionStitcher(net, StitchConfig()).setup(x_s, True)
    with pytest.raises(ValueError, match="fade_type"):
        st(x_s, x_d, 0, ctrl)
    with pytest.raises(ValueError, match="fade_type"):
        StitchConfig(overall={"fade_alpha": 0.5})


def test_pose_fade_blends_degrees(net, data):
    x_s, x_d = data["s_img"], data["d"]
    st = MotionStitcher(net, StitchConfig(fade_type="s", fade_out_keys=("yaw",))).setup(x_s, True)
    info, _ = st.driving_info(x_s, x_d, 0, {"fade_alpha": 0.25, "delta_yaw": 10.0})
    target = ref_degree(x_s["yaw"] + x_d["yaw"] - x_d["yaw"][:1]) + 10.0
    expected = target * 0.25 + ref_degree(x_s["yaw"]) * 0.75
    np.testing.assert_allclose(info["yaw"].numpy(), expected, atol=ATOL)


@pytest.mark.parametrize("open_n", [3, [2, 5, 4]])
def test_blink_insertion_matches_release(weights, net, data, open_n):
    rng = np.random.default_rng(3)
    n, blink_n = 40, 6
    x_d = make_info(rng, n, False)
    blink = (0.02 * rng.normal(size=(blink_n, 63))).astype(np.float32)
    cfg = StitchConfig(delta_eye_arr=blink, delta_eye_open_n=open_n)
    x_s = data["s_img"]
    ours = run_ours(net, cfg, x_s, True, x_d, num_frames=n)
    ref = run_ref(weights, x_s, True, x_d, N_d=n, delta_eye_arr=blink, delta_eye_open_n=open_n)
    assert_match(ours, ref)
    # Eyes are the source's plus the blink frame due, lips are driven.
    st = MotionStitcher(net, replace_cfg(cfg, fix_gaze=False)).setup(x_s, True, num_frames=n)
    info, _ = st.driving_info(x_s, x_d, 0)
    sched = ref_blink_idx(n, blink_n, open_n, None)
    exp = info["exp"].numpy().reshape(n, 21, 3)
    want = x_s["exp"].reshape(1, 21, 3) + blink[sched].reshape(n, 21, 3)
    np.testing.assert_allclose(exp[:, _EYE], want[:, _EYE], atol=1e-6)
    assert any(sched) and sched[-3:] == [0, 0, 0]


def replace_cfg(cfg, **kw):
    from dataclasses import replace

    return replace(cfg, **kw)


def test_blink_schedule_random_gaps_are_reproducible():
    blink_n = 15
    for seed in (0, 1, 2):
        ours = blink_schedule(900, blink_n, 0, random.Random(seed))
        assert ours == ref_blink_idx(900, blink_n, 0, random.Random(seed))
    assert blink_schedule(900, blink_n, 0, random.Random(5)) == blink_schedule(
        900, blink_n, 0, random.Random(5)
    )
    assert blink_schedule(50, blink_n, -1) == [0] * 50
    # Gaps within the release's 60..100 frames.
    sched = blink_schedule(3000, blink_n, 0, random.Random(0))
    starts = [i for i in range(1, 3000) if sched[i] == 1 and sched[i - 1] == 0]
    gaps = np.diff(starts) - blink_n
    assert len(starts) > 20 and gaps.min() >= 60 and gaps.max() <= 100
    # The seed is part of the config: two stitchers plan the same blinks.
    blink = np.zeros((blink_n, 63), np.float32)
    x_s = make_info(np.random.default_rng(0), 1, True)
    a, b = (
        MotionStitcher(
            None,
            StitchConfig(
                delta_eye_arr=blink, delta_eye_open_n=0, blink_seed=9, flag_stitching=False
            ),
        )
        .setup(x_s, True, num_frames=500)
        .blink_index
        for _ in range(2)
    )
    assert torch.equal(a, b)


def test_gaze_fix(weights, net, data):
    x_s, x_d = data["s_img"], data["d"]
    # Off on demand (the release has no switch: it always runs with driven eyes).
    ours = run_ours(net, StitchConfig(fix_gaze=False), x_s, True, x_d)
    assert_match(ours, run_ref(weights, x_s, True, x_d, ref_kwargs={"gaze": False}))
    assert np.abs(ours[1] - run_ours(net, StitchConfig(), x_s, True, x_d)[1]).max() > 1e-5
    # Video with driven eyes: measured against the frame being animated, not frame 0.
    x_v = data["s_vid"]
    ours = run_ours(net, StitchConfig(drive_eye=True), x_v, False, x_d)
    per_frame = run_ref(
        weights, x_v, False, x_d, drive_eye=True, ref_kwargs={"gaze_per_frame": True}
    )
    assert_match(ours, per_frame)
    release = run_ref(weights, x_v, False, x_d, drive_eye=True)
    assert np.abs(ours[1] - release[1]).max() > 1e-6


def test_stitching_off(weights, data):
    x_s, x_d = data["s_img"], data["d"]
    ours = run_ours(None, StitchConfig(flag_stitching=False), x_s, True, x_d)
    assert_match(ours, run_ref(weights, x_s, True, x_d, flag_stitching=False))
    with pytest.raises(ValueError, match="stitch network"):
        MotionStitcher(None, StitchConfig())


@pytest.mark.parametrize("is_image", [True, False])
def test_expression_keypoint_sets(net, data, is_image):
    """Only lips (and, when driven, eyes) take the generated expression."""
    x_s = data["s_img"] if is_image else data["s_vid"]
    x_d = data["d"]
    cfg = StitchConfig(fix_gaze=False)
    st = MotionStitcher(net, cfg).setup({k: v[:1] for k, v in x_s.items()}, is_image)
    info, _ = st.driving_info(x_s, x_d, 0)
    exp = info["exp"].numpy().reshape(N, 21, 3)
    driven = (x_s["exp"] + x_d["exp"] - x_d["exp"][:1]).reshape(-1, 21, 3)
    source = np.broadcast_to(x_s["exp"].reshape(-1, 21, 3), exp.shape)
    keys = set(LIP_KEYPOINTS) | (set(EYE_KEYPOINTS) if is_image else set())
    assert tuple(_LIP) == LIP_KEYPOINTS and tuple(_EYE) == EYE_KEYPOINTS
    for j in range(21):
        want = driven[:, j] if j in keys else source[:, j]
        np.testing.assert_allclose(exp[:, j], want, atol=1e-6, err_msg=f"keypoint {j}")
    if not is_image:  # video: pose, translation and scale are the source frame's
        for k in ("scale", "t"):
            np.testing.assert_array_equal(info[k].numpy(), x_s[k])
        np.testing.assert_allclose(info["yaw"].numpy(), ref_degree(x_s["yaw"]), atol=ATOL)


# ----------------------------------------------------------------- batching


@pytest.mark.parametrize("is_image", [True, False])
def test_batched_equals_per_frame(net, data, is_image):
    rng = np.random.default_rng(4)
    n = 12
    x_s = data["s_img"] if is_image else make_info(rng, n, True)
    x_d = make_info(rng, n, False)
    blink = (0.02 * rng.normal(size=(4, 63))).astype(np.float32)
    cfg = StitchConfig(
        fade_type="d0",
        delta_eye_arr=blink,
        delta_eye_open_n=2,
        drive_eye=True,
        overall={"delta_pitch": 3.0, "alpha_roll": 0.8},
    )
    ctrl = fade_ctrl(n, 3, 3)
    ctrl[5] = {"delta_yaw": -9.0, "delta_exp": 0.01, "vad_alpha": 0.5}
    ctrl[6] = {"fade_alpha": 0.4, "fade_out_keys": ("exp", "pitch")}

    def stitcher():
        return MotionStitcher(net, cfg).setup(
            {k: v[:1] for k, v in x_s.items()}, is_image, num_frames=n
        )

    with torch.no_grad():
        whole = stitcher()(x_s, x_d, 0, ctrl)
        st = stitcher()
        pieces = []
        for lo, hi in ((0, 1), (1, 5), (5, 6), (6, 12)):
            s_part = x_s if is_image else {k: v[lo:hi] for k, v in x_s.items()}
            pieces.append(st(s_part, {k: v[lo:hi] for k, v in x_d.items()}, lo, ctrl[lo:hi]))
        st = stitcher()
        singles = [
            st(
                x_s if is_image else {k: v[i : i + 1] for k, v in x_s.items()},
                {k: v[i : i + 1] for k, v in x_d.items()},
                [i],
                StitchControl(**ctrl[i]),
            )
            for i in range(n)
        ]
    for parts in (pieces, singles):
        for j in range(2):
            torch.testing.assert_close(
                whole[j], torch.cat([p[j] for p in parts]), atol=1e-6, rtol=0
            )


def test_vector_input_and_control_checks(net, data):
    x_s, x_d = data["s_img"], data["d"]
    st = MotionStitcher(net, StitchConfig()).setup(x_s, True)
    with torch.no_grad():
        a = st(x_s, x_d, 0)
        st = MotionStitcher(net, StitchConfig()).setup(x_s, True)
        b = st(x_s, dict_to_motion({k: torch.from_numpy(v) for k, v in x_d.items()}), 0)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="unknown stitch controls"):
        st(x_s, x_d, 0, {"delta_jaw": 1.0})
    with pytest.raises(ValueError, match="per-frame controls"):
        st(x_s, x_d, 0, [{}] * 3)
    with pytest.raises(ValueError, match="fade_out_keys"):
        StitchControl(fade_out_keys=("mouth",))
    with pytest.raises(RuntimeError, match="setup"):
        MotionStitcher(net)(x_s, x_d, 0)
