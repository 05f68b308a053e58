"""LivePortrait's implicit-keypoint algebra, batched in torch.

Conventions follow the release: head pose comes as 66-bin logits (3 degrees per
bin, centred so that bin 32.5 is 0 degrees), the rotation is R = Rz(roll) Ry(yaw)
Rx(pitch), and keypoints are row vectors, so the transform is
`x = s * (kp @ R^T + exp) + t` with only t's x and y applied.
"""

from __future__ import annotations

import math

import torch

NUM_BINS = 66


def bin66_to_degree(pose: torch.Tensor) -> torch.Tensor:
    """66-bin logits [..., 66] -> degrees [...]; anything else is taken to be degrees already.

    The expected bin index under the softmax is mapped with `idx * 3 - 97.5`.
    """
    if pose.ndim > 1 and pose.shape[-1] == NUM_BINS:
        idx = torch.arange(NUM_BINS, dtype=pose.dtype, device=pose.device)
        return (torch.softmax(pose, dim=-1) * idx).sum(-1) * 3 - 97.5
    return pose


def degree_to_bin66(degree: torch.Tensor) -> torch.Tensor:
    """Expected-bin index of an angle, the inverse of `bin66_to_degree`'s affine map."""
    return (degree + 97.5) / 3


def _as_column(angle: torch.Tensor) -> torch.Tensor:
    angle = bin66_to_degree(angle)
    if angle.ndim == 0:
        angle = angle.reshape(1)
    return angle.reshape(angle.shape[0], -1)[:, :1]


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Euler angles (degrees, [B] or [B, 1], or 66-bin logits [B, 66]) -> [B, 3, 3].

    Returns the transpose of Rz @ Ry @ Rx, i.e. the matrix that right-multiplies
    row-vector keypoints, exactly as the release's `get_rotation_matrix`.
    """
    x, y, z = (_as_column(a) * (math.pi / 180) for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    rot_x = torch.cat([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(-1, 3, 3)
    rot_y = torch.cat([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(-1, 3, 3)
    rot_z = torch.cat([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).view(-1, 3, 3)
    return (rot_z @ rot_y @ rot_x).transpose(1, 2)


def transform_keypoints(
    kp: torch.Tensor,
    pitch: torch.Tensor,
    yaw: torch.Tensor,
    roll: torch.Tensor,
    t: torch.Tensor,
    exp: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Canonical keypoints [B, K*3] or [B, K, 3] -> posed keypoints [B, K, 3].

    `x = scale * (kp @ R + exp) + t`, with `t` applied to x and y only (the
    release drops z so the warp keeps the source's depth placement).
    """
    bs = kp.shape[0]
    kp = kp.reshape(bs, -1, 3)
    rot = rotation_matrix(pitch, yaw, roll).to(kp.dtype)
    out = (kp @ rot + exp.reshape(bs, -1, 3)) * scale.reshape(bs, 1, 1)
    shift = torch.zeros_like(out[:, :1, :])
    shift[..., :2] = t.reshape(bs, -1)[:, None, :2]
    return out + shift


def transform_keypoints_info(info: dict[str, torch.Tensor]) -> torch.Tensor:
    """`transform_keypoints` over a motion-extractor dict (keys pitch, yaw, roll, t, exp, scale, kp)."""
    return transform_keypoints(
        info["kp"], info["pitch"], info["yaw"], info["roll"], info["t"], info["exp"], info["scale"]
    )
