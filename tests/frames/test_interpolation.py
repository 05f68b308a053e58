"""2x frame interpolation shared by DiT-Head (stage 3) and DiffTalk (classical flow; RIFE in test_dithead_networks)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from talkinghead.errors import CheckpointError
from talkinghead.frames.interpolation import (
    FlowInterpolator,
    Interpolators,
    create_interpolator,
    interpolate_2x,
)

SIDE = 20  # the square's side


def _background() -> np.ndarray:
    yy, xx = np.mgrid[0:96, 0:96]
    return np.stack([60 + 0.5 * xx, 80 + 0.3 * yy, 100 + 0 * xx], -1).astype(np.float32)


def _scene(x: int, y: int) -> np.ndarray:
    """A textured square at (x, y) on a smooth, static background."""
    frame = _background()
    tex = np.random.default_rng(0).integers(0, 255, (SIDE, SIDE, 3)).astype(np.float32)
    frame[y : y + SIDE, x : x + SIDE] = cv2.GaussianBlur(tex, (3, 3), 0)
    return frame.astype(np.uint8)


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_moving_square_lands_halfway(method):
    a, b = _scene(20, 30), _scene(32, 36)  # moves by (12, 6)
    expected = _scene(26, 33)
    background = _background()
    mid = FlowInterpolator(method).middle(a, b)
    changed = np.abs(mid.astype(float) - background).sum(-1) > 40
    ys, xs = np.nonzero(changed)
    top_left = (xs.mean() - (SIDE - 1) / 2, ys.mean() - (SIDE - 1) / 2)
    assert top_left == pytest.approx((26, 33), abs=0.5)
    err = np.abs(mid.astype(float) - expected).mean()
    blend_err = np.abs((a.astype(float) + b) / 2 - expected).mean()
    assert err < 0.2 * blend_err  # far better than a cross-fade


def test_interpolate_2x_doubles_the_frames_in_order():
    class Mean:
        name = "mean"

        def middle(self, a, b):
            return ((a.astype(int) + b) // 2).astype(np.uint8)

    frames = [np.full((2, 2, 3), v, np.uint8) for v in (0, 10, 20)]
    out = [int(f[0, 0, 0]) for f in interpolate_2x(frames, Mean())]
    assert out == [0, 5, 10, 15, 20, 20]  # 2N frames: the last one is held
    assert list(interpolate_2x([], Mean())) == []


def test_create_interpolator(tmp_path):
    assert create_interpolator("none") is None
    assert create_interpolator("auto", tmp_path).name == "flow-dis"  # no RIFE weights
    assert create_interpolator("farneback").name == "flow-farneback"
    with pytest.raises(CheckpointError, match="RIFE weights not found"):
        create_interpolator("rife", tmp_path)
    with pytest.raises(ValueError):
        create_interpolator("magic")


def test_interpolators_are_made_once_per_kind(tmp_path, monkeypatch):
    from talkinghead.frames import interpolation

    made = []
    real = interpolation.create_interpolator

    def create(kind, checkpoints, device):
        made.append((kind, checkpoints, device))
        return real(kind, checkpoints, device)

    monkeypatch.setattr(interpolation, "create_interpolator", create)
    cache = Interpolators(tmp_path, "cpu")
    first = cache.get("auto")
    assert cache.get("auto") is first and cache.get("none") is None and cache.get("none") is None
    assert made == [("auto", tmp_path, "cpu"), ("none", tmp_path, "cpu")]
    with pytest.raises(CheckpointError):  # a failure is not kept: the next call fails again
        cache.get("rife")
    with pytest.raises(CheckpointError):
        cache.get("rife")
