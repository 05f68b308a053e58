"""SPADE decoder: release numbers, layout, batching, spectral-norm semantics and cache, tiny variants."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from talkinghead.models import load_official, save_official
from talkinghead.models.conv_forms import UpsampledConv
from talkinghead.models.spade_decoder import (
    PolyphaseSPADEDecoder,
    SPADEDecoder,
    SpectralNormConv2d,
    polyphase_decoder,
)

TINY = {
    "block_expansion": 4,
    "max_features": 16,
    "out_channels": 8,
    "spade_hidden": 8,
    "num_middle_blocks": 2,
}


@pytest.fixture(scope="module")
def official(conformance):
    net = load_official("decoder", conformance.checkpoint("decoder"))
    feature = torch.from_numpy(conformance.input("decoder", "feature"))
    with torch.no_grad():
        return net, net(feature)


@pytest.mark.conformance
@pytest.mark.slow
def test_matches_release(conformance, official):
    _, image = official
    conformance.check("decoder", "image", image)
    assert image.min() > 0 and image.max() < 1


@pytest.mark.conformance
@pytest.mark.slow
def test_state_dict_layout_is_the_release(conformance, official):
    net, _ = official
    expected = [
        (k, tuple(s)) for k, s, *_ in conformance.manifest["networks"]["decoder"]["state_dict"]
    ]
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == expected
    assert sum(isinstance(m, SpectralNormConv2d) for m in net.modules()) == 18


@pytest.mark.conformance
@pytest.mark.slow
def test_batch_equals_single_calls(official):
    net, _ = official
    feature = torch.randn(4, 256, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batched = net(feature)
        singles = torch.cat([net(feature[i : i + 1]) for i in range(4)])
    assert batched.shape == (4, 3, 64, 64)
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


def _tiny(seed: int = 0) -> SPADEDecoder:
    torch.manual_seed(seed)
    return SPADEDecoder(**TINY).eval()


def _fresh_copy(net: SPADEDecoder) -> SPADEDecoder:
    """A new module holding `net`'s current state: it has never cached anything."""
    copy = SPADEDecoder(**TINY)
    copy.load_state_dict(net.state_dict())
    return copy.eval()


def test_spectral_norm_conv_matches_torch_legacy_spectral_norm():
    torch.manual_seed(0)
    ref = nn.utils.spectral_norm(nn.Conv2d(4, 6, 3, padding=1))
    ours = SpectralNormConv2d(4, 6, 3, padding=1)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 7, 7)
    for _ in range(3):  # train mode: one power-iteration step per call, updating u and v
        y_ref, y_ours = ref(x), ours(x)
        torch.testing.assert_close(y_ours, y_ref, atol=0, rtol=0)
        torch.testing.assert_close(ours.weight_u, ref.weight_u, atol=0, rtol=0)
        torch.testing.assert_close(ours.weight_v, ref.weight_v, atol=0, rtol=0)
    (y_ref**2).sum().backward()
    (y_ours**2).sum().backward()
    torch.testing.assert_close(ours.weight_orig.grad, ref.weight_orig.grad)
    ref.eval()
    ours.eval()
    u = ours.weight_u.clone()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=0, rtol=0)
        ours(x)
    assert torch.equal(ours.weight_u, u)  # eval never re-estimates sigma


def test_eval_sigma_uses_stored_vectors():
    conv = SpectralNormConv2d(3, 5, 3).eval()
    with torch.no_grad():
        conv.weight_u.copy_(torch.nn.functional.normalize(torch.randn(5), dim=0))
        conv.weight_v.copy_(torch.nn.functional.normalize(torch.randn(27), dim=0))
        sigma = conv.weight_u @ conv.weight_orig.reshape(5, -1) @ conv.weight_v
        torch.testing.assert_close(conv.weight, conv.weight_orig / sigma)


