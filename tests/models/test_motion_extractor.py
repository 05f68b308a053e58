"""Motion extractor (ConvNeXt-V2-tiny + heads): release numbers, layout, batching, tiny variants."""

from __future__ import annotations

import pytest
import torch

from talkinghead.models import load_official, save_official
from talkinghead.models.convnextv2 import ConvNeXtV2Config, LayerNorm2d
from talkinghead.models.motion_extractor import MotionExtractor

OUTPUT_NAMES = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
TINY = {
    "num_kp": 5,
    "num_bins": 7,
    "backbone": ConvNeXtV2Config(depths=(1, 1, 2, 1), dims=(8, 16, 16, 24)),
}


@pytest.fixture(scope="module")
def official(conformance):
    net = load_official("motion_extractor", conformance.checkpoint("motion_extractor"))
    image = torch.from_numpy(conformance.input("motion_extractor", "image"))
    with torch.no_grad():
        return net, net(image)


@pytest.mark.conformance
@pytest.mark.slow
def test_matches_release(conformance, official):
    _, outputs = official
    assert len(outputs) == len(OUTPUT_NAMES)
    for name, value in zip(OUTPUT_NAMES, outputs, strict=True):
        conformance.check("motion_extractor", name, value)


@pytest.mark.conformance
@pytest.mark.slow
def test_state_dict_layout_is_the_release(conformance, official):
    net, _ = official
    expected = [
        (k, tuple(s))
        for k, s, *_ in conformance.manifest["networks"]["motion_extractor"]["state_dict"]
    ]
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == expected


@pytest.mark.conformance
@pytest.mark.slow
def test_batch_equals_single_calls(official):
    net, _ = official
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = net(images)
        singles = [net(images[i : i + 1]) for i in range(4)]
    expected_shapes = [(4, 66), (4, 66), (4, 66), (4, 3), (4, 63), (4, 1), (4, 63)]
    assert [tuple(o.shape) for o in batched] == expected_shapes
    for i, out in enumerate(batched):
        torch.testing.assert_close(out, torch.cat([s[i] for s in singles]), atol=1e-5, rtol=1e-5)


def test_layernorm2d_is_a_channel_layernorm():
    norm = LayerNorm2d(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 6, 5, 4) * 3 + 1
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, 1e-6)
    torch.testing.assert_close(norm(x), ref.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)


def test_tiny_configuration_round_trips_through_loader(tmp_path):
    net = MotionExtractor(**TINY).eval()
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = net(image)
    assert [tuple(o.shape) for o in out] == [
        (2, 7),
        (2, 7),
        (2, 7),
        (2, 3),
        (2, 15),
        (2, 1),
        (2, 15),
    ]
    assert all(torch.isfinite(o).all() for o in out)

    path = tmp_path / "motion_extractor.pth"
    save_official(net, "motion_extractor", path)
    loaded = load_official("motion_extractor", path, **TINY)
    with torch.no_grad():
        for a, b in zip(loaded(image), out, strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_tiny_batch_equals_single_calls():
    net = MotionExtractor(**TINY).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        batched = net(images)
        singles = [net(images[i : i + 1]) for i in range(4)]
    for i, out in enumerate(batched):
        torch.testing.assert_close(out, torch.cat([s[i] for s in singles]), atol=1e-5, rtol=1e-5)


def test_drop_path_only_acts_in_training():
    cfg = ConvNeXtV2Config(depths=(1, 1), dims=(8, 16), drop_path_rate=0.5)
    net = MotionExtractor(num_kp=2, backbone=cfg)
    image = torch.rand(8, 3, 32, 32)
    net.train()
    net(image)[0].sum().backward()  # stochastic depth is differentiable
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(image)[6], net(image)[6], atol=0, rtol=0)


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="convnextv2_tiny"):
        MotionExtractor(backbone="resnet50")
