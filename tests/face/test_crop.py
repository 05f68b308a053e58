"""The similarity crop from landmarks: release geometry, layouts, exact inverse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from talkinghead.face import CropConfig, crop_from_landmarks, crop_transform, warp_points
from talkinghead.face.crop import LAYOUTS, MESH_CROP_POINTS, anchor_points

RNG = np.random.default_rng(0)


def _face_points(n: int, rng=RNG, centre=(400.0, 300.0), size=120.0, roll=0.0) -> np.ndarray:
    """Random points of layout n with the eyes above the mouth, rolled by `roll` radians."""
    pts = rng.uniform(-0.5, 0.5, (n, 2))
    lay = LAYOUTS[n]
    pts[list(lay.eye_a)] = np.array([-0.2, -0.15]) + rng.normal(0, 0.02, (len(lay.eye_a), 2))
    pts[list(lay.eye_b)] = np.array([0.2, -0.15]) + rng.normal(0, 0.02, (len(lay.eye_b), 2))
    pts[list(lay.mouth)] = [(-0.1, 0.25), (0.1, 0.25)]
    c, s = math.cos(roll), math.sin(roll)
    return pts @ np.array([[c, s], [-s, c]]) * size + centre


def _release_reference(pts, dsize, scale, vy_ratio, rotate=True):
    """The release's crop matrix, written from its description: roll angle from acos of
    the x axis, the rotated box, then the matrix from (scale, angle, centre)."""
    eyes, mouth = anchor_points(pts)
    lay = LAYOUTS[len(pts)]
    box_pts = pts if lay.box_points is None else pts[list(lay.box_points)]
    uy = (mouth - eyes) / np.linalg.norm(mouth - eyes)
    ux = np.array([uy[1], -uy[0]])
    angle = math.acos(ux[0]) * (-1 if ux[1] < 0 else 1)
    c0 = box_pts.mean(0)
    rpts = (box_pts - c0) @ np.array([ux, uy]).T
    c1 = (rpts.min(0) + rpts.max(0)) / 2
    size = (rpts.max(0) - rpts.min(0)).max() * scale
    centre = c0 + ux * c1[0] + uy * c1[1] + uy * vy_ratio * size
    s = dsize / size
    cos, sin = (math.cos(angle), math.sin(angle)) if rotate else (1.0, 0.0)
    cx, cy = centre
    t = dsize / 2
    return np.array(
        [
            [s * cos, s * sin, t - s * (cos * cx + sin * cy)],
            [-s * sin, s * cos, t - s * (-sin * cx + cos * cy)],
            [0, 0, 1],
        ]
    )


@pytest.mark.parametrize("n", [5, 106, 203, 468, 478])
@pytest.mark.parametrize("rotate", [True, False])
def test_matches_release_geometry_and_inverse_is_exact(n, rotate):
    pts = _face_points(n, roll=0.3)
    M_o2c, M_c2o = crop_transform(pts, dsize=512, scale=2.3, vy_ratio=-0.125, rotate=rotate)
    ref = _release_reference(pts, 512, 2.3, -0.125, rotate)
    np.testing.assert_allclose(M_o2c, ref, rtol=1e-9, atol=1e-9)
    assert M_o2c.dtype == M_c2o.dtype == np.float64
    np.testing.assert_allclose(M_o2c @ M_c2o, np.eye(3), atol=1e-12)
    # original -> crop -> original, and crop -> original -> crop
    np.testing.assert_allclose(warp_points(warp_points(pts, M_o2c), M_c2o), pts, atol=1e-9)
    grid = RNG.uniform(0, 512, (50, 2))
    np.testing.assert_allclose(warp_points(warp_points(grid, M_c2o), M_o2c), grid, atol=1e-9)


def test_crop_cancels_roll_and_translation():
    base = _face_points(203, np.random.default_rng(1))
    a = warp_points(base, crop_transform(base)[0])
    for roll in (-0.5, 0.2, 1.0):
        c, s = math.cos(roll), math.sin(roll)
        moved = (base - 100) @ np.array([[c, s], [-s, c]]) + (700, 50)
        b = warp_points(moved, crop_transform(moved)[0])
        np.testing.assert_allclose(b, a, atol=1e-8)
    # Eyes straight above the mouth in the crop, both on the vertical centre line.
    eyes, mouth = warp_points(np.stack(anchor_points(base)), crop_transform(base)[0])
    assert eyes[0] == pytest.approx(mouth[0]) and eyes[1] < mouth[1]


def test_offsets_and_scale():
    pts = _face_points(106)
    ref = warp_points(pts, crop_transform(pts, dsize=256, scale=2.0, vy_ratio=0.0)[0])
    # vy < 0 moves the crop up: the face moves down by |vy| * dsize; vx moves it along x
    # (the release ignores vx; we honour it).
    down = warp_points(pts, crop_transform(pts, dsize=256, scale=2.0, vy_ratio=-0.1)[0])
    np.testing.assert_allclose(down - ref, np.tile([0.0, 25.6], (106, 1)), atol=1e-9)
    right = warp_points(pts, crop_transform(pts, dsize=256, scale=2.0, vx_ratio=0.2, vy_ratio=0)[0])
    np.testing.assert_allclose(right - ref, np.tile([-51.2, 0.0], (106, 1)), atol=1e-9)
    # The landmarks' square box is dsize / scale wide and centred.
    span = ref.max(0) - ref.min(0)
    assert span.max() == pytest.approx(128.0)
    assert (ref.max(0) + ref.min(0)) / 2 == pytest.approx([128, 128])


def test_mesh_layout_ignores_the_forehead_and_468_equals_478():
    pts = _face_points(478)
    M = crop_transform(pts)[0]
    outside = np.setdiff1d(np.arange(478), MESH_CROP_POINTS)
    assert 10 in outside  # the forehead's top
    moved = pts.copy()
    moved[outside] += (0, -300)  # a taller forehead changes nothing
    np.testing.assert_allclose(crop_transform(moved)[0], M)
    np.testing.assert_allclose(crop_transform(pts[:468])[0], M)


def test_bad_layouts():
    with pytest.raises(ValueError, match="unknown landmark layout"):
        crop_transform(np.zeros((7, 2)))
    with pytest.raises(ValueError):
        crop_transform(np.zeros(10))


def test_crop_image_content_follows_the_points():
    h, w = 481, 641  # odd sizes
    img = np.zeros((h, w, 3), np.uint8)
    pts = _face_points(5, centre=(320.0, 240.0), size=250.0, roll=0.4)
    marker = np.array([300.0, 200.0])
    yy, xx = np.mgrid[:h, :w]
    img[(xx - marker[0]) ** 2 + (yy - marker[1]) ** 2 <= 4] = 255
    cfg = CropConfig(dsize=512, scale=2.3, vy_ratio=-0.125)
    crop = crop_from_landmarks(img, pts, cfg)
    assert crop.image.shape == (512, 512, 3) and crop.image.dtype == np.uint8
    ys, xs = np.nonzero(crop.image[..., 0] > 100)
    found = np.array([xs.mean(), ys.mean()])
    np.testing.assert_allclose(found, warp_points(marker, crop.M_o2c), atol=1.0)
    # Where the crop samples outside the frame (a margin for the bilinear edge) it is black.
    gy, gx = np.mgrid[:512, :512]
    src = warp_points(np.stack([gx, gy], -1).reshape(-1, 2).astype(float), crop.M_c2o)
    outside = (src[:, 0] < -1) | (src[:, 0] > w) | (src[:, 1] < -1) | (src[:, 1] > h)
    assert outside.sum() > 1000
    assert crop.image.reshape(-1, 3)[outside].max() == 0
