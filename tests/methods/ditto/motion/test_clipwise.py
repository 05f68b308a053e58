"""Clip-wise motion generation against hand-computed values and a restatement of the release."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkinghead.methods.ditto.motion import (
    MOTION_DIM,
    POSE_DIMS,
    ClipwiseConfig,
    ClipwiseGenerator,
    clip_motion,
    cross_fade,
    fuse_weights,
    moving_average,
)

S, D, C = 80, MOTION_DIM, 5

# ---------------------------------------------------------------------------- stand-in samplers


class ConstantSampler:
    """Window k is the constant k everywhere: fused values read off the cross-fade weights."""

    def __init__(self) -> None:
        self.calls = 0
        self.cond_frames: list[torch.Tensor] = []

    def __call__(self, cond_frame, cond, generator):
        self.cond_frames.append(cond_frame.clone())
        out = torch.full((cond.shape[0], cond.shape[1], D), float(self.calls))
        self.calls += 1
        return out


_W = torch.linspace(-1.0, 1.0, D)


class AffineSampler:
    """Deterministic, per-sample: depends on the conditioning frame and on every condition row."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, cond_frame, cond, generator):
        self.calls += 1
        t = torch.arange(cond.shape[1], dtype=cond.dtype)[None, :, None]
        return 0.5 * cond_frame[:, None, :] + cond[..., :1] * _W + cond[..., 1:2] + 0.01 * t


class NoisySampler(AffineSampler):
    """AffineSampler plus noise from the generator, like a diffusion sampler."""

    def __call__(self, cond_frame, cond, generator):
        out = super().__call__(cond_frame, cond, generator)
        return out + 0.1 * torch.randn(out.shape, generator=generator)


def _feats(n: int, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, C) if batch is None else (batch, n, C)
    return torch.randn(shape, generator=g)


def _source(seed: int = 1) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(seed))


def _stream(gen: ClipwiseGenerator, feats: torch.Tensor, chunk: int) -> torch.Tensor:
    n = feats.shape[-2]
    outs, received, emitted = [], 0, 0
    for i in range(0, n, chunk):
        part = feats[..., i : i + chunk, :]
        out = gen.push(part)
        received += part.shape[-2]
        emitted += out.shape[-2]
        assert emitted <= received
        outs.append(out)
    outs.append(gen.flush())
    return torch.cat(outs, -2)


# ---------------------------------------------------------------------------- release restated


def _release_smooth(res, s, e, k=3):
    if k <= 1:
        return res
    snap, n, h = res.copy(), res.shape[1], k // 2
    for i in range(s, e):
        res[:, i, :202] = snap[:, max(0, i - h) : min(n, i + h + 1), :202].mean(1)
    return res


class _ReleaseWindows:
    """Audio2Motion's per-window update (fuse, smooth, next conditioning frame), in numpy."""

    def __init__(self, sampler, source, overlap, online, fix=0, fix_dim=None, k=3):
        self.sampler, self.src, self.ov, self.k = sampler, source.numpy()[None], overlap, k
        self.valid = S - overlap
        self.fuse = min(overlap, self.valid) if online else overlap
        self.alpha = np.arange(self.fuse, dtype=np.float32).reshape(1, -1, 1) / max(self.fuse, 1)
        self.fix, self.fix_dim, self.cond, self.clip, self.res = (
            fix,
            fix_dim,
            self.src.copy(),
            0,
            None,
        )

    def __call__(self, cond):
        pred = self.sampler(torch.from_numpy(self.cond), torch.from_numpy(cond), None).numpy()
        if self.res is None:
            self.res = _release_smooth(pred.copy(), 0, S, self.k)
        else:
            a = self.res.shape[1] - self.fuse
            b = S - self.valid - self.fuse
            self.res[:, a:] = (
                self.res[:, a:] * (1 - self.alpha) + pred[:, b : b + self.fuse] * self.alpha
            )
            self.res = np.concatenate([self.res, pred[:, b + self.fuse :]], 1)
            n = self.res.shape[1]
            self.res = _release_smooth(
                self.res, n - self.valid - self.fuse, n - self.valid + 1, self.k
            )
        self.clip += 1
        last = self.res[:, self.res.shape[1] - self.ov - 1]
        if self.fix > 0 and self.clip % self.fix == 0:
            self.cond = self.src.copy()
            if self.fix_dim is not None:
                self.cond[:, self.fix_dim[0] : self.fix_dim[1]] = last[
                    :, self.fix_dim[0] : self.fix_dim[1]
                ]
        else:
            self.cond = last
        return self.res


