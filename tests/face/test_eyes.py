"""Eye attributes from MediaPipe's 478 landmarks: by hand, against the release's formulas, real face."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import talkinghead.methods.ditto.motion
from _conformance import portrait_rgb
from talkinghead.face.eyes import eye_attributes, eye_attributes_from_landmarks


def _eye(lmk, outer, inner, lids, iris, x0, width, height, iris_offset=(0.0, 0.0)):
    """Place one eye on the x axis: corners, three lid pairs `height` apart, the iris."""
    lmk[outer, :2] = (x0, 0.0)
    lmk[inner, :2] = (x0 + width, 0.0)
    for k, (lo, up) in enumerate(lids):
        x = x0 + width * (k + 1) / 4
        lmk[lo, :2] = (x, height / 2)
        lmk[up, :2] = (x, -height / 2)
    lmk[iris, :2] = (x0 + width / 2 + iris_offset[0], iris_offset[1])


LEFT = (33, 133, ((145, 159), (144, 160), (153, 158)), 468)
RIGHT = (263, 362, ((374, 386), (373, 387), (380, 385)), 473)


def test_by_hand():
    lmk = np.zeros((1, 478, 3), np.float32)
    # Left eye: outer (33) at x=2, inner (133) at x=0; lids 1 apart -> open = 3 / 2.
    lmk[0, 33, 0], lmk[0, 133, 0] = 2.0, 0.0
    lmk[0, [159, 160, 158], 1] = 1.0  # upper lids; the lower ones (145, 144, 153) stay at 0
    lmk[0, 468] = (1.0, 0.5, 0.0)  # iris half a unit above the centre
    # Right eye: outer (263) at x=-2, inner (362) at x=0, closed, iris at the centre.
    lmk[0, 263, 0] = -2.0
    lmk[0, 473] = (-1.0, 0.0, 0.0)
    eye_open, eye_ball = eye_attributes(lmk)
    assert eye_open.shape == (1, 2) and eye_ball.shape == (1, 6)
    assert eye_open.dtype == np.float32
    assert eye_open[0].tolist() == pytest.approx([1.5, 0.0])
    # Left: (direction to iris (0,1,0) - eye axis (1,0,0)) * 0.5 = (-0.5, 0.5, 0).
    # Right: distance 0 -> no movement. Layout [xL, xR, yL, yR, zL, zR].
    assert eye_ball[0].tolist() == pytest.approx([-0.5, 0.0, 0.5, 0.0, 0.0, 0.0], abs=1e-6)
    # Unbatched and 2-D landmarks work too.
    o, b = eye_attributes(lmk[0, :, :2])
    assert o.shape == (2,) and b.shape == (4,)
    assert o.dtype == b.dtype == np.float32  # one face: float32 too (FaceCrop's dtype)
    assert b.tolist() == pytest.approx([-0.5, 0.0, 0.5, 0.0], abs=1e-6)


def test_open_versus_closed_eyes():
    lmk = np.zeros((2, 478, 2), np.float32)
    # Frame 0: left open, right closed; frame 1: the other way round.
    for f, (h_left, h_right) in enumerate([(0.3, 0.02), (0.02, 0.3)]):
        _eye(lmk[f], *LEFT, x0=0.3, width=0.1, height=h_left * 0.1)
        _eye(lmk[f], *RIGHT, x0=0.6, width=0.1, height=h_right * 0.1)
    eye_open, _ = eye_attributes(lmk)
    assert eye_open[0, 0] > 5 * eye_open[0, 1]
    assert eye_open[1, 1] > 5 * eye_open[1, 0]
    assert eye_open[0, 0] == pytest.approx(0.9, rel=1e-5)  # three lid heights of 0.3 width
    # Scale invariant: the same eyes 4x larger.
    assert eye_attributes(lmk * 4)[0] == pytest.approx(eye_open, rel=1e-5)


def _release_formula(lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The release's eye attributes written out per frame and per eye, the slow way."""
    opens, balls = [], []
    for frame in lmk.astype(np.float32):
        o, b = [], []
        for outer, inner, lids, iris in (LEFT, RIGHT):
            p_o, p_i, ball = frame[outer], frame[inner], frame[iris]
            width = np.linalg.norm(p_o - p_i)
            o.append(sum(np.linalg.norm(frame[a] - frame[c]) for a, c in lids) / (width + 1e-8))
            centre = (p_o + p_i) / 2
            d = np.linalg.norm(ball - centre)
            axis = (p_o - p_i) / (width + 1e-8)
            b.append(((ball - centre) / (d + 1e-8) - axis) * d)
        opens.append(o)
        balls.append(np.stack(b, -1).reshape(-1))  # [C, 2] -> [xL, xR, yL, yR, ...]
    return np.array(opens), np.array(balls)


def test_matches_release_formula_on_random_landmarks():
    lmk = np.random.default_rng(0).random((5, 478, 3)).astype(np.float32)
    eye_open, eye_ball = eye_attributes(lmk)
    ref_open, ref_ball = _release_formula(lmk)
    np.testing.assert_allclose(eye_open, ref_open, rtol=1e-5)
    np.testing.assert_allclose(eye_ball, ref_ball, rtol=1e-4, atol=1e-6)


def test_tensor_wrapper_and_motion_reexport():
    lmk = np.random.default_rng(1).random((2, 478, 3)).astype(np.float32)
    eye_open, eye_ball = eye_attributes_from_landmarks(torch.from_numpy(lmk))
    assert isinstance(eye_open, torch.Tensor) and eye_ball.shape == (2, 6)
    np.testing.assert_array_equal(eye_open.numpy(), eye_attributes(lmk)[0])
    assert (
        talkinghead.methods.ditto.motion.eye_attributes_from_landmarks
        is eye_attributes_from_landmarks
    )
    with pytest.raises(ValueError):
        eye_attributes(np.zeros((1, 468, 3)))


def test_real_portrait_both_eyes_open():
    from talkinghead.face.mediapipe_backend import MediapipeFaceAnalyzer

    rgb = portrait_rgb()
    analyzer = MediapipeFaceAnalyzer()
    face = analyzer.analyze(rgb)
    analyzer.close()
    assert face.eye_open.shape == (2,) and face.eye_ball.shape == (6,)
    # Open eyes: the three lid heights add up to about the eye's width (closed: ~0.1-0.2).
    assert (face.eye_open > 0.6).all(), face.eye_open
    assert face.eye_open[0] == pytest.approx(face.eye_open[1], rel=0.2)
    # Looking at the camera: the iris offsets are small in crop units.
    assert np.abs(face.eye_ball).max() < 0.05
