"""DiT-Head networks: VQGAN, DiT, losses (LPIPS, PatchGAN), RIFE; checkpoints round-trip."""

from __future__ import annotations

import pytest
import torch

from talkinghead.errors import CheckpointError
from talkinghead.methods.dithead.checkpoint import load_checkpoint, save_checkpoint
from talkinghead.methods.dithead.config import DataSettings
from talkinghead.methods.dithead.train import load_lpips
from talkinghead.models.dithead_dit import DiTConfig, DiTHead, sincos_pos_embed_2d
from talkinghead.models.dithead_losses import (
    PatchDiscriminator,
    VQGANLoss,
    VQGANLossConfig,
)
from talkinghead.models.dithead_rife import RIFE, backward_warp
from talkinghead.models.dithead_vqgan import VectorQuantizer, VQGANConfig, VQModel

torch.set_num_threads(1)


def test_vqgan_defaults_are_the_paper_scale_model():
    cfg = VQGANConfig()
    assert cfg.downsample_factor == 4 and cfg.n_embed == 8192 and cfg.embed_dim == 3
    assert cfg.latent_shape(256, 256) == (3, 64, 64)  # DiT-L/2's 32x32 = 1024 tokens


@pytest.mark.parametrize(("ch_mult", "factor"), [((1, 2), 2), ((1, 2, 2), 4), ((1, 1, 2, 2), 8)])
def test_vqgan_downsampling_and_codebook_configurable(ch_mult, factor):
    torch.manual_seed(0)
    vq = VQModel(VQGANConfig.tiny(ch_mult=ch_mult, n_embed=16, embed_dim=2, z_channels=2))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    h = vq.encode(x)
    assert vq.downsample_factor == factor
    assert h.shape == (2, 2, 32 // factor, 32 // factor)
    rec, qloss = vq(x)
    assert rec.shape == x.shape and qloss.ndim == 0
    assert vq.quantize.embedding.weight.shape == (16, 2)
    with pytest.raises(ValueError, match="multiple of f"):
        vq.latent_shape(31, 32)


def test_vector_quantizer_snaps_to_nearest_code_with_straight_through_gradient():
    q = VectorQuantizer(4, 2)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[0.0, 0], [1, 0], [0, 1], [1, 1]]))
    z = torch.tensor([[[[0.9]], [[0.2]]], [[[0.1]], [[0.8]]]], requires_grad=True)  # [2, 2, 1, 1]
    z_q, loss, idx = q(z)
    assert idx.flatten().tolist() == [1, 2]
    assert torch.allclose(z_q.detach().flatten(1), torch.tensor([[1.0, 0], [0, 1]]))
    z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight through
    assert loss > 0


def test_vqgan_decode_quantises_the_latent():
    torch.manual_seed(0)
    vq = VQModel(VQGANConfig.tiny()).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        h = vq.encode(x)
        codes = vq.quantize.codes(h)
        assert torch.allclose(vq.decode(h), vq.decode_codes(codes), atol=1e-4)
        assert torch.allclose(vq.decode(h), vq(x)[0], atol=1e-4)


def test_dit_defaults_are_dit_l_2():
    cfg = DiTConfig()
    assert (cfg.patch_size, cfg.depth, cfg.num_heads, cfg.hidden_size) == (2, 24, 16, 1024)
    assert cfg.in_channels == 9 and cfg.num_patches == 1024 and cfg.audio_dim == 363
    # one full-width block is enough to count: the others are copies of it
    one = DiTHead(DiTConfig(depth=1))
    per_block = sum(p.numel() for p in one.blocks[0].parameters())
    n = sum(p.numel() for p in one.parameters()) + (cfg.depth - 1) * per_block
    assert 380e6 < n < 420e6  # 24 x (self-attn + cross-attn + MLP) at width 1024
    assert DiTConfig.from_preset("DiT-B/2").hidden_size == 768


def test_dit_forward_zero_init_and_conditioning():
    torch.manual_seed(0)
    dit = DiTHead(DiTConfig.tiny())
    z = torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 500])
    audio = torch.randn(2, 363)
    eps = dit(z, t, z, z, audio)
    assert eps.shape == z.shape and torch.count_nonzero(eps) == 0  # zero-initialised output
    torch.nn.init.normal_(dit.out.weight, std=0.1)
    base = dit(z, t, z, z, audio)
    assert not torch.allclose(base, dit(z, t, z, z, torch.randn(2, 363)))  # audio matters
    assert not torch.allclose(base, dit(z, t + 100, z, z, audio))  # timestep matters
    assert not torch.allclose(base, dit(z, t, torch.randn_like(z), z, audio))  # masked latent
    assert not torch.allclose(base, dit(z, t, z, torch.randn_like(z), audio))  # reference
    # batch rows are independent
    assert torch.allclose(dit(z[:1], t[:1], z[:1], z[:1], audio[:1]), base[:1], atol=1e-5)
    with pytest.raises(ValueError, match="363"):
        dit(z, t, z, z, torch.randn(2, 100))


def test_sincos_position_embedding():
    pe = sincos_pos_embed_2d(16, 4)
    assert pe.shape == (16, 16)
    assert len({tuple(row.round(5)) for row in pe}) == 16  # every position distinct


