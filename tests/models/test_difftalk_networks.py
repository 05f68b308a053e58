"""DiffTalk's networks: condition encoders (temporal filter), UNet, VQ autoencoder,
schedules, masked DDIM, checkpoints."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from _extras import needs_packages_of
from talkinghead.diffusion import ddim_sample
from talkinghead.diffusion.latent_inpainting import (
    BETA_END,
    BETA_START,
    ddim_sampler,
    difftalk_schedule,
    masked_ddim_sample,
)
from talkinghead.errors import CheckpointError, SettingsError
from talkinghead.methods.difftalk.checkpoint import load_autoencoder, load_ldm, save_component
from talkinghead.models.difftalk_autoencoder import (
    DiffTalkAutoencoder,
    DiffTalkAutoencoderConfig,
    autoencoder_preset,
)
from talkinghead.models.difftalk_conditions import (
    AudioWindowEncoder,
    DiffTalkConditionConfig,
    DiffTalkConditioner,
    TemporalFilter,
)
from talkinghead.models.difftalk_unet import (
    DiffTalkLDM,
    DiffTalkLDMConfig,
    DiffTalkUNet,
    unet_preset,
)

# The UNet and the VQ autoencoder are diffusers blocks (the latent extra); the conditions,
# schedules and samplers are ours and run without it.
NEEDS_DIFFUSERS = needs_packages_of("difftalk")


@pytest.fixture(scope="module")
def tiny_ldm() -> DiffTalkLDM:
    torch.manual_seed(0)
    return DiffTalkLDM(DiffTalkLDMConfig(unet=unet_preset("tiny", sample_size=16))).eval()


def conditions(batch: int, cfg: DiffTalkConditionConfig | None = None, seed=0):
    cfg = cfg or DiffTalkConditionConfig()
    g = torch.Generator().manual_seed(seed)
    audio = torch.rand(
        batch, cfg.smooth_frames, cfg.audio_window, cfg.audio_feature_dim, generator=g
    )
    landmarks = torch.rand(batch, cfg.num_landmarks, 2, generator=g)
    return audio, landmarks


# ---------------------------------------------------------------------------- conditions


def test_condition_defaults_are_the_papers():
    cfg = DiffTalkConditionConfig()
    assert (cfg.audio_window, cfg.smooth_radius, cfg.smooth_frames) == (16, 8, 17)
    assert (cfg.audio_dim, cfg.landmark_dim, cfg.context_dim) == (64, 64, 128)


def test_audio_window_encoder_maps_one_window_to_d_a():
    enc = AudioWindowEncoder(feature_dim=29, window=16, out_dim=64)
    assert enc(torch.rand(5, 16, 29)).shape == (5, 64)
    assert len([m for m in enc.convs if isinstance(m, torch.nn.Conv1d)]) == 4  # 16 -> 1
    with pytest.raises(ValueError, match="power of two"):
        AudioWindowEncoder(window=12)


def test_temporal_filter_is_a_convex_combination_of_the_17_frames():
    torch.manual_seed(0)
    filt = TemporalFilter(dim=64, frames=17, score_channels=32)
    feats = torch.randn(3, 17, 64)
    out = filt(feats)
    assert out.shape == (3, 64)
    w = filt.last_weights
    assert w.shape == (3, 17)
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    assert (w > 0).all()
    torch.testing.assert_close(out, torch.einsum("bt,btd->bd", w, feats))
    # Identical frames: the weighted mean is that frame, whatever the weights.
    same = feats[:, :1].expand(-1, 17, -1)
    torch.testing.assert_close(filt(same), feats[:, 0])
    with pytest.raises(ValueError, match="17 frames"):
        filt(torch.randn(1, 8, 64))


def test_smoothed_audio_depends_on_the_neighbouring_frames():
    torch.manual_seed(0)
    cond = DiffTalkConditioner().eval()
    audio, _ = conditions(1)
    base = cond.audio(audio)
    for k in (0, 8, 16):  # first neighbour, the frame itself, last neighbour
        changed = audio.clone()
        changed[:, k] = torch.rand_like(changed[:, k])
        assert not torch.allclose(cond.audio(changed), base)


def test_conditioner_gives_one_128_token_and_trains_end_to_end():
    torch.manual_seed(0)
    cond = DiffTalkConditioner()
    audio, landmarks = conditions(4)
    ctx = cond(audio, landmarks)
    assert ctx.shape == (4, 1, 128)
    # [a; l]: the first 64 channels depend on audio only, the last 64 on landmarks only.
    ctx2 = cond(audio, torch.rand_like(landmarks))
    torch.testing.assert_close(ctx2[..., :64], ctx[..., :64])
    assert not torch.allclose(ctx2[..., 64:], ctx[..., 64:])
    ctx.square().mean().backward()
    assert all(p.grad is not None for p in cond.parameters())


def test_deepspeech_sized_conditions():
    cfg = DiffTalkConditionConfig(audio_feature_dim=29, smooth_radius=4)
    cond = DiffTalkConditioner(cfg)
    audio, landmarks = conditions(2, cfg)
    assert audio.shape == (2, 9, 16, 29)
    assert cond(audio, landmarks).shape == (2, 1, 128)


# ---------------------------------------------------------------------------- UNet


@NEEDS_DIFFUSERS
def test_release_unet_sizes():
    """The release's talking.yaml UNet, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        ldm = DiffTalkLDM()
    c = ldm.config.unet
    assert c.block_channels == (256, 512, 768, 1024)
    assert (c.num_res_blocks, c.attention_resolutions, c.context_dim) == (2, (8, 4, 2), 128)
    unet = ldm.unet.unet
    assert unet.conv_in.in_channels == 9 and unet.conv_out.out_channels == 3
    kinds = [type(b).__name__ for b in unet.down_blocks]
    assert kinds == ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3
    attn = [m for n, m in unet.named_modules() if n.endswith("attn2")]
    assert attn and all(m.to_k.in_features == 128 for m in attn)
    # 32-channel heads everywhere: heads x 32 = the level's width.
    assert all(m.inner_dim // m.heads == 32 for n, m in unet.named_modules() if n.endswith("attn1"))
    n_params = sum(p.numel() for p in ldm.unet.parameters())
    assert 500e6 < n_params < 560e6, n_params


@NEEDS_DIFFUSERS
def test_tiny_unet_denoises_nine_channels(tiny_ldm):
    audio, landmarks = conditions(2)
    z = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ctx = tiny_ldm.context(audio, landmarks)
        eps = tiny_ldm(z, torch.tensor([0, 999]), z, z, ctx)
    assert eps.shape == (2, 3, 16, 16)
    assert tiny_ldm.unet.unet.conv_in.in_channels == 9


@NEEDS_DIFFUSERS
def test_unet_input_order_is_noisy_masked_reference():
    torch.manual_seed(0)
    unet = DiffTalkUNet(unet_preset("tiny", sample_size=8)).eval()
    a, b, c = (torch.randn(1, 3, 8, 8) for _ in range(3))
    t, ctx = torch.tensor([10]), torch.randn(1, 1, 128)
    with torch.no_grad():
        ref = unet.unet(torch.cat([a, b, c], 1), t, encoder_hidden_states=ctx).sample
        torch.testing.assert_close(unet(a, b, c, t, ctx), ref)


def test_without_diffusers_the_networks_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers raises ImportError
    with pytest.raises(SettingsError, match=r"UNet is built from diffusers.*talkinghead\[latent\]"):
        DiffTalkUNet(unet_preset("tiny"))
    with pytest.raises(SettingsError, match=r"autoencoder is built from diffusers.*\[latent\]"):
        DiffTalkAutoencoder(autoencoder_preset("tiny-f4"))


def test_context_dim_must_match_the_conditions():
    with pytest.raises(ValueError, match="context_dim"):
        DiffTalkLDM(DiffTalkLDMConfig(unet=unet_preset("tiny", context_dim=64)))
    with pytest.raises(ValueError, match="unknown UNet preset"):
        unet_preset("huge")


# ---------------------------------------------------------------------------- autoencoder


@NEEDS_DIFFUSERS
def test_autoencoder_presets_keep_a_64x64x3_latent():
    for name, res in (("f4", 256), ("f8", 512), ("tiny-f4", 256), ("tiny-f8", 512)):
        cfg = autoencoder_preset(name)
        assert (cfg.resolution, cfg.latent_size, cfg.latent_channels) == (res, 64, 3)
    assert DiffTalkAutoencoderConfig() == autoencoder_preset("f4")
    with torch.device("meta"):
        ae = DiffTalkAutoencoder()
    assert ae.vq.quantize.embedding.weight.shape == (8192, 3)
    with pytest.raises(ValueError, match="unknown autoencoder preset"):
        autoencoder_preset("f16")


@NEEDS_DIFFUSERS
@pytest.mark.parametrize("name", ["tiny-f4", "tiny-f8"])
def test_tiny_autoencoder_round_trip_shapes(name):
    torch.manual_seed(0)
    ae = DiffTalkAutoencoder(autoencoder_preset(name)).eval()
    res = ae.config.resolution
    x = torch.rand(1, 3, res, res) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (1, 3, 64, 64)
        assert ae.decode(z).shape == x.shape
        quant, loss = ae.quantize(z)
        assert quant.shape == z.shape and loss.ndim == 0


# ---------------------------------------------------------------------------- checkpoints


@NEEDS_DIFFUSERS
def test_checkpoints_round_trip(tmp_path, tiny_ldm):
    torch.manual_seed(1)
    ae = DiffTalkAutoencoder(autoencoder_preset("tiny-f4", resolution=64)).eval()
    p_ae = save_component(tmp_path / "autoencoder.pt", "autoencoder", ae, ae.config.to_dict())
    p_ldm = save_component(tmp_path / "ldm.pt", "ldm", tiny_ldm, tiny_ldm.config.to_dict(), step=7)
    ae2 = load_autoencoder(p_ae)
    ldm2, extra = load_ldm(p_ldm)
    assert ae2.config == ae.config and ldm2.config == tiny_ldm.config and extra["step"] == 7
    for a, b in ((ae, ae2), (tiny_ldm, ldm2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ae2.decode(ae2.encode(x)), ae.decode(ae.encode(x)))
    with pytest.raises(CheckpointError, match="not the ldm"):
        load_ldm(p_ae)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_autoencoder(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_autoencoder(tmp_path / "missing.pt")


@NEEDS_DIFFUSERS
def test_checkpoint_with_other_sizes_is_rejected(tmp_path, tiny_ldm):
    path = save_component(tmp_path / "ldm.pt", "ldm", tiny_ldm, tiny_ldm.config.to_dict())
    payload = torch.load(path, weights_only=True)
    payload["config"]["unet"]["base_channels"] = 32
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_ldm(path)


# ---------------------------------------------------------------------------- diffusion


def test_schedules_are_compvis_linear_and_uniform_ddim():
    sched = difftalk_schedule()
    betas = np.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=np.float64) ** 2
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=1e-5)
    ddim = ddim_sampler(200)
    assert ddim.timesteps == list(range(996, 0, -5))
    # The last step lands on alpha_bar[0] (CompVis), not on the clean sample.
    assert ddim.time_pairs[-1] == (1, 0)
    assert float(ddim.coefficients.alpha_next_sqrt[-1]) == pytest.approx(
        float(sched.alphas_cumprod[0]) ** 0.5
    )


def _diffusers(kind: str):
    """The reference: diffusers' scheduler with DiffTalk's settings (what DiffTalk used before)."""
    diffusers = pytest.importorskip("diffusers")
    common = dict(
        num_train_timesteps=1000,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )
    if kind == "ddpm":
        return diffusers.DDPMScheduler(**common)
    return diffusers.DDIMScheduler(
        **common, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"
    )


def test_schedule_and_noising_equal_diffusers():
    ref, ours = _diffusers("ddpm"), difftalk_schedule()
    assert torch.equal(ours.betas, ref.betas)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    z, noise = torch.randn(2, 1000, 3, 2, 2, generator=g)
    t = torch.arange(1000)
    expected = ref.add_noise(z, noise, t)
    torch.testing.assert_close(ours.q_sample(z, t, noise), expected, rtol=0, atol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 10, 200])
