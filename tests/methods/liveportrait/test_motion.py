"""Relative motion: the source keeps its own pose; the driving video adds its change from frame 0."""

from __future__ import annotations

import torch

from talkinghead.methods.liveportrait.motion import (
    relative_driving_keypoints,
    rotation_of,
    source_keypoints,
)
from talkinghead.models.keypoints import degree_to_bin66, transform_keypoints


def info(yaw_deg: float, exp_shift: float = 0.0, scale: float = 1.0, g=None) -> dict:
    g = g or torch.Generator().manual_seed(0)
    return {
        "pitch": torch.tensor([[3.0]]),
        "yaw": torch.tensor([[yaw_deg]]),
        "roll": torch.tensor([[-2.0]]),
        "t": torch.tensor([[0.01, -0.02, 0.3]]),
        "exp": torch.full((1, 63), exp_shift),
        "scale": torch.tensor([[scale]]),
        "kp": torch.randn(1, 63, generator=g) * 0.3,
    }


def test_the_first_driving_frame_gives_the_source_keypoints() -> None:
    src, first = info(10.0), info(-25.0, exp_shift=0.1, scale=1.4)
    x_d = relative_driving_keypoints(src, first, first)
    torch.testing.assert_close(x_d, source_keypoints(src))


def test_a_driving_yaw_turn_turns_the_source_by_the_same_angle() -> None:
    src = info(0.0)
    first, turned = info(5.0), info(20.0)  # the driving face turns by 15 degrees
    x_d = relative_driving_keypoints(src, turned, first)
    # With pitch = roll = 0, R_d R_d0^T R_s is the pose of yaw 0 + (20 - 5) degrees.
    src0 = {**src, "pitch": torch.zeros(1, 1), "roll": torch.zeros(1, 1)}
    f0 = {**first, "pitch": torch.zeros(1, 1), "roll": torch.zeros(1, 1)}
    t0 = {**turned, "pitch": torch.zeros(1, 1), "roll": torch.zeros(1, 1)}
    expected = transform_keypoints(
        src0["kp"],
        src0["pitch"],
        torch.tensor([[15.0]]),
        src0["roll"],
        src0["t"],
        src0["exp"],
        src0["scale"],
    )
    torch.testing.assert_close(relative_driving_keypoints(src0, t0, f0), expected)
    # In general: the composed rotation, the source's scale and translation (z dropped).
    rot = rotation_of(turned) @ rotation_of(first).transpose(1, 2) @ rotation_of(src)
    torch.testing.assert_close(
        x_d, src["kp"].reshape(1, -1, 3) @ rot + torch.tensor([[[0.01, -0.02, 0.0]]])
    )


def test_pose_logits_and_degrees_agree() -> None:
    src = info(0.0)
    logits = {k: v.clone() for k, v in src.items()}
    for name in ("pitch", "yaw", "roll"):
        # A one-hot-ish logit vector whose expected bin is the angle's.
        idx = degree_to_bin66(src[name]).round().long().item()
        logits[name] = torch.full((1, 66), -1e4)
        logits[name][0, idx] = 0.0
        src[name] = torch.tensor([[idx * 3 - 97.5]])
    torch.testing.assert_close(rotation_of(logits), rotation_of(src))
