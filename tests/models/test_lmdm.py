"""Ditto's motion diffusion model (LMDM): checkpoint layout, official outputs, batching."""

from __future__ import annotations

import copy

import pytest
import torch

from _tiny_release import TINY_LMDM as TINY
from talkinghead.diffusion import DiffusionSchedule
from talkinghead.errors import CheckpointError
from talkinghead.models import load_official, save_official
from talkinghead.models.lmdm import LMDM, LMDMConfig, MotionDecoder


def tiny_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 8, 6, generator=g)
    cond_frame = torch.randn(batch, 6, generator=g)
    cond = torch.randn(batch, 8, 16, generator=g)
    times = torch.randint(0, 1000, (batch,), generator=g)
    return x, cond_frame, cond, times


@pytest.fixture(scope="module")
def lmdm(conformance) -> LMDM:
    return load_official("lmdm", conformance.checkpoint("lmdm"))


@pytest.fixture(scope="module")
def tiny() -> LMDM:
    torch.manual_seed(1)
    return LMDM(**TINY).eval()


def test_default_config_is_the_v04_hubert_release():
    cfg = LMDMConfig()
    assert (cfg.motion_feat_dim, cfg.audio_feat_dim, cfg.seq_frames) == (265, 1103, 80)
    assert (cfg.latent_dim, cfg.ff_size, cfg.num_layers, cfg.num_heads) == (512, 1024, 8, 8)
    assert (cfg.guidance_weight, cfg.n_timestep, cfg.clip_denoised) == (2.0, 1000, False)
    assert LMDM(config=LMDMConfig(**TINY)).config == LMDM(**TINY).config
    with pytest.raises(TypeError, match="unknown LMDM config"):
        LMDM(latent=3)


@pytest.mark.conformance
def test_state_dict_matches_manifest(conformance):
    """Keys, order and shapes of the inner decoder equal the release's (rotary under 11 keys)."""
    net = LMDM()
    expected = [
        (k, shape) for k, shape, *_ in conformance.manifest["networks"]["lmdm"]["state_dict"]
    ]
    got = [(k, list(v.shape)) for k, v in net.model.state_dict().items()]
    assert got == expected
    assert sum(p.numel() for p in net.parameters()) == 47_788_297
    assert [k for k in got if k[0].endswith("rotary.freqs")] and len(
        {
            id(m)
            for name, m in net.model.named_modules(remove_duplicate=False)
            if name.endswith("rotary")
        }
    ) == 1, "one shared rotary module"
    # The diffusion buffers are derived, not part of any checkpoint.
    assert set(net.state_dict()) == {f"model.{k}" for k, _ in expected}
    assert torch.equal(net.alphas_cumprod, DiffusionSchedule.cosine().alphas_cumprod)


@pytest.mark.slow
@pytest.mark.conformance
@pytest.mark.parametrize("case", ["lmdm_t999", "lmdm_t500"])
def test_official_outputs(lmdm, conformance, case):
    x, cond_frame, cond, t = (
        torch.from_numpy(conformance.input(case, n))
        for n in ("x", "cond_frame", "cond", "time_cond")
    )
    with torch.no_grad():
        pred_noise, x_start = lmdm(x, cond_frame, cond, t)
        uncond, conditioned = lmdm.model.guided_branches(x, cond_frame, cond, t)
    conformance.check(case, "pred_noise", pred_noise)
    conformance.check(case, "x_start", x_start)
    # The batched (2B) branches and the separate single-branch passes both match the release.
    conformance.check(case, "uncond", uncond, intermediate=True)
    conformance.check(case, "cond", conditioned, intermediate=True)
    if case == "lmdm_t500":  # the single-branch forward, checked once to keep the test short
        with torch.no_grad():
            conformance.check(
                case, "uncond", lmdm.model(x, cond_frame, cond, t, 1.0), intermediate=True
            )
            conformance.check(
                case, "cond", lmdm.model(x, cond_frame, cond, t, 0.0), intermediate=True
            )


@pytest.mark.conformance
def test_wrong_checkpoint_is_rejected(conformance):
    with pytest.raises(CheckpointError, match="model_state_dict"):
        load_official("lmdm", conformance.checkpoint("stitch_network"), **TINY)