def _pad(seg):
    if seg.shape[0] < S:
        seg = np.concatenate([seg, np.repeat(seg[-1:], S - seg.shape[0], 0)], 0)
    return seg[None]


def release_offline(sampler, source, feats, overlap=10, online=False, **kw):
    """The offline driver: windows while the start is before the end, then smooth everything."""
    feats = feats.numpy()
    w, idx, n = _ReleaseWindows(sampler, source, overlap, online=online, **kw), 0, feats.shape[0]
    while idx < n:
        res = w(_pad(feats[idx : idx + S]))
        idx += w.valid
    return _release_smooth(res[:, :n], 0, n, w.k)[0]


def release_online(sampler, source, feats_with_prefix, overlap=70):
    """The streaming worker's output (all chunks at once; chunking does not change it)."""
    feats = feats_with_prefix.numpy()
    w, local, start, out = _ReleaseWindows(sampler, source, overlap, online=True), 0, None, []
    while local < feats.shape[0]:
        seg = feats[local : local + S]
        real = w.valid if seg.shape[0] == S else seg.shape[0]
        res = w(_pad(seg))
        if start is None:
            start = res.shape[1] - w.fuse
        else:
            out.append(res[0, start : start + real])
            start += real
        local += real
    return np.concatenate(out, 0) if out else np.zeros((0, D), np.float32)


# ---------------------------------------------------------------------------- primitives


def test_fuse_weights_and_cross_fade():
    assert fuse_weights(4).tolist() == [0.0, 0.25, 0.5, 0.75]
    old = torch.zeros(1, 4, 2)
    new = torch.full((1, 4, 2), 8.0)
    assert cross_fade(old, new)[0, :, 0].tolist() == [0.0, 2.0, 4.0, 6.0]
    assert cross_fade(old[:, :0], new[:, :0]).shape == (1, 0, 2)


def test_moving_average_by_hand():
    x = torch.tensor([0.0, 3.0, 6.0, 0.0, 3.0])
    seq = torch.stack([x, x], -1)[None]  # dim 0 smoothed, dim 1 not
    full = moving_average(seq, 0, 5, kernel=3, dims=1)
    assert full[0, :, 0].tolist() == [1.5, 3.0, 3.0, 3.0, 1.5]
    assert torch.equal(full[0, :, 1], x)
    part = moving_average(seq, 1, 3, kernel=3, dims=1)
    assert part[0, :, 0].tolist() == [0.0, 3.0, 3.0, 0.0, 3.0]  # reads the input, not results
    assert torch.equal(moving_average(seq, 0, 5, kernel=1, dims=1), seq)
    k5 = moving_average(seq, 0, 5, kernel=5, dims=1)
    assert k5[0, :, 0].tolist() == pytest.approx([3.0, 2.25, 2.4, 3.0, 3.0])
    assert torch.equal(seq[0, :, 0], x)  # input untouched


def test_clip_motion():
    m = torch.tensor([[[-2.0, 0.5, 9.0]]])
    rng = torch.tensor([[-1.0, 0.0, 0.0], [1.0, 1.0, 3.0]])
    assert clip_motion(m, rng).tolist() == [[[-1.0, 0.5, 3.0]]]
    assert clip_motion(m, None) is m


