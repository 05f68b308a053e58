from __future__ import annotations

import math

import pytest
import torch

from talkinghead.models import load_official, save_official
from talkinghead.models.conv_forms import TapsFirstConv2d
from talkinghead.models.liveportrait_blocks import PolyphaseUpBlock3d, make_coordinate_grid
from talkinghead.models.warping_network import (
    DenseMotionConfig,
    WarpingNetwork,
    is_inference_form,
    warp_inference_form,
)

TINY_DENSE = DenseMotionConfig(
    block_expansion=8, max_features=32, num_blocks=3, reshape_depth=8, compress=2
)
TINY = {
    "num_kp": 5,
    "block_expansion": 8,
    "max_features": 32,
    "reshape_channel": 4,
    "dense_motion": TINY_DENSE,
}


def tiny_network(seed: int = 0, **overrides) -> WarpingNetwork:
    """A tiny warp whose weights follow the fixture's recipe (fan-in scaled, strong mask gain),
    so the motion mask and occlusion map are far from flat."""
    net = WarpingNetwork(**{**TINY, **overrides})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in net.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            if key.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif key.endswith("running_var"):
                t.copy_(1 + 0.1 * torch.rand(t.shape, generator=gen))
            elif t.ndim == 1:
                base = 1.0 if key.endswith("norm.weight") else 0.0
                t.copy_(base + 0.05 * torch.randn(t.shape, generator=gen))
            else:
                gain = 6.0 if ".mask." in key else 4.0 if ".occlusion." in key else math.sqrt(2)
                fan_in = math.prod(t.shape[1:])
                t.copy_(gain * torch.randn(t.shape, generator=gen) / math.sqrt(fan_in))
    return net.eval()


def tiny_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    feature = 0.4 * torch.randn(batch, 4, 8, 16, 16, generator=gen)
    kp_source = 1.2 * torch.rand(batch, 5, 3, generator=gen) - 0.6
    kp_driving = kp_source + 0.05 * torch.randn(batch, 5, 3, generator=gen)
    return feature, kp_source, kp_driving


@pytest.fixture(scope="module")
def official(conformance):
    net = load_official("warp_network", conformance.checkpoint("warp_network"))
    inputs = [
        torch.from_numpy(conformance.input("warp_network", name))
        for name in ("feature_3d", "kp_source", "kp_driving")
    ]
    with torch.no_grad():
        return net.forward_with_motion(*inputs)


@pytest.mark.conformance
@pytest.mark.slow
def test_matches_release(conformance, official):
    out, motion = official
    conformance.check("warp_network", "out", out)
    for name in ("mask", "deformation", "occlusion_map"):
        conformance.check("warp_network", name, getattr(motion, name), intermediate=True)


@pytest.mark.conformance
def test_state_dict_layout_is_the_release(conformance):
    expected = {
        k: tuple(s) for k, s, *_ in conformance.manifest["networks"]["warp_network"]["state_dict"]
    }
    got = {k: tuple(v.shape) for k, v in WarpingNetwork().state_dict().items()}
    assert got == expected


def test_forward_is_the_release_signature():
    net = tiny_network()
    inputs = tiny_inputs(2)
    with torch.no_grad():
        out = net(*inputs)
        again, motion = net.forward_with_motion(*inputs)
    assert out.shape == (2, 32, 16, 16)
    torch.testing.assert_close(out, again, atol=0, rtol=0)
    assert motion.mask.shape == (2, 6, 8, 16, 16)
    assert motion.deformation.shape == (2, 8, 16, 16, 3)
    assert motion.occlusion_map.shape == (2, 1, 16, 16)
    torch.testing.assert_close(motion.mask.sum(1), torch.ones(2, 8, 16, 16))
    # The synthetic weights must exercise the blend, not a uniform mask.
    assert motion.mask.max() > 0.5


def test_batch_equals_single_calls():
    net = tiny_network()
    inputs = tiny_inputs(4, seed=1)
    with torch.no_grad():
        out, motion = net.forward_with_motion(*inputs)
        singles = [net.forward_with_motion(*(x[i : i + 1] for x in inputs)) for i in range(4)]
    torch.testing.assert_close(out, torch.cat([s[0] for s in singles]), atol=1e-5, rtol=1e-5)
    for name in ("mask", "deformation", "occlusion_map"):
        expected = torch.cat([getattr(s[1], name) for s in singles])
        torch.testing.assert_close(getattr(motion, name), expected, atol=1e-5, rtol=1e-5)