def test_weight_cache_follows_parameter_changes():
    net = _tiny()
    feature = torch.randn(2, 16, 4, 4)
    conv = net.G_middle_0.conv_0
    with torch.no_grad():
        out = net(feature)
        assert conv.weight is conv.weight  # cached in eval mode

        conv.weight_orig.add_(0.3 * torch.randn_like(conv.weight_orig))
        changed = net(feature)
        assert not torch.allclose(changed, out)
        torch.testing.assert_close(changed, _fresh_copy(net)(feature), atol=0, rtol=0)

        net.up_1.conv_s.weight_u.mul_(-1).add_(0.1)
        changed_u = net(feature)
        assert not torch.allclose(changed_u, changed)
        torch.testing.assert_close(changed_u, _fresh_copy(net)(feature), atol=0, rtol=0)

        other = _tiny(seed=1)
        net.load_state_dict(other.state_dict())
        torch.testing.assert_close(net(feature), other(feature), atol=0, rtol=0)

        torch.testing.assert_close(net.double()(feature.double()).float(), other(feature))


def test_gradients_reach_weight_orig_in_eval_mode():
    net = _tiny()
    net(torch.randn(1, 16, 4, 4)).mean().backward()
    grad = net.G_middle_1.conv_1.weight_orig.grad
    assert grad is not None and grad.abs().sum() > 0


def test_cache_filled_in_inference_mode_still_passes_input_gradients():
    net = _tiny().requires_grad_(False)
    with torch.inference_mode():
        net(torch.randn(1, 16, 4, 4))
    feature = torch.randn(1, 16, 8, 8, requires_grad=True)
    net(feature).mean().backward()
    assert feature.grad is not None and feature.grad.abs().sum() > 0

    with torch.inference_mode():  # built under inference_mode: nothing to version, no cache
        fresh = SPADEDecoder(**TINY).eval()
        fresh(torch.randn(1, 16, 4, 4))
    assert fresh.G_middle_0.conv_0._cache is None


def test_training_updates_power_iteration_vectors():
    net = _tiny().train()
    u = net.up_0.conv_0.weight_u.clone()
    net(torch.randn(2, 16, 4, 4)).mean().backward()
    assert not torch.equal(net.up_0.conv_0.weight_u, u)


def test_tiny_configuration_round_trips_through_loader(tmp_path):
    net = _tiny()
    feature = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        out = net(feature)
    assert out.shape == (2, 3, 32, 32)
    assert out.min() > 0 and out.max() < 1

    path = tmp_path / "decoder.pth"
    save_official(net, "decoder", path)
    loaded = load_official("decoder", path, **TINY)
    with torch.no_grad():
        torch.testing.assert_close(loaded(feature), out, atol=0, rtol=0)


def test_tiny_batch_equals_single_calls():
    net = _tiny()
    feature = torch.randn(4, 16, 4, 4)
    with torch.no_grad():
        batched = net(feature)
        singles = torch.cat([net(feature[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


def test_without_pixel_shuffle():
    net = SPADEDecoder(**TINY, upscale=1).eval()
    assert "conv_img.weight" in net.state_dict()
    with torch.no_grad():
        assert net(torch.randn(1, 16, 4, 4)).shape == (1, 3, 16, 16)


def test_polyphase_decoder_gives_the_decoder_output() -> None:
    net = _tiny()
    fast = polyphase_decoder(net)
    assert isinstance(fast, PolyphaseSPADEDecoder)
    assert isinstance(net.up_1.norm_0.mlp_shared, nn.Sequential)  # the original is untouched
    assert isinstance(fast.up_1.norm_0.mlp_shared, UpsampledConv)
    feature = torch.randn(3, 16, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(fast(feature), net(feature), atol=1e-6, rtol=1e-5)


@pytest.mark.conformance
@pytest.mark.slow
def test_polyphase_decoder_with_release_weights(official):
    net, _ = official
    feature = torch.randn(2, 256, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.2
    with torch.no_grad():
        torch.testing.assert_close(polyphase_decoder(net)(feature), net(feature), atol=1e-5, rtol=0)