def test_config_defaults_and_validation():
    cfg = ClipwiseConfig()
    assert (cfg.seq_frames, cfg.overlap, cfg.valid, cfg.fuse_length) == (80, 10, 70, 10)
    assert (cfg.smooth_kernel, cfg.smooth_dims, cfg.final_smoothing) == (3, 202, True)
    on = ClipwiseConfig.release_online()
    assert (on.overlap, on.fuse_length, on.final_smoothing, on.single_padded_window) == (
        70,
        10,
        False,
        True,
    )
    assert ClipwiseConfig.release_online(overlap=10).fuse_length == 10
    assert [cfg.num_windows(n) for n in (0, 1, 70, 71, 80, 81, 200, 237)] == [
        0,
        1,
        1,
        2,
        2,
        2,
        3,
        4,
    ]
    assert [on.num_windows(n) for n in (1, 79, 80, 81, 270)] == [1, 1, 2, 2, 21]
    with pytest.raises(ValueError):
        ClipwiseConfig(overlap=80)
    with pytest.raises(ValueError):
        ClipwiseConfig(overlap=-1)
    with pytest.raises(ValueError):
        ClipwiseConfig(fuse="both")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- hand-checked runs


def test_offline_cross_fade_by_hand():
    sampler = ConstantSampler()
    cfg = ClipwiseConfig(smooth_kernel=1)
    out = ClipwiseGenerator(sampler, torch.zeros(D), cfg).generate(torch.zeros(150, C))
    assert sampler.calls == 3  # windows at 0, 70, 140
    j = torch.arange(10) / 10
    expect = torch.cat([torch.zeros(70), j, torch.ones(60), 1 + j])
    assert torch.allclose(out[:, 0], expect)
    assert torch.allclose(out[:, -1], expect)  # exp dims fuse the same way


def test_online_fuse_by_hand():
    """Overlap 70: only the last 10 overlap frames are faded; each window adds 10 frames."""
    sampler = ConstantSampler()
    cfg = ClipwiseConfig.release_online(smooth_kernel=1)
    out = ClipwiseGenerator(sampler, torch.zeros(D), cfg).generate(torch.zeros(100, C))
    assert sampler.calls == 4  # 0, 10, 20 full; 30 padded, then stop
    j = torch.arange(10) / 10
    expect = torch.cat([torch.zeros(70), j, 1 + j, 2 + j])
    assert torch.allclose(out[:, 0], expect)


def test_window_smoothing_by_hand():
    sampler = ConstantSampler()
    cfg = ClipwiseConfig(final_smoothing=False)
    out = ClipwiseGenerator(sampler, torch.zeros(D), cfg).generate(torch.zeros(150, C))
    pose, exp = out[:, 0], out[:, POSE_DIMS]
    # After window 1 the fused frames 70..79 and frame 80 are averaged with their neighbours.
    assert pose[69].item() == 0.0
    assert pose[70].item() == pytest.approx(0.1 / 3)
    assert pose[79].item() == pytest.approx(0.9)
    assert pose[80].item() == pytest.approx(2.9 / 3)
    assert pose[81].item() == 1.0
    assert pose[149].item() == pytest.approx((1.8 + 1.9 + 2.0) / 3)  # uses the padded frame 150
    assert exp[70].item() == pytest.approx(0.0) and exp[80].item() == 1.0  # exp never smoothed
    # The final pass cuts the window at the sequence end instead.
    fin = ClipwiseGenerator(ConstantSampler(), torch.zeros(D)).generate(torch.zeros(150, C))
    assert fin[149, 0].item() == pytest.approx((pose[148] + pose[149]).item() / 2)
    assert fin[100, 0].item() == 1.0