def test_each_ddim_step_equals_diffusers(steps, eta):
    """Same timesteps; from the same x_t, eps (and noise), the same x_{t-1} to 1e-6."""
    ref = _diffusers("ddim")
    ref.set_timesteps(steps)
    sampler = ddim_sampler(steps, eta)
    assert sampler.timesteps == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(steps)
    for t, t_prev in sampler.time_pairs:
        x, eps, z = torch.randn(3, 2, 3, 8, 8, generator=g)
        ours = ddim_sample(
            lambda x_t, tt, eps=eps: eps,
            x,
            schedule=sampler.schedule,
            time_pairs=[(t, t_prev)],
            prediction="epsilon",
            eta=eta,
            step_noise=[z],
        )
        expected = ref.step(eps, t, x, eta=eta, variance_noise=z if eta > 0 else None)
        torch.testing.assert_close(ours, expected.prev_sample, rtol=0, atol=1e-6)


def test_deterministic_ddim_trajectory_equals_diffusers():
    """The whole 200-step eta = 0 chain (a model in the loop) matches diffusers' to 1e-6."""
    ref = _diffusers("ddim")
    ref.set_timesteps(200)
    w = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))

    def eps_fn(x, t):
        return torch.tanh(torch.einsum("ij,bjhw->bihw", w, x)) * (0.3 + t.view(-1, 1, 1, 1) / 1000)

    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    x = x_T
    for t in ref.timesteps:
        tt = torch.full((1,), int(t), dtype=torch.long)
        x = ref.step(eps_fn(x, tt), int(t), x).prev_sample
    ours = ddim_sampler(200).sample(eps_fn, x_T.shape, x_T=x_T)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-6)


def test_masked_ddim_is_deterministic_and_keeps_the_known_region():
    torch.manual_seed(0)
    known = torch.randn(1, 3, 8, 8)
    keep = torch.ones(1, 1, 8, 8)
    keep[..., 4:, 2:6] = 0
    w = torch.randn(3, 3)

    def eps(x, t):
        return torch.einsum("ij,bjhw->bihw", w, x) * 0.1

    def run(seed, eta=0.0):
        g = torch.Generator().manual_seed(seed)
        return masked_ddim_sample(eps, known, keep, steps=10, generator=g, eta=eta)

    a, b, c = run(0), run(0), run(1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    stochastic = run(0, eta=1.0)
    torch.testing.assert_close(stochastic, run(0, eta=1.0), rtol=0, atol=0)
    assert not torch.allclose(stochastic, a)
    torch.testing.assert_close(a * keep, known * keep)
    assert not torch.allclose(a * (1 - keep), known * (1 - keep))
