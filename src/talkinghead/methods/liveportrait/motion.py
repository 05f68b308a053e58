"""Relative motion, as LivePortrait drives a portrait from a video.

The source keeps its own pose, expression, scale and position; the driving video
contributes only how each frame differs from its first frame:

    R     = R_d,i  R_d,0^T  R_s
    exp   = exp_s + (exp_d,i - exp_d,0)
    scale = scale_s * scale_d,i / scale_d,0
    t     = t_s + (t_d,i - t_d,0), z dropped

and the driving keypoints are ``scale * (kp_s R + exp) + t`` (row vectors, the
convention of `talkinghead.models.keypoints`). A driving frame equal to the first
gives back the source's own keypoints.
"""

from __future__ import annotations

import torch

from talkinghead.models.keypoints import bin66_to_degree, rotation_matrix, transform_keypoints

MotionInfo = dict[str, torch.Tensor]  # the motion extractor's heads, by name (OUTPUT_KEYS)


def rotation_of(info: MotionInfo) -> torch.Tensor:
    """[B, 3, 3] right-multiplying rotation from pose logits (or degrees)."""
    return rotation_matrix(
        bin66_to_degree(info["pitch"]), bin66_to_degree(info["yaw"]), bin66_to_degree(info["roll"])
    )


def source_keypoints(info: MotionInfo) -> torch.Tensor:
    """The source's posed keypoints x_s [B, K, 3]."""
    return transform_keypoints(
        info["kp"], info["pitch"], info["yaw"], info["roll"], info["t"], info["exp"], info["scale"]
    )


def relative_driving_keypoints(
    source: MotionInfo, driving: MotionInfo, first: MotionInfo
) -> torch.Tensor:
    """Driving keypoints [B, K, 3] for driving frames `driving` [B] relative to `first` [1].

    `source` is one frame ([1]) or one per driving frame ([B]).
    """
    b = driving["kp"].shape[0]
    kp_s = source["kp"].reshape(source["kp"].shape[0], -1, 3)
    rot = rotation_of(driving) @ rotation_of(first).transpose(1, 2) @ rotation_of(source)
    exp = source["exp"] + driving["exp"] - first["exp"]
    scale = source["scale"] * driving["scale"] / first["scale"]
    t = source["t"] + driving["t"] - first["t"]
    x_d = (kp_s @ rot + exp.reshape(b, -1, 3)) * scale.reshape(b, 1, 1)
    shift = torch.zeros_like(x_d[:, :1, :])
    shift[..., :2] = t.reshape(b, -1)[:, None, :2]
    return x_d + shift


__all__ = ["MotionInfo", "relative_driving_keypoints", "rotation_of", "source_keypoints"]