def test_conditioning_frames_and_reset():
    src = _source()
    sampler = ConstantSampler()
    cfg = ClipwiseConfig(smooth_kernel=1, fix_cond_every=2, fix_cond_keep=(0, 1))
    ClipwiseGenerator(sampler, src, cfg).generate(torch.zeros(300, C))
    conds = sampler.cond_frames
    assert len(conds) == 5
    assert torch.equal(conds[0][0], src)
    assert torch.equal(conds[1][0], torch.zeros(D))  # frame 69 of window 0
    assert torch.equal(conds[2][0, 1:], src[1:])  # reset after window 2 ...
    assert conds[2][0, 0].item() == 1.0  # ... except the kept dims (frame 139 = window 1)
    assert torch.equal(conds[3][0], torch.full((D,), 2.0))
    assert torch.equal(conds[4][0, 1:], src[1:])


# ---------------------------------------------------------------------------- the release


@pytest.mark.parametrize("n", [1, 80, 81, 200, 237])
def test_offline_matches_release(n):
    feats, src, sampler = _feats(n), _source(), AffineSampler()
    ours = ClipwiseGenerator(sampler, src).generate(feats)
    assert ours.shape == (n, D)
    assert sampler.calls == {1: 1, 80: 2, 81: 2, 200: 3, 237: 4}[n]
    ref = release_offline(AffineSampler(), src, feats)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6)


def test_offline_matches_release_with_reset_and_online_fuse():
    feats, src = _feats(237), _source()
    cfg = ClipwiseConfig(overlap=50, fuse="online", fix_cond_every=2, fix_cond_keep=(202, 265))
    ours = ClipwiseGenerator(AffineSampler(), src, cfg).generate(feats)
    ref = release_offline(
        AffineSampler(), src, feats, overlap=50, online=True, fix=2, fix_dim=(202, 265)
    )
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [5, 80, 200, 237])
def test_online_matches_release_worker_up_to_its_extra_frames(n):
    """Release streaming settings: identical frames, but we stop at N (it emits padding too)."""
    feats, src, prefix = _feats(n), _source(), _feats(70, seed=9)
    cfg = ClipwiseConfig.release_online()
    gen = ClipwiseGenerator(AffineSampler(), src, cfg, prefix=prefix)
    ours = gen.generate(feats)
    ref = release_online(AffineSampler(), src, torch.cat([prefix, feats]))
    assert ours.shape == (n, D)
    if n < 10:
        assert ref.shape[0] == 0  # the release emits nothing for a stream inside one window
    else:
        assert ref.shape[0] > n  # and emits motion for the padding at the end
        np.testing.assert_allclose(ours.numpy(), ref[:n], rtol=1e-6, atol=1e-6)
    if n == 200:
        assert ref.shape[0] == 210
    np.testing.assert_allclose(_stream(gen, feats, 7).numpy(), ours.numpy(), rtol=0, atol=0)


def test_release_online_small_overlap_drops_frames_but_ours_does_not():
    feats, src, prefix = _feats(200), _source(), _feats(10, seed=9)
    ref = release_online(AffineSampler(), src, torch.cat([prefix, feats]), overlap=10)
    assert ref.shape[0] < 200 - 50  # the release starts 60 frames late
    gen = ClipwiseGenerator(
        AffineSampler(), src, ClipwiseConfig.release_online(overlap=10), prefix=prefix
    )
    ours = gen.generate(feats)
    assert ours.shape == (200, D)
    assert torch.equal(_stream(gen, feats, 7), ours)


# ---------------------------------------------------------------------------- offline == incremental


@pytest.mark.parametrize("n", [1, 80, 81, 200, 237])
@pytest.mark.parametrize("chunk", [1, 7, 80])
@pytest.mark.parametrize("online", [False, True])
def test_incremental_equals_offline(n, chunk, online):
    feats, src = _feats(n), _source()
    if online:
        cfg, prefix = ClipwiseConfig.release_online(), _feats(70, seed=9)
    else:
        cfg, prefix = ClipwiseConfig(), None
    clip = torch.stack([torch.full((D,), -3.0), torch.full((D,), 3.0)])
    gen = ClipwiseGenerator(NoisySampler(), src, cfg, clip_range=clip, prefix=prefix)
    offline = gen.generate(feats, generator=torch.Generator().manual_seed(5))
    gen.reset(generator=torch.Generator().manual_seed(5))
    streamed = _stream(gen, feats, chunk)
    assert streamed.shape == (n, D)
    assert torch.equal(streamed, offline)


