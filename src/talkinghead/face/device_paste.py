"""Paste-back in torch, on the device the crops were rendered on.

The same paste-back as `talkinghead.face.paste.PasteBack` (the release's feathered
mask, its whole-frame ``cv2.warpAffine`` sample positions from `warp_coordinates`,
a float32 bilinear warp and blend, rounded to nearest), so frames never leave the
device as floats: uint8 crops in, uint8 frames out. Within one grey level of the
release's paste-back (tests/face/test_device_paste.py checks it on CPU tensors).

Plain ``grid_sample`` is not used: it samples at exact positions, while the release's
warp rounds each position to 1/32 pixel, which differs by up to 8 levels on sharp edges.
The per-matrix plan (four gather indices and bilinear weights per frame pixel under
the crop, and the warped mask) is cached: an image source builds it once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from talkinghead.face.paste import _INTER_TAB, _region, feather_mask, warp_coordinates


@dataclass
class _Plan:
    region: tuple[int, int, int, int]  # x0, y0, x1, y1 in the frame
    index: torch.Tensor  # [4, R] int64 flat crop pixel of each bilinear tap (clamped)
    weight: torch.Tensor  # [4, R, 1] float32 tap weights, 0 for taps outside the crop
    mask: torch.Tensor  # [R, 1] float32 warped feathered mask in [0, 1]


class DevicePasteBack:
    """Pastes uint8 crops [B, h, w, 3] into uint8 frames [B, H, W, 3] on their device."""

    def __init__(self, ratio_w: float = 0.9, ratio_h: float = 0.9, max_plans: int = 64) -> None:
        self.ratio = (ratio_w, ratio_h)
        self.max_plans = max_plans  # a video source changes matrix per frame: bound the cache
        self._plans: dict[tuple, _Plan | None] = {}

    def plan(
        self,
        M_c2o: np.ndarray,
        crop_hw: tuple[int, int],
        frame_hw: tuple[int, int],
        device: torch.device,
    ) -> _Plan | None:
        """The gather plan for one matrix (None: the crop misses the frame)."""
        M_c2o = np.asarray(M_c2o, np.float64)
        key = (M_c2o.tobytes(), crop_hw, frame_hw, str(device))
        if key in self._plans:
            return self._plans[key]
        x0, y0, x1, y1 = region = _region(M_c2o, crop_hw, frame_hw)
        plan = None
        if x1 > x0 and y1 > y0:
            h, w = crop_hw
            ix, iy, fx, fy = (a.reshape(-1) for a in warp_coordinates(M_c2o, region))
            wx, wy = fx / _INTER_TAB, fy / _INTER_TAB
            index, weight = [], []
            for dy, dx, tap in (
                (0, 0, (1 - wy) * (1 - wx)),
                (0, 1, (1 - wy) * wx),
                (1, 0, wy * (1 - wx)),
                (1, 1, wy * wx),
            ):
                px, py = ix + dx, iy + dy
                inside = (px >= 0) & (px < w) & (py >= 0) & (py < h)  # zero border, as cv2
                index.append(np.clip(py, 0, h - 1) * w + np.clip(px, 0, w - 1))
                weight.append(np.where(inside, tap, 0.0))
            index_t = torch.from_numpy(np.stack(index)).to(device)
            weight_t = torch.from_numpy(np.stack(weight).astype(np.float32))[..., None].to(device)
            mask = torch.from_numpy(feather_mask(w, h, *self.ratio)).to(device).reshape(-1, 1)
            warped_mask = (mask[index_t] * weight_t).sum(0).clamp_(0, 1)
            plan = _Plan(region, index_t, weight_t, warped_mask)
        if len(self._plans) >= self.max_plans:
            self._plans.pop(next(iter(self._plans)))
        self._plans[key] = plan
        return plan

    def __call__(
        self,
        frames: torch.Tensor,
        crops: torch.Tensor,
        M_c2o: np.ndarray,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """frames [B, H, W, 3] uint8 (or one frame expanded to B), crops [B, h, w, 3] uint8
        on the same device, M_c2o [3, 3] (all frames) or [B, 3, 3] -> [B, H, W, 3] uint8.

        `out` (optional, [B, H, W, 3] uint8) receives the result instead of a new tensor."""
        if frames.dim() != 4 or crops.dim() != 4 or frames.shape[-1] != crops.shape[-1]:
            raise ValueError(
                f"frames {tuple(frames.shape)} and crops {tuple(crops.shape)} must be [B, H, W, C]"
            )
        if crops.dtype != torch.uint8 or frames.dtype != torch.uint8:
            raise ValueError("frames and crops must be uint8 (round float renders first)")
        b, h, w, c = crops.shape
        M = np.asarray(M_c2o, np.float64)
        mats = [M] * b if M.ndim == 2 else list(M)
        if len(mats) != b:
            raise ValueError(f"{len(mats)} matrices for {b} crops")
        if out is None:
            out = frames.clone() if frames.stride(0) != 0 else frames.contiguous().clone()
        else:
            out.copy_(frames)
        flat = crops.reshape(b, h * w, c)
        # Frames sharing a matrix (an image source) are pasted in one batched gather.
        groups: dict[bytes, list[int]] = {}
        for i, m in enumerate(mats):
            groups.setdefault(m.tobytes(), []).append(i)
        for members in groups.values():
            plan = self.plan(mats[members[0]], (h, w), tuple(frames.shape[1:3]), crops.device)
            if plan is None:
                continue
            x0, y0, x1, y1 = plan.region
            contiguous = len(members) == members[-1] - members[0] + 1
            sel = slice(members[0], members[-1] + 1) if contiguous else members
            src = flat[sel].float()  # [n, h*w, c]
            warped = src[:, plan.index[0]] * plan.weight[0]  # [n, R, c], one tap at a time
            for tap in range(1, 4):
                warped.addcmul_(src[:, plan.index[tap]], plan.weight[tap])
            region = out[sel, y0:y1, x0:x1].reshape(len(members), -1, c).float()
            blended = torch.lerp(region, warped, plan.mask).add_(0.5).clamp_(0, 255)
            blended = blended.to(torch.uint8).reshape(len(members), y1 - y0, x1 - x0, c)
            out[sel, y0:y1, x0:x1] = blended
        return out
