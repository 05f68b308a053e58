"""PSNR and SSIM against values worked out by hand, and against skimage's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from talkinghead.eval.pixel import gaussian_kernel, psnr, ssim

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255, channel_axis=-1), written out."""
    out = []
    for c in range(3):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)

        def f(z):
            return gaussian_filter(z, 1.5, truncate=3.5, mode="reflect")

        ux, uy = f(x), f(y)
        vx, vy, vxy = f(x * x) - ux * ux, f(y * y) - uy * uy, f(x * y) - ux * uy
        s = ((2 * ux * uy + C1) * (2 * vxy + C2)) / ((ux**2 + uy**2 + C1) * (vx + vy + C2))
        out.append(s[5:-5, 5:-5].mean())
    return float(np.mean(out))


def test_identical_frames():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 40, 3), dtype=np.uint8)
    assert np.all(np.isinf(psnr(a, a)))
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-12)


def test_known_noise_gives_known_psnr():
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    # +-d in a checkerboard: the MSE is exactly d^2.
    d = 5
    sign = np.where((np.indices((16, 16)).sum(0) % 2) == 0, 1, -1)[None, :, :, None]
    b = (a.astype(int) + d * sign).astype(np.uint8)
    np.testing.assert_allclose(psnr(a, b), 20 * math.log10(255 / d), rtol=1e-12)
    # Noise on one channel only: MSE = d^2 / 3.
    c = a.copy()
    c[..., 0] += d
    np.testing.assert_allclose(psnr(a, c), 10 * math.log10(255**2 * 3 / d**2), rtol=1e-12)


def test_brightness_shift_of_flat_frames():
    # Flat frames have no variance: SSIM is the luminance term alone.
    a = np.full((1, 24, 24, 3), 100, np.uint8)
    b = np.full((1, 24, 24, 3), 130, np.uint8)
    expected = (2 * 100 * 130 + C1) / (100**2 + 130**2 + C1)
    np.testing.assert_allclose(ssim(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(psnr(a, b), 20 * math.log10(255 / 30), rtol=1e-12)


def test_one_pixel_shift_of_a_ramp():
    # A horizontal ramp of slope 3 shifted by one pixel differs by 3 everywhere; the
    # window statistics then differ only in the mean: SSIM = luminance term, per pixel.
    x = np.arange(48) * 3
    a = np.broadcast_to(x[None, :, None], (32, 48, 3)).astype(np.uint8)
    b = np.broadcast_to((x + 3)[None, :, None], (32, 48, 3)).astype(np.uint8)
    np.testing.assert_allclose(psnr(a, b), 20 * math.log10(255 / 3), rtol=1e-12)
    # The Gaussian-weighted mean of a linear ramp is the ramp itself.
    mu = x[5:-5].astype(np.float64)
    lum = (2 * mu * (mu + 3) + C1) / (mu**2 + (mu + 3) ** 2 + C1)
    np.testing.assert_allclose(ssim(a, b), lum.mean(), rtol=1e-10)


def test_ssim_matches_skimage_formula():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    got = ssim(a, b)
    np.testing.assert_allclose(got, [skimage_ssim(a[i], b[i]) for i in range(2)], atol=1e-12)


def test_ssim_matches_skimage_if_installed():
    skimage = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (1, 40, 56, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    got = ssim(a, b)
    ref = skimage.structural_similarity(
        a[0], b[0], channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )  # fmt: skip
    np.testing.assert_allclose(got[0], ref, atol=1e-10)


def test_gaussian_window_is_11_taps():
    k = gaussian_kernel()
    assert len(k) == 11 and abs(k.sum() - 1) < 1e-15 and np.argmax(k) == 5


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="differ"):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