def test_equal_keypoints_give_the_identity_grid():
    net = tiny_network()
    feature, kp, _ = tiny_inputs(1)
    with torch.no_grad():
        motion = net.dense_motion_network(feature, kp, kp)
    grid = make_coordinate_grid((8, 16, 16), torch.float32, "cpu")
    torch.testing.assert_close(motion.deformation[0], grid, atol=1e-6, rtol=0)


def test_hourglass_input_has_no_subnormals():
    # Subnormal heatmap tails slow the CPU convolutions down several-fold.
    net = tiny_network()
    captured = {}
    hook = net.dense_motion_network.hourglass.register_forward_hook(
        lambda _m, args, _out: captured.update(x=args[0])
    )
    with torch.no_grad():
        net(*tiny_inputs(1))
    hook.remove()
    x = captured["x"]
    tiny = torch.finfo(x.dtype).tiny
    assert not ((x != 0) & (x.abs() < tiny)).any()


def test_tiny_configuration_round_trips_through_loader(tmp_path):
    net = tiny_network()
    inputs = tiny_inputs(1)
    path = tmp_path / "warp_network.pth"
    save_official(net, "warp_network", path)
    loaded = load_official("warp_network", path, **TINY)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), net(*inputs), atol=0, rtol=0)


def test_without_occlusion_map():
    net = tiny_network(estimate_occlusion_map=False)
    assert not any(k.startswith("dense_motion_network.occlusion") for k in net.state_dict())
    with torch.no_grad():
        out, motion = net.forward_with_motion(*tiny_inputs(1))
    assert motion.occlusion_map is None
    assert out.shape == (1, 32, 16, 16)


def test_dense_motion_config_accepts_a_mapping():
    net = WarpingNetwork(
        **{
            **TINY,
            "dense_motion": {
                "block_expansion": 8,
                "max_features": 32,
                "num_blocks": 3,
                "reshape_depth": 8,
                "compress": 2,
            },
        }
    )
    assert net.state_dict().keys() == WarpingNetwork(**TINY).state_dict().keys()


def test_inconsistent_reshape_is_rejected():
    with pytest.raises(ValueError, match="max_features"):
        WarpingNetwork(max_features=256)


def test_warp_inference_form_gives_the_warp_output():
    net = tiny_network()
    fast = warp_inference_form(net)
    assert is_inference_form(fast) and not is_inference_form(net)
    assert warp_inference_form(fast) is fast  # no second rewrite
    blocks = fast.dense_motion_network.hourglass.decoder.up_blocks
    assert all(isinstance(b, PolyphaseUpBlock3d) for b in blocks)  # 3 levels: all of them
    assert isinstance(fast.dense_motion_network.occlusion, TapsFirstConv2d)
    assert fast.third.conv.weight is net.third.conv.weight  # weights shared, not copied
    feature, kp_s, kp_d = tiny_inputs(3, seed=2)
    broadcast = feature[:1].expand(3, -1, -1, -1, -1)  # an image source's volume
    with torch.no_grad():
        for f in (feature, broadcast):
            torch.testing.assert_close(fast(f, kp_s, kp_d), net(f, kp_s, kp_d), atol=1e-5, rtol=0)


@pytest.mark.conformance
@pytest.mark.slow
def test_warp_inference_form_with_release_weights(conformance):
    net = load_official("warp_network", conformance.checkpoint("warp_network"))
    fast = warp_inference_form(net)
    blocks = fast.dense_motion_network.hourglass.decoder.up_blocks
    assert [isinstance(b, PolyphaseUpBlock3d) for b in blocks] == [False, False, True, True, True]
    assert isinstance(fast.dense_motion_network.occlusion, TapsFirstConv2d)
    gen = torch.Generator().manual_seed(0)
    kp = torch.rand(1, 21, 3, generator=gen) - 0.5
    inputs = (torch.randn(1, 32, 16, 32, 32, generator=gen) * 0.4, kp, kp + 0.03)
    with torch.no_grad():
        torch.testing.assert_close(fast(*inputs), net(*inputs), atol=1e-5, rtol=0)
