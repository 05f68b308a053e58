"""Paste a rendered face crop back into its source frame through a feathered mask.

The mask is the release's: 1 inside the central 90% x 90% of the crop, falling
linearly to 0 across the border bands and radially (in band-normalised units)
in the corners. It is warped into the frame with the same bilinear M_c2o as the
crop, and the result is ``mask * crop + (1 - mask) * frame``.

Only the frame's region under the warped crop is touched, so the cost follows
the face's size, not the frame's. The release warps over the whole frame with
``cv2.warpAffine``, which quantises each source coordinate to 1/32 pixel in fixed
point; warping just the region (a shifted translation) rounds differently and
moves high-contrast edges by up to 8 grey levels. So the region's sample
positions are computed here exactly as the whole-frame warp computes them
(`warp_coordinates`) and resampled with ``cv2.remap`` (CPU) or in torch
(`talkinghead.face.device_paste`): both match the release's paste-back within
one grey level. The release truncates the blend to uint8; we round to nearest
(pasting an unmodified crop back then leaves it unbiased). A float render is
rounded to uint8 before the warp; the warp and the blend run in float32.
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


# cv2.warpAffine's fixed point (imgproc/src/imgwarp.cpp): coordinates in 1/1024 (AB_BITS),
# rounded to 1/32 pixel (INTER_BITS) for the bilinear table.
_AB_BITS, _INTER_BITS = 10, 5
_INTER_TAB = 1 << _INTER_BITS


def _inverse_affine(M_c2o: np.ndarray) -> np.ndarray:
    """frame -> crop, in the operation order of warpAffine's own inversion (float64)."""
    m = np.asarray(M_c2o, np.float64)[:2].reshape(6).copy()
    det = m[0] * m[4] - m[1] * m[3]
    det = 1.0 / det if det != 0 else 0.0
    a11, a22 = m[4] * det, m[0] * det
    m[0], m[1], m[3], m[4] = a11, m[1] * -det, m[3] * -det, a22
    b1 = -m[0] * m[2] - m[1] * m[5]
    b2 = -m[3] * m[2] - m[4] * m[5]
    m[2], m[5] = b1, b2
    return m


def warp_coordinates(
    M_c2o: np.ndarray, region: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where ``cv2.warpAffine(crop, M_c2o, frame_size, INTER_LINEAR)`` samples the crop for
    each frame pixel of `region` (x0, y0, x1, y1): integer pixel (ix, iy) and 1/32-pixel
    fractions (fx, fy), each int64 [y1 - y0, x1 - x0], bit-exactly as the whole-frame warp."""
    m = _inverse_affine(M_c2o)
    x0, y0, x1, y1 = region
    xs = np.arange(x0, x1, dtype=np.float64)
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    scale = 1 << _AB_BITS
    round_delta = scale // _INTER_TAB // 2
    # saturate_cast<int>(double) rounds half to even, as np.rint.
    X = np.rint((m[1] * ys + m[2]) * scale).astype(np.int64) + round_delta
    Y = np.rint((m[4] * ys + m[5]) * scale).astype(np.int64) + round_delta
    X = (X + np.rint(m[0] * xs * scale).astype(np.int64)) >> (_AB_BITS - _INTER_BITS)
    Y = (Y + np.rint(m[3] * xs * scale).astype(np.int64)) >> (_AB_BITS - _INTER_BITS)
    return X >> _INTER_BITS, Y >> _INTER_BITS, X & (_INTER_TAB - 1), Y & (_INTER_TAB - 1)


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
            if x1 > x0 and y1 > y0:
                ix, iy, fx, fy = warp_coordinates(M_c2o, (x0, y0, x1, y1))
                # remap's fixed-point maps: what warpAffine builds internally, so the region
                # gets exactly the whole-frame warp's samples.
                limit = np.iinfo(np.int16)
                xy = np.stack([ix, iy], -1).clip(limit.min, limit.max).astype(np.int16)
                tab = (fy * _INTER_TAB + fx).astype(np.uint16)
                mask = cv2.remap(
                    self.mask(*crop_hw), xy, tab, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
                )
                mask = np.clip(mask, 0, 1)
            else:
                xy = tab = None
                mask = np.zeros((0, 0), np.float32)
            self._key, self._cached = key, ((x0, y0, x1, y1), (xy, tab), mask, 1 - mask)
        return self._cached

    def __call__(self, frame: np.ndarray, crop: np.ndarray, M_c2o: np.ndarray) -> np.ndarray:
        """Frame [H, W, 3] uint8, rendered crop [h, w, 3] (uint8, or float in [0, 255]),
        M_c2o (3x3 or 2x3, crop -> frame) -> new frame [H, W, 3] uint8."""
        if frame.ndim != 3 or crop.ndim != 3 or frame.shape[2] != crop.shape[2]:
            raise ValueError(f"frame {frame.shape} and crop {crop.shape} must be [H, W, C] alike")
        M_c2o = np.asarray(M_c2o, dtype=np.float64)
        (x0, y0, x1, y1), (xy, tab), mask, inv_mask = self._prepare(
            M_c2o, crop.shape[:2], frame.shape[:2]
        )
        out = np.array(frame, dtype=np.uint8, copy=True)
        if mask.size == 0:
            return out
        if crop.dtype != np.uint8:  # a float render in [0, 255]
            crop = np.clip(np.asarray(crop, dtype=np.float32) + 0.5, 0, 255).astype(np.uint8)
        # float32 warp as the release (a uint8 warp rounds once more)
        warped = cv2.remap(
            crop.astype(np.float32), xy, tab, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        region = out[y0:y1, x0:x1].astype(np.float32)
        blended = cv2.blendLinear(warped, region, mask, inv_mask)
        out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)  # round to nearest
        return out


def paste_back(frame: np.ndarray, crop: np.ndarray, M_c2o: np.ndarray) -> np.ndarray:
    """One-off `PasteBack` (no mask cache across calls)."""
    return PasteBack()(frame, crop, M_c2o)