def test_incremental_any_settings_equal_offline():
    feats, src = _feats(237), _source()
    for cfg in (
        ClipwiseConfig(overlap=0),
        ClipwiseConfig(overlap=79, smooth_kernel=5),
        ClipwiseConfig(fuse="online", overlap=60, fix_cond_every=3),
        ClipwiseConfig.release_online(overlap=30, final_smoothing=True),
    ):
        gen = ClipwiseGenerator(AffineSampler(), src, cfg, prefix=_feats(cfg.overlap, seed=3))
        assert torch.equal(_stream(gen, feats, 13), gen.generate(feats)), cfg


def test_streaming_latency():
    src = _source()
    # Release online settings: the first 10 real frames leave once 20 have arrived.
    gen = ClipwiseGenerator(
        AffineSampler(), src, ClipwiseConfig.release_online(), prefix=_feats(70, seed=9)
    )
    feats = _feats(40)
    assert gen.push(feats[:19]).shape == (0, D)
    assert gen.first_frame is not None  # d0, the first prefix frame, before any output
    assert gen.push(feats[19:20]).shape == (10, D)
    assert gen.push(feats[20:30]).shape == (10, D)
    assert gen.pending == 10
    assert gen.flush().shape == (10, D)
    # Offline settings: 80 frames give the 69 frames before the next cross-fade, minus one
    # for the final smoothing.
    gen = ClipwiseGenerator(AffineSampler(), src)
    assert gen.push(_feats(80)).shape == (69, D)
    assert gen.flush().shape == (11, D)


def test_streaming_memory_is_bounded():
    gen = ClipwiseGenerator(AffineSampler(), _source())
    feats = _feats(1500)
    sizes = []
    for i in range(0, 1500, 7):
        gen.push(feats[i : i + 7])
        sizes.append(gen._windows.buf.shape[1] if gen._windows.buf is not None else 0)
        assert gen._feats.shape[1] <= S + 7
    assert max(sizes) <= 4 * S
    assert gen.flush().shape[0] <= 1500


def test_numpy_features():
    feats = _feats(90)
    gen = ClipwiseGenerator(AffineSampler(), _source().numpy())
    assert torch.equal(gen.generate(feats.numpy()), gen.generate(feats))


def test_first_frame_is_reference_motion():
    src, feats, prefix = _source(), _feats(100), _feats(70, seed=9)
    gen = ClipwiseGenerator(AffineSampler(), src, ClipwiseConfig.release_online(), prefix=prefix)
    full = gen.generate(feats, with_prefix=True)
    assert full.shape == (170, D)
    gen.push(feats[:10])
    assert torch.equal(gen.first_frame, full[0])
    gen = ClipwiseGenerator(AffineSampler(), src)
    out = gen.generate(feats)
    gen.push(feats)
    assert torch.equal(gen.first_frame, out[0])
    # A stream shorter than a window: known at flush, and kept after it.
    gen = ClipwiseGenerator(AffineSampler(), src, ClipwiseConfig.release_online(), prefix=prefix)
    gen.push(feats[:5])
    assert gen.first_frame is None
    gen.flush()
    assert torch.equal(gen.first_frame, gen.generate(feats[:5], with_prefix=True)[0])


def test_empty_and_single_frame():
    gen = ClipwiseGenerator(AffineSampler(), _source())
    assert gen.generate(torch.zeros(0, C)).shape == (0, D)
    assert gen.flush().shape == (0, D)
    one = gen.generate(_feats(1))
    assert one.shape == (1, D)
    assert torch.equal(_stream(gen, _feats(1), 1), one)


# ---------------------------------------------------------------------------- batch, generator


