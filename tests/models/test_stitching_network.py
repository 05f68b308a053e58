"""Stitching network: release numbers (batch 1 and 3), layout, DDP prefixes, batching, no in-place edits."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from talkinghead.models import load_official
from talkinghead.models.stitching_network import StitchingNetwork


@pytest.fixture(scope="module")
def official(conformance):
    return load_official("stitch_network", conformance.checkpoint("stitch_network"))


def _inputs(conformance, case: str) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(torch.from_numpy(conformance.input(case, n)) for n in ("kp_source", "kp_driving"))


@pytest.mark.conformance
@pytest.mark.parametrize("case", ["stitch_network", "stitch_network_batch3"])
def test_matches_release(conformance, official, case: str):
    kp_source, kp_driving = _inputs(conformance, case)
    before = (kp_source.clone(), kp_driving.clone())
    with torch.no_grad():
        out = official(kp_source, kp_driving)
    conformance.check(case, "out", out)
    # The inputs are not modified in place.
    assert torch.equal(kp_source, before[0]) and torch.equal(kp_driving, before[1])


@pytest.mark.conformance
def test_state_dict_layout_is_the_release(conformance):
    expected = [
        (k, tuple(s))
        for k, s, *_ in conformance.manifest["networks"]["stitch_network"]["state_dict"]
    ]
    assert [(k, tuple(v.shape)) for k, v in StitchingNetwork().state_dict().items()] == expected


@pytest.mark.conformance
def test_ddp_prefixed_checkpoint_loads(conformance, tmp_path):
    sd = conformance.state_dict("stitch_network")
    path = tmp_path / "stitch_network.pth"
    torch.save({"retarget_shoulder": OrderedDict((f"module.{k}", v) for k, v in sd.items())}, path)
    net = load_official("stitch_network", path)
    with torch.no_grad():
        out = net(*_inputs(conformance, "stitch_network"))
    conformance.check("stitch_network", "out", out)


@pytest.mark.conformance
def test_batch_equals_single_calls(official):
    gen = torch.Generator().manual_seed(3)
    kp_source = torch.rand(4, 21, 3, generator=gen) - 0.5
    kp_driving = kp_source + 0.05 * torch.randn(4, 21, 3, generator=gen)
    with torch.no_grad():
        batched = official(kp_source, kp_driving)
        singles = torch.cat(
            [official(kp_source[i : i + 1], kp_driving[i : i + 1]) for i in range(4)]
        )
    torch.testing.assert_close(batched, singles, atol=1e-6, rtol=1e-6)


def test_correction_layout():
    """First 3 * num_kp outputs move each keypoint; the next two shift every keypoint's x, y."""
    net = StitchingNetwork(input_size=30, hidden_sizes=(16, 8), output_size=17)
    kp_source, kp_driving = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    delta = net.delta(kp_source, kp_driving)
    out = net(kp_source, kp_driving)
    expected = kp_driving + delta[:, :15].reshape(2, 5, 3)
    expected[..., :2] += delta[:, None, 15:17]
    torch.testing.assert_close(out, expected)
    out.sum().backward()  # differentiable end to end
    assert net.mlp[0].weight.grad is not None


def test_too_small_output_is_rejected():
    net = StitchingNetwork(input_size=30, hidden_sizes=(8,), output_size=15)
    with pytest.raises(ValueError, match="output_size"):
        net(torch.zeros(1, 5, 3), torch.zeros(1, 5, 3))
