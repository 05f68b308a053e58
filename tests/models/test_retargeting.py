"""Eye-open and lip-open sliders: they move only their region's keypoints, and they do move them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkinghead.face.ratios import eye_close_ratio, lip_close_ratio
from talkinghead.models.retargeting import (
    EYE_KEYPOINTS,
    LIP_KEYPOINTS,
    eye_retargeting_network,
    lip_retargeting_network,
    retarget,
)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    eye, lip = eye_retargeting_network().eval(), lip_retargeting_network().eval()
    g = torch.Generator().manual_seed(1)
    kp_s = torch.randn(3, 21, 3, generator=g) * 0.3
    kp_d = kp_s + torch.randn(3, 21, 3, generator=g) * 0.05
    common = dict(
        eye_network=eye,
        lip_network=lip,
        source_eye_ratio=torch.tensor([0.3, 0.32]),
        source_lip_ratio=torch.tensor([0.1]),
    )
    return kp_s, kp_d, common


def changed_keypoints(a: torch.Tensor, b: torch.Tensor) -> set[int]:
    return set(torch.nonzero((a - b).abs().amax(dim=(0, 2)) > 0).flatten().tolist())


@pytest.mark.parametrize(
    ("slider", "region"), [("eye_open", EYE_KEYPOINTS), ("lip_open", LIP_KEYPOINTS)]
)
def test_a_slider_changes_only_its_keypoints(setup, slider, region) -> None:
    kp_s, kp_d, common = setup
    with torch.inference_mode():
        closed = retarget(kp_d, kp_s, **common, **{slider: 0.0})
        wide = retarget(kp_d, kp_s, **common, **{slider: 0.8})
    assert changed_keypoints(closed, kp_d) == set(region)
    assert changed_keypoints(closed, wide) == set(region)  # the slider's value matters


def test_no_slider_leaves_the_keypoints_alone(setup) -> None:
    kp_s, kp_d, common = setup
    before = kp_d.clone()
    out = retarget(kp_d, kp_s, **common)
    assert torch.equal(out, kp_d) and torch.equal(kp_d, before) and out is not kp_d


def test_both_sliders_add_up(setup) -> None:
    kp_s, kp_d, common = setup
    with torch.inference_mode():
        both = retarget(kp_d, kp_s, **common, eye_open=0.2, lip_open=0.5)
        eyes = retarget(kp_d, kp_s, **common, eye_open=0.2)
        lips = retarget(kp_d, kp_s, **common, lip_open=0.5)
    torch.testing.assert_close(both, eyes + lips - kp_d)
    assert changed_keypoints(both, kp_d) == set(EYE_KEYPOINTS) | set(LIP_KEYPOINTS)


def test_a_per_frame_slider(setup) -> None:
    kp_s, kp_d, common = setup
    with torch.inference_mode():
        per_frame = retarget(kp_d, kp_s, **common, eye_open=torch.tensor([0.0, 0.4, 0.8]))
        middle = retarget(kp_d, kp_s, **common, eye_open=0.4)
    torch.testing.assert_close(per_frame[1], middle[1])


def test_a_slider_without_its_network_is_refused(setup) -> None:
    kp_s, kp_d, _ = setup
    with pytest.raises(ValueError, match="eye retargeting needs"):
        retarget(kp_d, kp_s, eye_open=0.3)


def test_ratios_open_wider_when_the_landmarks_open() -> None:
    lmk = np.zeros((478, 2), np.float32)
    lmk[33], lmk[133], lmk[263], lmk[362] = (0, 0), (10, 0), (30, 0), (20, 0)
    lmk[159], lmk[145], lmk[386], lmk[374] = (5, -1), (5, 1), (25, -2), (25, 2)
    lmk[61], lmk[291], lmk[13], lmk[14] = (5, 20), (25, 20), (15, 19), (15, 21)
    np.testing.assert_allclose(eye_close_ratio(lmk), [0.2, 0.4], rtol=1e-5)
    np.testing.assert_allclose(lip_close_ratio(lmk), [0.1], rtol=1e-5)
    with pytest.raises(ValueError, match="203 or 478"):
        eye_close_ratio(np.zeros((68, 2)))
