"""Paste-back: the release's feathered mask, output geometry, round trip, mask cache."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from talkinghead.face import PasteBack, crop_transform, feather_mask, paste_back, warp_image

RNG = np.random.default_rng(0)


def test_feather_mask_values():
    m = feather_mask(512, 512, 0.9, 0.9)
    assert m.shape == (512, 512) and m.dtype == np.float32
    assert m.min() == 0.0 and m.max() == 1.0
    # int(512 * 0.9) = 460 inner pixels: 26-pixel bands; 1 inside, 0 on the outer edges.
    assert (m[26:486, 26:486] == 1).all()
    assert m[256, 256] == 1 and m[25, 256] == 1 and m[256, 25] == 1
    for corner in [(0, 0), (0, 511), (511, 0), (511, 511)]:
        assert m[corner] == 0
    assert m[0, 256] == 0 and m[511, 256] == 0 and m[256, 0] == 0 and m[256, 511] == 0
    # Bands ramp linearly over 26 samples (0 .. 1 in steps of 1/25).
    np.testing.assert_allclose(m[:26, 256], np.arange(26) / 25, atol=1e-6)
    np.testing.assert_allclose(m[256, 486:], np.arange(25, -1, -1) / 25, atol=1e-6)
    # Corners fall off radially: 1 - distance from the inner corner, in band units.
    d = 1 - 12 / 25
    assert m[12, 12] == pytest.approx(1 - np.hypot(d, d), abs=1e-6)
    assert m[13, 20] == pytest.approx(1 - np.hypot(1 - 13 / 25, 1 - 20 / 25), abs=1e-6)
    # Symmetric
    np.testing.assert_array_equal(m, m[::-1])
    np.testing.assert_array_equal(m, m[:, ::-1])
    np.testing.assert_array_equal(m, m.T)
    # Non-square sizes and other ratios keep the band arithmetic: int(100 * 0.8) = 80 -> bands of 10.
    r = feather_mask(100, 60, 0.8, 0.5)
    assert r.shape == (60, 100)
    assert (r[15:45, 10:90] == 1).all() and r[0, 50] == 0 and r[30, 0] == 0


def _face_frame(h: int, w: int) -> np.ndarray:
    """A smooth synthetic frame (gradients + blobs), so bilinear resampling is near-lossless."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = np.stack(
        [
            128 + 100 * np.sin(xx / 37.0) * np.cos(yy / 29.0),
            128 + 90 * np.cos(xx / 23.0 + yy / 41.0),
            (xx + yy) / (w + h) * 255,
        ],
        -1,
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def _crop_matrices(h, w, centre, size, roll=0.2, dsize=512):
    c, s = np.cos(roll), np.sin(roll)
    pts = (RNG.uniform(-0.5, 0.5, (203, 2)) * size) @ np.array([[c, s], [-s, c]]) + centre
    # Anchors: eye points above the mouth corners.
    pts[[0, 6, 12, 18, 24, 30, 36, 42]] = centre + np.array([[0, -0.2 * size]]) @ np.array(
        [[c, s], [-s, c]]
    )
    pts[[48, 66]] = centre + np.array([[0, 0.2 * size]]) @ np.array([[c, s], [-s, c]])
    return crop_transform(pts, dsize=dsize)


@pytest.mark.parametrize(("h", "w"), [(481, 641), (333, 777), (1001, 257)])
def test_output_geometry_and_unmodified_round_trip(h, w):
    frame = _face_frame(h, w)
    M_o2c, M_c2o = _crop_matrices(h, w, centre=(w * 0.5, h * 0.45), size=min(h, w) * 0.4)
    crop = warp_image(frame, M_o2c, 512)
    out = PasteBack()(frame, crop, M_c2o.astype(np.float32))
    assert out.shape == frame.shape and out.dtype == np.uint8
    # Far from the crop's footprint: untouched.
    foot = cv2.warpAffine(np.ones((512, 512), np.float32), M_c2o[:2], (w, h)) > 0
    foot = cv2.dilate(foot.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    np.testing.assert_array_equal(out[~foot], frame[~foot])
    # Inside: the unmodified crop puts the frame back (two bilinear resamplings of it).
    inner = warp_image(np.ones((512, 512), np.float32), M_c2o, (w, h)) > 0.99
    err = out[inner].astype(float) - frame[inner]
    psnr = 10 * np.log10(255**2 / np.mean(err**2))
    assert psnr > 35, psnr


def test_matches_full_frame_reference_blend():
    h, w = 401, 599
    frame = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    crop = RNG.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    _, M_c2o = _crop_matrices(h, w, centre=(250.0, 220.0), size=180.0, roll=-0.4)
    out = paste_back(frame, crop, M_c2o)
    # The release's blend: warp mask and crop over the whole frame, blend in float.
    mask = np.clip(cv2.warpAffine(feather_mask(512, 512), M_c2o[:2], (w, h)), 0, 1)[..., None]
    warped = cv2.warpAffine(crop, M_c2o[:2], (w, h)).astype(np.float32)
    ref = mask * warped + (1 - mask) * frame
    diff = np.abs(out.astype(np.float32) - ref)
    assert diff.max() <= 1.0  # rounding (we) vs truncation (release) and warp sub-pixel rounding
    assert diff.mean() < 0.3


def test_crop_partly_and_fully_outside():
    h, w = 257, 311
    frame = _face_frame(h, w)
    crop = np.full((512, 512, 3), 200, np.uint8)
    paste = PasteBack()
    # Centred on the frame's corner: only the overlap changes.
    _, M_c2o = _crop_matrices(h, w, centre=(0.0, 0.0), size=150.0)
    out = paste(frame, crop, M_c2o)
    assert out.shape == frame.shape
    assert out[0, 0].tolist() == [200, 200, 200]
    np.testing.assert_array_equal(out[-10:, -10:], frame[-10:, -10:])
    # Entirely outside: the frame comes back unchanged (a copy).
    _, M_far = _crop_matrices(h, w, centre=(5000.0, 5000.0), size=150.0)
    far = paste(frame, crop, M_far)
    np.testing.assert_array_equal(far, frame)
    assert far is not frame


def test_mask_cache_and_float_render():
    h, w = 300, 400
    frame = _face_frame(h, w)
    M_o2c, M_c2o = _crop_matrices(h, w, centre=(200.0, 150.0), size=100.0)
    crop = warp_image(frame, M_o2c, 512)
    paste = PasteBack()
    a = paste(frame, crop, M_c2o)
    cached = paste._cached
    b = paste(frame, crop.astype(np.float32) + 0.2, M_c2o)  # a float render in [0, 255]
    assert paste._cached is cached  # same matrix and sizes: the warped mask is reused
    np.testing.assert_array_equal(a, b)
    _, M2 = _crop_matrices(h, w, centre=(210.0, 150.0), size=100.0)
    paste(frame, crop, M2)
    assert paste._cached is not cached
    # A smaller render (a test-size renderer) gets a mask of its own size.
    small = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_AREA)
    _, M_small = _crop_matrices(h, w, centre=(200.0, 150.0), size=100.0, dsize=256)
    out = paste(frame, small, M_small)
    assert out.shape == frame.shape
    assert paste.mask(256, 256).shape == (256, 256)
    with pytest.raises(ValueError):
        paste(frame[..., 0], crop, M_c2o)
