"""The 265-dim motion layout and its keyed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkinghead.methods.ditto.motion import (
    MOTION_DIM,
    MOTION_LAYOUT,
    MOTION_LAYOUT_WITH_KP,
    POSE_DIMS,
    dict_to_motion,
    motion_frames,
    motion_to_dict,
)

SIZES = {"scale": 1, "pitch": 66, "yaw": 66, "roll": 66, "t": 3, "exp": 63}


def _info(lead=(4,), seed=0, kp=False):
    g = torch.Generator().manual_seed(seed)
    info = {k: torch.randn((*lead, n), generator=g) for k, n in SIZES.items()}
    info["scale"] = 0.5 + 1.5 * torch.rand((*lead, 1), generator=g)  # [0.5, 2): exact offset
    if kp:
        info["kp"] = torch.randn((*lead, 63), generator=g)
    return info


def test_layout():
    assert MOTION_DIM == 265 and POSE_DIMS == 202 and MOTION_LAYOUT_WITH_KP.dim == 328
    assert MOTION_LAYOUT.names == tuple(SIZES)
    offsets = [0, 1, 67, 133, 199, 202]
    assert [MOTION_LAYOUT[k].offset for k in SIZES] == offsets
    assert MOTION_LAYOUT["exp"].slice == slice(202, 265)
    assert MOTION_LAYOUT["scale"].shift == 1.0
    with pytest.raises(KeyError):
        MOTION_LAYOUT["kp"]


def test_by_hand():
    info = {k: torch.full((1, n), float(i)) for i, (k, n) in enumerate(SIZES.items())}
    info["scale"] = torch.tensor([[1.25]])
    vec = dict_to_motion(info)
    assert vec.shape == (1, 265)
    assert vec[0, 0].item() == 0.25  # scale stored minus one
    assert vec[0, 1:67].eq(1).all() and vec[0, 199:202].eq(4).all() and vec[0, 202:].eq(5).all()


@pytest.mark.parametrize("lead", [(), (7,), (2, 3)])
def test_round_trip_torch(lead):
    info = _info(lead)
    vec = dict_to_motion(info)
    assert vec.shape == (*lead, 265)
    back = motion_to_dict(vec)
    assert set(back) == set(SIZES)
    for k in SIZES:
        assert torch.equal(back[k], info[k]), k
    again = dict_to_motion(back)
    assert torch.equal(again, vec)
    # Arbitrary vectors: exact except the scale offset, which may round by an ulp.
    v = torch.randn((*lead, 265))
    v2 = dict_to_motion(motion_to_dict(v))
    assert torch.equal(v2[..., 1:], v[..., 1:])
    assert torch.allclose(v2[..., :1], v[..., :1], atol=2e-7, rtol=0)


def test_round_trip_numpy():
    info = {k: v.numpy() for k, v in _info((5,)).items()}
    vec = dict_to_motion(info)
    assert isinstance(vec, np.ndarray) and vec.shape == (5, 265)
    back = motion_to_dict(vec)
    for k in SIZES:
        assert isinstance(back[k], np.ndarray)
        np.testing.assert_array_equal(back[k], info[k])


def test_kp_passthrough():
    info = _info((3,), kp=True)
    vec = dict_to_motion(info)  # the motion model's form ignores kp
    assert vec.shape == (3, 265)
    full = dict_to_motion(info, include_kp=True)
    assert full.shape == (3, 328)
    assert torch.equal(full[:, :265], vec)
    back = motion_to_dict(full)
    assert torch.equal(back["kp"], info["kp"])
    with_kp = motion_to_dict(vec, kp=info["kp"])
    assert with_kp["kp"] is info["kp"]
    with pytest.raises(ValueError):
        motion_to_dict(full, kp=info["kp"])
    with pytest.raises(KeyError):
        dict_to_motion(_info((3,)), include_kp=True)


def test_scale_without_trailing_one_and_errors():
    info = _info((4,))
    flat = dict(info, scale=info["scale"][:, 0])
    assert torch.equal(dict_to_motion(flat), dict_to_motion(info))
    with pytest.raises(KeyError):
        dict_to_motion({k: v for k, v in info.items() if k != "exp"})
    with pytest.raises(ValueError):
        dict_to_motion(dict(info, t=torch.zeros(4, 2)))
    with pytest.raises(ValueError):
        motion_to_dict(torch.zeros(4, 264))


def test_motion_frames_renderer_form():
    vec = dict_to_motion(_info((6,)))
    frames = motion_frames(vec)
    assert len(frames) == 6
    assert all(frames[2][k].shape == (1, n) for k, n in SIZES.items())
    assert torch.equal(frames[2]["exp"][0], vec[2, 202:])