def test_batch_equals_single_runs():
    feats = _feats(150, batch=2)
    srcs = torch.stack([_source(1), _source(2)])
    for cfg in (ClipwiseConfig(), ClipwiseConfig.release_online()):
        prefix = _feats(cfg.overlap, seed=4)
        batched = ClipwiseGenerator(AffineSampler(), srcs, cfg, prefix=prefix)
        out = batched.generate(feats)
        assert out.shape == (2, 150, D)
        for b in range(2):
            single = ClipwiseGenerator(AffineSampler(), srcs[b], cfg, prefix=prefix)
            assert torch.allclose(out[b], single.generate(feats[b]), rtol=0, atol=1e-6)
        assert torch.equal(_stream(batched, feats, 7), out)
    shared = ClipwiseGenerator(AffineSampler(), srcs[0]).generate(feats)  # [D] source, batch 2
    assert shared.shape == (2, 150, D)


def test_generator_determinism():
    feats, src = _feats(200), _source()
    gen = ClipwiseGenerator(NoisySampler(), src)

    def run(seed):
        return gen.generate(feats, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_clip_range_applies_to_output():
    feats, src = _feats(150), _source()
    rng = torch.stack([torch.full((D,), -0.2), torch.full((D,), 0.3)])
    free = ClipwiseGenerator(AffineSampler(), src).generate(feats)
    clipped = ClipwiseGenerator(AffineSampler(), src, clip_range=rng).generate(feats)
    assert torch.equal(clipped, free.clamp(-0.2, 0.3))


def test_bad_inputs():
    gen = ClipwiseGenerator(lambda f, c, g: torch.zeros(1, 3, D), _source())
    with pytest.raises(ValueError, match="window sampler"):
        gen.generate(_feats(10))
    gen = ClipwiseGenerator(AffineSampler(), torch.zeros(2, D))
    with pytest.raises(ValueError):
        gen.generate(_feats(10))  # [B, D] source needs [B, N, C] features
    gen = ClipwiseGenerator(AffineSampler(), _source())
    gen.push(_feats(3))
    with pytest.raises(ValueError):
        gen.push(torch.zeros(3, C + 1))


# ---------------------------------------------------------------------------- with the real model


def test_with_tiny_lmdm_and_ddim():
    """The clip-wise generator around a tiny motion model and the DDIM sampler."""
    diffusion = pytest.importorskip("talkinghead.diffusion")
    lmdm = pytest.importorskip("talkinghead.models.lmdm")
    from talkinghead.methods.ditto.motion import ConditionBuilder, ConditionConfig

    cond_cfg = ConditionConfig(audio_dim=16)
    torch.manual_seed(3)
    model = lmdm.LMDM(
        motion_feat_dim=D,
        audio_feat_dim=cond_cfg.dim,
        seq_frames=8,
        latent_dim=32,
        ff_size=64,
        num_layers=2,
        num_heads=2,
    ).eval()
    ddim = diffusion.DDIMSampler(num_steps=2)

    def sample_window(cond_frame, cond, generator):
        return ddim(model, cond_frame, cond, generator=generator)

    builder = ConditionBuilder(
        cond_cfg,
        emotion="Happy",
        eye_open=torch.rand(3, 2),
        eye_ball=torch.rand(3, 6),
        shape_code=torch.randn(21, 3),
    )
    cond = builder(torch.randn(13, 16))
    cfg = ClipwiseConfig(seq_frames=8, overlap=2)
    gen = ClipwiseGenerator(sample_window, _source(), cfg)
    out = gen.generate(cond, generator=torch.Generator().manual_seed(0))
    assert out.shape == (13, D) and torch.isfinite(out).all()
    gen.reset(generator=torch.Generator().manual_seed(0))  # same seed: same motion, streamed
    assert torch.equal(_stream(gen, cond, 5), out)
    batched = gen.generate(torch.stack([cond, cond]), generator=torch.Generator().manual_seed(0))
    assert batched.shape == (2, 13, D)


def test_generate_reports_progress_per_window() -> None:
    cfg = ClipwiseConfig()
    calls: list[tuple[int, int]] = []
    ClipwiseGenerator(ConstantSampler(), _source(), cfg).generate(
        _feats(200), progress=lambda done, total: calls.append((done, total))
    )
    windows = cfg.num_windows(200)
    assert windows > 1 and calls == [(k, windows) for k in range(windows + 1)]


# ---------------------------------------------------------------------------- low latency


@pytest.mark.parametrize(
    ("cfg", "needed"),
    [
        (ClipwiseConfig.release_online(), 20),
        (ClipwiseConfig.low_latency(), 10),
        (ClipwiseConfig.release_online(overlap=75), 10),
        (ClipwiseConfig.low_latency(overlap=75, fuse_frames=4), 5),
        (ClipwiseConfig.release_online(overlap=30, final_smoothing=True), 50),
    ],
)
def test_first_frame_leaves_after_the_documented_feature_count(cfg, needed):
    """Feeding one row at a time, the first frame leaves exactly at `first_frame_features`."""
    assert cfg.first_frame_features() == needed
    gen = ClipwiseGenerator(AffineSampler(), _source(), cfg, prefix=_feats(cfg.overlap, seed=9))
    feats = _feats(needed + 5)
    for i in range(needed - 1):
        assert gen.push(feats[i : i + 1]).shape == (0, D), i
    assert gen.push(feats[needed - 1 : needed]).shape[0] > 0


def test_low_latency_setting_first_frame_within_0_4_s_and_same_window_cost():
    low, release = ClipwiseConfig.low_latency(), ClipwiseConfig.release_online()
    assert low.fuse_length == 5 and low.overlap == release.overlap == 70
    assert low.first_frame_features() / 25 <= 0.4 < release.first_frame_features() / 25
    # The first 5 real frames leave with the 10th feature frame, then 10 per window.
    gen = ClipwiseGenerator(AffineSampler(), _source(), low, prefix=_feats(70, seed=9))
    feats = _feats(40)
    assert gen.push(feats[:9]).shape == (0, D)
    assert gen.push(feats[9:10]).shape == (5, D)
    assert gen.push(feats[10:20]).shape == (10, D)
    assert [low.num_windows(n) for n in (80, 200, 270)] == [
        release.num_windows(n) for n in (80, 200, 270)
    ]


def test_low_latency_fuse_by_hand():
    """A new window fades into only the last 5 frames: weights 0, 1/5, ..., 4/5."""
    cfg = ClipwiseConfig.low_latency(smooth_kernel=1)
    out = ClipwiseGenerator(ConstantSampler(), torch.zeros(D), cfg).generate(torch.zeros(90, C))
    # Window 0 covers 0..79; window 1 (10..89) fades into 75..79, window 2 into 85..89.
    assert torch.all(out[:75] == 0)
    assert torch.allclose(out[75:80, 0], torch.arange(5.0) / 5)
    assert torch.all(out[80:85] == 1)
    assert torch.allclose(out[85:90, 0], 1 + torch.arange(5.0) / 5)


@pytest.mark.parametrize("chunk", [1, 3, 7, 25])
def test_low_latency_incremental_equals_offline(chunk):
    cfg, prefix, feats = ClipwiseConfig.low_latency(), _feats(70, seed=9), _feats(137)
    offline = ClipwiseGenerator(
        NoisySampler(), _source(), cfg, prefix=prefix, generator=torch.Generator().manual_seed(3)
    ).generate(feats)
    gen = ClipwiseGenerator(
        NoisySampler(), _source(), cfg, prefix=prefix, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(_stream(gen, feats, chunk), offline)


def test_fuse_frames_validation():
    with pytest.raises(ValueError, match="fuse_frames"):
        ClipwiseConfig(overlap=10, fuse_frames=11)
    with pytest.raises(ValueError, match="fuse_frames"):
        ClipwiseConfig.low_latency(fuse_frames=-1)
    assert ClipwiseConfig(overlap=10, fuse_frames=0).fuse_length == 0