def test_checkpoints_round_trip(tmp_path):
    torch.manual_seed(0)
    data = DataSettings()
    vq = VQModel(VQGANConfig.tiny())
    dit = DiTHead(DiTConfig.tiny())
    torch.nn.init.normal_(dit.out.weight)
    save_checkpoint(tmp_path / "vq.pt", "vq", vq, data=data, step=7, which="full")
    save_checkpoint(tmp_path / "dit.pt", "dit", dit, data=data, latent_scale=2.0)
    vq2, meta = load_checkpoint(tmp_path / "vq.pt", "vq")
    dit2, meta2 = load_checkpoint(tmp_path / "dit.pt", "dit")
    assert meta["step"] == 7 and meta["which"] == "full" and meta["data"] == data
    assert meta2["latent_scale"] == 2.0 and dit2.config == dit.config
    x = torch.rand(1, 3, 32, 32)
    z = torch.randn(1, 3, 8, 8)
    a = torch.randn(1, 363)
    t = torch.tensor([3])
    with torch.no_grad():
        assert torch.equal(vq.eval()(x)[0], vq2(x)[0])
        assert torch.equal(dit.eval()(z, t, z, z, a), dit2(z, t, z, z, a))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt", "vq")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt", "dit")


def test_lpips_loads_torchvision_and_lpips_weight_files(tmp_path):
    torch.manual_seed(0)
    # torchvision's vgg16 layout (conv layers at these indices of `features`) plus a
    # classifier, which is ignored; random values stand in for the ImageNet weights
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    sd = {"classifier.0.weight": torch.zeros(2, 2)}
    for i, cin, cout in zip(convs, chans[:-1], chans[1:], strict=True):
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{i}.bias"] = torch.zeros(cout)
    torch.save(sd, tmp_path / "vgg16.pth")
    lin = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1)
        for i, c in enumerate((64, 128, 256, 512, 512))
    }
    torch.save(lin, tmp_path / "vgg.pth")
    net = load_lpips(tmp_path)
    assert torch.equal(net.net.features[0].weight, sd["features.0.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(net(x, x), torch.zeros(2))
    assert (net(x, y) > 0).all()
    assert not any(p.requires_grad for p in net.parameters())
    # with LPIPS the stage-1 reconstruction loss gains the perceptual term
    plain = VQGANLoss(VQGANLossConfig()).reconstruction(x, y)
    with_p = VQGANLoss(VQGANLossConfig(), perceptual=net).reconstruction(x, y)
    assert float(with_p) == pytest.approx(float(plain + net(x, y).mean()), rel=1e-5)
    (tmp_path / "vgg.pth").unlink()
    with pytest.raises(CheckpointError, match=r"vgg\.pth"):
        load_lpips(tmp_path)


def test_vqgan_loss_modes_and_gan_terms():
    torch.manual_seed(0)
    vq = VQModel(VQGANConfig.tiny())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    rec, qloss = vq(x)
    crit = VQGANLoss(VQGANLossConfig(disc_start=5, disc_layers=2, disc_channels=8))
    loss, logs = crit.generator_loss(x, rec, qloss, step=0, last_layer=vq.last_layer)
    l1 = float((rec - x).abs().mean().detach())
    assert "g" not in logs and logs["rec"] == pytest.approx(l1, rel=1e-5)
    loss, logs = crit.generator_loss(x, rec, qloss, step=5, last_layer=vq.last_layer)
    assert {"g", "g_weight"} <= set(logs) and torch.isfinite(loss)
    loss.backward()
    assert vq.last_layer.grad is not None
    d = crit.discriminator_loss(x, rec)
    assert d.ndim == 0 and torch.isfinite(d)
    l2 = VQGANLoss(VQGANLossConfig(pixel="l2"))
    with torch.no_grad():
        assert float(l2.reconstruction(x, rec)) == pytest.approx(float((rec - x).pow(2).mean()))
    assert PatchDiscriminator(n_layers=2, ndf=8)(x).shape[1] == 1
    with pytest.raises(ValueError):
        VQGANLossConfig(pixel="l3")


def test_rife_loads_the_published_layout_and_interpolates(tmp_path):
    from talkinghead.frames.interpolation import RIFEInterpolator, create_interpolator

    torch.manual_seed(0)
    net = RIFE()
    keys = set(net.state_dict())
    assert {"block0.conv0.0.0.weight", "block_tea.lastconv.weight", "unet.conv.weight"} <= keys
    assert "contextnet.conv4.conv2.1.weight" in keys  # PReLU
    assert net.block0.conv0[0][0].weight.shape == (120, 6, 3, 3)
    # the published file comes from DataParallel: every key starts with "module."
    (tmp_path / "rife").mkdir()
    torch.save(
        {f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "rife" / "flownet.pkl"
    )
    interp = create_interpolator("auto", tmp_path)
    assert isinstance(interp, RIFEInterpolator)
    import numpy as np

    a = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    mid = interp.middle(a, a)
    assert mid.shape == a.shape and mid.dtype == np.uint8
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "rife" / "flownet.pkl")
    with pytest.raises(CheckpointError, match="RIFE"):
        create_interpolator("rife", tmp_path)


def test_backward_warp_shifts_by_the_flow():
    img = torch.arange(16.0).view(1, 1, 4, 4)
    flow = torch.zeros(1, 2, 4, 4)
    flow[:, 0] = 1.0  # sample one pixel to the right
    out = backward_warp(img, flow)
    assert torch.allclose(out[0, 0, :, :3], img[0, 0, :, 1:])