def test_guided_forward_is_the_two_branch_mix(tiny):
    x, cond_frame, cond, t = tiny_inputs(3)
    with torch.no_grad():
        pred_noise, x_start = tiny(x, cond_frame, cond, t)
        uncond = tiny.model(x, cond_frame, cond, t, cond_drop_prob=1.0)
        conditioned = tiny.model(x, cond_frame, cond, t, cond_drop_prob=0.0)
    torch.testing.assert_close(x_start, uncond + (conditioned - uncond) * 2.0, rtol=1e-5, atol=1e-5)
    a = tiny.sqrt_recip1m_alphas_cumprod[t].view(-1, 1, 1)
    b = tiny.sqrt_recipm1_alphas_cumprod[t].view(-1, 1, 1)
    torch.testing.assert_close(pred_noise, a * x - x_start / b)


def test_batch_equals_single_calls(tiny):
    # In float64: this checks that batch rows never mix; float32 kernels chosen per batch
    # size (MKL on AVX-512) already differ by ~7e-5 relative on some machines.
    model = copy.deepcopy(tiny).double()
    x, cond_frame, cond, t = tiny_inputs(2)
    x, cond_frame, cond = x.double(), cond_frame.double(), cond.double()
    with torch.no_grad():
        both = model(x, cond_frame, cond, t)
        singles = [
            model(x[i : i + 1], cond_frame[i : i + 1], cond[i : i + 1], t[i : i + 1])
            for i in range(2)
        ]
    for j in range(2):
        torch.testing.assert_close(
            both[j], torch.cat([s[j] for s in singles]), rtol=1e-5, atol=1e-6
        )


def test_scalar_timestep_broadcasts(tiny):
    x, cond_frame, cond, _ = tiny_inputs(2)
    with torch.no_grad():
        a = tiny(x, cond_frame, cond, torch.tensor([700]))
        b = tiny(x, cond_frame, cond, torch.tensor([700, 700]))
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="timesteps"):
        tiny(x, cond_frame, cond, torch.tensor([1, 2, 3]))


def test_random_condition_dropout_picks_a_branch_per_sample(tiny):
    """Training-time dropout: each sample is exactly its conditional or unconditional branch."""
    x, cond_frame, cond, t = tiny_inputs(8)
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(8, generator=g) < 0.5
    with torch.no_grad():
        mixed = tiny.model(x, cond_frame, cond, t, 0.5, generator=torch.Generator().manual_seed(3))
        explicit = tiny.model(x, cond_frame, cond, t, keep_mask=keep)
        uncond = tiny.model(x, cond_frame, cond, t, 1.0)
        conditioned = tiny.model(x, cond_frame, cond, t, 0.0)
    assert 0 < int(keep.sum()) < 8
    torch.testing.assert_close(mixed, explicit)
    torch.testing.assert_close(mixed, torch.where(keep[:, None, None], conditioned, uncond))


def test_tiny_config_trains_and_round_trips(tiny, tmp_path):
    x, cond_frame, cond, t = tiny_inputs(2)
    model = LMDM(**TINY).train()
    loss = (
        model.model(x, cond_frame, cond, t, keep_mask=torch.tensor([True, False])).square().mean()
    )
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    path = tmp_path / "lmdm_tiny.pth"
    save_official(tiny, "lmdm", path)
    assert set(torch.load(path, weights_only=True)) == {"model_state_dict"}
    loaded = load_official("lmdm", path, **TINY)
    with torch.no_grad():
        for a, b in zip(tiny(x, cond_frame, cond, t), loaded(x, cond_frame, cond, t), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="shape"):
        load_official("lmdm", path, **{**TINY, "audio_feat_dim": 17})


def test_multi_cond_frame_and_clipping_variants():
    net = LMDM(**TINY, multi_cond_frame=True, clip_denoised=True).eval()
    assert net.model.input_projection.in_features == 2 * 6 + 1
    x, _, cond, t = tiny_inputs(2)
    with torch.no_grad():
        _, x_start = net(x, torch.randn(2, 8, 7), cond, t)
    assert x_start.abs().max() <= 1.0


def test_audio_1059_variant_builds():
    """The release's class default (HuBERT 1024 + 35 controls) is another published variant."""
    net = LMDM(audio_feat_dim=1059).eval()
    assert isinstance(net.model, MotionDecoder)
    assert tuple(net.model.cond_projection.weight.shape) == (512, 1059)
    assert tuple(net.model.null_cond_embed.shape) == (1, 80, 512)
