"""PSNR and SSIM, per frame, on RGB uint8 frames (weight-free).

PSNR: ``10 log10(255^2 / MSE)`` over all pixels and the three channels of a frame;
identical frames give ``inf``.

SSIM: Wang et al. (2004) as ``skimage.metrics.structural_similarity(a, b,
channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` computes it: an 11x11 Gaussian window (sigma 1.5,
truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, the SSIM map averaged over the
pixels at least 5 pixels from the border (skimage crops that margin, so the filter
never reaches past the image and no border mode matters), then over the channels.
The separable filter is OpenCV's, in float64.
"""

from __future__ import annotations

import cv2
import numpy as np

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0


def _as_batch(frames: np.ndarray) -> np.ndarray:
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected RGB frames [N, H, W, 3] or [H, W, 3], got {a.shape}")
    return a


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_batch(a), _as_batch(b)
    if a.shape != b.shape:
        raise ValueError(f"frame shapes differ: {a.shape} vs {b.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-frame PSNR [N] in dB of frames [N, H, W, 3] (or one frame [H, W, 3])."""
    a, b = _check_pair(a, b)
    mse = np.empty(len(a))
    for i, (fa, fb) in enumerate(zip(a, b, strict=True)):
        # Exact integer arithmetic for uint8, one frame at a time (no float64 copy of the video).
        if fa.dtype == np.uint8 and fb.dtype == np.uint8:
            d = fa.astype(np.int32) - fb.astype(np.int32)
            mse[i] = int((d * d).sum(dtype=np.int64)) / d.size
        else:
            d = fa.astype(np.float64) - fb.astype(np.float64)
            mse[i] = float((d * d).mean())
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def gaussian_kernel(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-frame SSIM [N] of RGB frames [N, H, W, 3] (or one frame), mean over the channels."""
    a, b = _check_pair(a, b)
    k = gaussian_kernel()
    r = len(k) // 2
    if min(a.shape[1:3]) < len(k):
        raise ValueError(f"SSIM needs frames of at least {len(k)}x{len(k)}, got {a.shape[1:3]}")
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        # OpenCV's separable float64 filter; the border rows it pads are cropped below.
        return cv2.sepFilter2D(x, cv2.CV_64F, k, k, borderType=cv2.BORDER_REFLECT)[r:-r, r:-r]

    out = np.empty(len(a))
    for i, (fa, fb) in enumerate(zip(a, b, strict=True)):
        x, y = fa.astype(np.float64), fb.astype(np.float64)
        mx, my = blur(x), blur(y)
        vx = blur(x * x) - mx * mx
        vy = blur(y * y) - my * my
        vxy = blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        out[i] = s.mean(axis=(0, 1)).mean()
    return out
