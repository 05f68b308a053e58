"""Paste a rendered face crop back into its source frame through a feathered mask.

The mask is the release's: 1 inside the central 90% x 90% of the crop, falling
linearly to 0 across the border bands and radially (in band-normalised units)
in the corners. It is warped into the frame with the same bilinear M_c2o as the
crop, and the result is ``mask * crop + (1 - mask) * frame``.

Only the frame's region under the warped crop is touched, so the cost follows
the face's size, not the frame's. The release truncates the blend to uint8; we
round to nearest (pasting an unmodified crop back then leaves it unbiased).
A float render is rounded to uint8 before the warp.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def feather_mask(width: int, height: int, ratio_w: float = 0.9, ratio_h: float = 0.9) -> np.ndarray:
    """The release's feathered mask, [height, width] float32 in [0, 1]."""

    def ramp(size: int, ratio: float) -> np.ndarray:
        # Distance into the border band: 1 at the outer edge, 0 on the inner one.
        inner = int(size * ratio)
        lo = (size - inner) // 2
        hi = size - lo - inner
        out = np.zeros(size)
        out[:lo] = np.linspace(1, 0, lo)
        out[size - hi :] = np.linspace(0, 1, hi)
        return out

    dx, dy = ramp(width, ratio_w), ramp(height, ratio_h)
    dist = np.hypot(dy[:, None], dx[None, :])
    return (1 - np.minimum(dist, 1)).astype(np.float32)


def _region(M_c2o: np.ndarray, crop_hw: tuple[int, int], frame_hw: tuple[int, int]):
    """Bounding box (x0, y0, x1, y1) in the frame of the crop's warped footprint, clipped."""
    h, w = crop_hw
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=np.float64)
    pts = corners @ M_c2o[:2, :2].T + M_c2o[:2, 2]
    x0 = max(0, math.floor(pts[:, 0].min()) - 1)
    y0 = max(0, math.floor(pts[:, 1].min()) - 1)
    x1 = min(frame_hw[1], math.ceil(pts[:, 0].max()) + 2)
    y1 = min(frame_hw[0], math.ceil(pts[:, 1].max()) + 2)
    return x0, y0, x1, y1


class PasteBack:
    """Pastes rendered crops back into frames.

    The warped mask is cached for the last (M_c2o, frame size, crop size): an
    image source keeps one matrix for every output frame, a video source
    changes it per frame and pays one extra mask warp per frame.
    """

    def __init__(self, ratio_w: float = 0.9, ratio_h: float = 0.9) -> None:
        self.ratio = (ratio_w, ratio_h)
        self._masks: dict[tuple[int, int], np.ndarray] = {}
        self._key: tuple | None = None
        self._cached: tuple | None = None

    def mask(self, height: int, width: int) -> np.ndarray:
        """The feathered mask for a crop of this size, [h, w] float32."""
        if (height, width) not in self._masks:
            self._masks[(height, width)] = feather_mask(width, height, *self.ratio)
        return self._masks[(height, width)]

    def _prepare(self, M_c2o: np.ndarray, crop_hw: tuple[int, int], frame_hw: tuple[int, int]):
        key = (M_c2o.tobytes(), crop_hw, frame_hw)
        if key != self._key:
            x0, y0, x1, y1 = _region(M_c2o, crop_hw, frame_hw)
            M = M_c2o[:2].copy()
            M[:, 2] -= (x0, y0)  # warp straight into the region
            if x1 > x0 and y1 > y0:
                mask = cv2.warpAffine(
                    self.mask(*crop_hw), M, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR
                )
                mask = np.clip(mask, 0, 1)
            else:
                mask = np.zeros((0, 0), np.float32)
            self._key, self._cached = key, ((x0, y0, x1, y1), M, mask, 1 - mask)
        return self._cached

    def __call__(self, frame: np.ndarray, crop: np.ndarray, M_c2o: np.ndarray) -> np.ndarray:
        """Frame [H, W, 3] uint8, rendered crop [h, w, 3] (uint8, or float in [0, 255]),
        M_c2o (3x3 or 2x3, crop -> frame) -> new frame [H, W, 3] uint8."""
        if frame.ndim != 3 or crop.ndim != 3 or frame.shape[2] != crop.shape[2]:
            raise ValueError(f"frame {frame.shape} and crop {crop.shape} must be [H, W, C] alike")
        M_c2o = np.asarray(M_c2o, dtype=np.float64)
        (x0, y0, x1, y1), M, mask, inv_mask = self._prepare(M_c2o, crop.shape[:2], frame.shape[:2])
        out = np.array(frame, dtype=np.uint8, copy=True)
        if mask.size == 0:
            return out
        if crop.dtype != np.uint8:  # a float render in [0, 255]
            crop = np.clip(np.asarray(crop, dtype=np.float32) + 0.5, 0, 255).astype(np.uint8)
        warped = cv2.warpAffine(crop, M, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
        region = np.ascontiguousarray(out[y0:y1, x0:x1])
        # weights sum to 1; rounds to nearest and saturates
        out[y0:y1, x0:x1] = cv2.blendLinear(warped, region, mask, inv_mask)
        return out


def paste_back(frame: np.ndarray, crop: np.ndarray, M_c2o: np.ndarray) -> np.ndarray:
    """One-off `PasteBack` (no mask cache across calls)."""
    return PasteBack()(frame, crop, M_c2o)
