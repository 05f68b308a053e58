from __future__ import annotations

import pytest
import torch

from talkinghead.models import load_official, save_official
from talkinghead.models.appearance_extractor import AppearanceFeatureExtractor

TINY = {
    "block_expansion": 8,
    "max_features": 32,
    "reshape_channel": 4,
    "reshape_depth": 8,
    "num_resblocks": 2,
}


def randomize_batchnorm(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial running statistics and affine terms, so eval-mode BN is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(1 + 0.1 * torch.rand(n, generator=gen))
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=gen))
                m.bias.copy_(0.02 * torch.randn(n, generator=gen))
    return net.eval()


@pytest.fixture(scope="module")
def official(conformance):
    net = load_official("appearance_extractor", conformance.checkpoint("appearance_extractor"))
    image = torch.from_numpy(conformance.input("appearance_extractor", "image"))
    with torch.no_grad():
        return net, net(image)


@pytest.mark.conformance
@pytest.mark.slow
def test_matches_release(conformance, official):
    _, feature_3d = official
    conformance.check("appearance_extractor", "feature_3d", feature_3d)


@pytest.mark.conformance
def test_state_dict_layout_is_the_release(conformance):
    expected = {
        k: tuple(s)
        for k, s, *_ in conformance.manifest["networks"]["appearance_extractor"]["state_dict"]
    }
    got = {k: tuple(v.shape) for k, v in AppearanceFeatureExtractor().state_dict().items()}
    assert got == expected


@pytest.mark.conformance
@pytest.mark.slow
def test_batch_equals_single_calls(official):
    net, _ = official
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = net(images)
        singles = torch.cat([net(images[i : i + 1]) for i in range(4)])
    assert batched.shape == (4, 32, 16, 8, 8)
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


def test_tiny_configuration_round_trips_through_loader(tmp_path):
    net = randomize_batchnorm(AppearanceFeatureExtractor(**TINY))
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = net(image)
    assert out.shape == (2, 4, 8, 8, 8)
    assert torch.isfinite(out).all()

    path = tmp_path / "appearance_extractor.pth"
    save_official(net, "appearance_extractor", path)
    loaded = load_official("appearance_extractor", path, **TINY)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), out, atol=0, rtol=0)


def test_tiny_batch_equals_single_calls():
    net = randomize_batchnorm(AppearanceFeatureExtractor(**TINY, num_down_blocks=1))
    images = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        batched = net(images)
        singles = torch.cat([net(images[i : i + 1]) for i in range(4)])
    assert batched.shape == (4, 4, 8, 8, 8)
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)


def test_inconsistent_reshape_is_rejected():
    with pytest.raises(ValueError, match="max_features"):
        AppearanceFeatureExtractor(max_features=256, reshape_channel=32, reshape_depth=16)
