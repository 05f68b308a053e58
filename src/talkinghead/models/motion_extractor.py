"""LivePortrait's motion extractor: head pose, translation, expression, scale and canonical keypoints.

A ConvNeXt-V2 backbone with seven linear heads on its pooled features. The
checkpoint nests everything under `detector.`; the heads live next to the backbone
layers there, which is why `KeypointDetector` extends the backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from talkinghead.models.convnextv2 import CONVNEXTV2_PRESETS, ConvNeXtV2, ConvNeXtV2Config

MotionOutputs = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]
# What `forward` returns, in order: the release's head order (its ONNX and TensorRT
# builds keep it). The same keys as `talkinghead.methods.ditto.motion.format.MOTION_KEYS`, permuted.
OUTPUT_KEYS: tuple[str, ...] = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


def resolve_backbone(backbone: str | ConvNeXtV2Config | Mapping[str, Any]) -> ConvNeXtV2Config:
    if isinstance(backbone, ConvNeXtV2Config):
        return backbone
    if isinstance(backbone, Mapping):  # e.g. from a JSON network configuration
        return ConvNeXtV2Config(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in backbone.items()}
        )
    try:
        return CONVNEXTV2_PRESETS[backbone]
    except KeyError:
        raise ValueError(
            f"unknown backbone {backbone!r}; expected a ConvNeXtV2Config or one of {', '.join(CONVNEXTV2_PRESETS)}"
        ) from None


class KeypointDetector(ConvNeXtV2):
    """Backbone plus heads; returns (pitch, yaw, roll, t, exp, scale, kp)."""

    def __init__(self, config: ConvNeXtV2Config, num_kp: int = 21, num_bins: int = 66) -> None:
        super().__init__(config)
        dim = self.out_features
        # Registration order fixes the state_dict order, which mirrors the release's.
        self.fc_kp = nn.Linear(dim, 3 * num_kp)
        self.fc_scale = nn.Linear(dim, 1)
        self.fc_pitch = nn.Linear(dim, num_bins)
        self.fc_yaw = nn.Linear(dim, num_bins)
        self.fc_roll = nn.Linear(dim, num_bins)
        self.fc_t = nn.Linear(dim, 3)
        self.fc_exp = nn.Linear(dim, 3 * num_kp)

    def forward(self, x: torch.Tensor) -> MotionOutputs:  # type: ignore[override]
        f = self.forward_features(x)
        return (
            self.fc_pitch(f),
            self.fc_yaw(f),
            self.fc_roll(f),
            self.fc_t(f),
            self.fc_exp(f),
            self.fc_scale(f),
            self.fc_kp(f),
        )


class MotionExtractor(nn.Module):
    """Image [B, 3, H, W] (RGB in [0, 1], 256x256 in the release) -> motion descriptors.

    `forward` returns the tuple `(pitch, yaw, roll, t, exp, scale, kp)` with shapes
    [B, num_bins] x 3 (pose bin logits; see `keypoints.bin66_to_degree`), [B, 3],
    [B, 3 * num_kp], [B, 1] and [B, 3 * num_kp]. The defaults are the release's network;
    `backbone` may be a preset name or a `ConvNeXtV2Config` (tiny test variants).
    """

    def __init__(
        self,
        num_kp: int = 21,
        backbone: str | ConvNeXtV2Config | Mapping[str, Any] = "convnextv2_tiny",
        num_bins: int = 66,
    ) -> None:
        super().__init__()
        self.num_kp = num_kp
        self.num_bins = num_bins
        self.detector = KeypointDetector(
            resolve_backbone(backbone), num_kp=num_kp, num_bins=num_bins
        )

    def forward(self, image: torch.Tensor) -> MotionOutputs:
        return self.detector(image)
