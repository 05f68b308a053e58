"""LivePortrait's warping module W: moves the source feature volume from source to driving keypoints.

The dense-motion sub-network turns the two keypoint sets into one backward flow per
keypoint (plus the identity "background" flow), blends them with a predicted
softmax mask, and predicts an occlusion map. All `grid_sample` calls are trilinear,
`align_corners=False`, zero padding, as in the release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from talkinghead.models.conv_forms import TapsFirstConv2d, structural_copy
from talkinghead.models.liveportrait_blocks import (
    Hourglass,
    PolyphaseUpBlock3d,
    SameBlock2d,
    kp2gaussian,
    make_coordinate_grid,
)


@dataclass(frozen=True)
class DenseMotionConfig:
    """Hyper-parameters of the dense-motion network (the release hard-codes these values)."""

    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    reshape_depth: int = 16  # depth of the feature volume; sizes the occlusion conv's input
    compress: int = 4
    kp_variance: float = 0.01


class DenseMotion(NamedTuple):
    """Outputs of the dense-motion network."""

    mask: torch.Tensor  # [B, K + 1, d, h, w], softmax over the K + 1 flows (index 0: identity)
    deformation: torch.Tensor  # [B, d, h, w, 3], sampling grid for grid_sample
    occlusion_map: torch.Tensor | None  # [B, 1, h, w] in (0, 1), or None when not estimated


class DenseMotionNetwork(nn.Module):
    """Predicts the deformation grid and occlusion map from a feature volume and two keypoint sets."""

    def __init__(
        self,
        num_kp: int = 21,
        feature_channel: int = 32,
        estimate_occlusion_map: bool = True,
        config: DenseMotionConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = config or DenseMotionConfig()
        self.num_kp = num_kp
        self.kp_variance = cfg.kp_variance
        # Hourglass input per flow: 1 heatmap difference + `compress` deformed feature channels.
        self.hourglass = Hourglass(
            block_expansion=cfg.block_expansion,
            in_features=(num_kp + 1) * (cfg.compress + 1),
            max_features=cfg.max_features,
            num_blocks=cfg.num_blocks,
        )
        out_filters = self.hourglass.out_filters
        self.mask = nn.Conv3d(out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, cfg.compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(cfg.compress)
        self.occlusion = (
            nn.Conv2d(out_filters * cfg.reshape_depth, 1, kernel_size=7, padding=3)
            if estimate_occlusion_map
            else None
        )

    def sparse_motions(
        self, spatial_size: tuple[int, int, int], kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> torch.Tensor:
        """[B, K + 1, d, h, w, 3]: identity, then `grid - kp_driving[k] + kp_source[k]` per keypoint.

        Zeroth-order motion only: each keypoint translates its neighbourhood, no Jacobian.
        """
        identity = make_coordinate_grid(spatial_size, kp_source.dtype, kp_source.device)
        bs = kp_source.shape[0]
        kp_shape = (bs, self.num_kp, 1, 1, 1, 3)
        # Same operation order as the release (subtract driving, then add source).
        per_kp = identity - kp_driving.reshape(kp_shape) + kp_source.reshape(kp_shape)
        return torch.cat([identity.expand(bs, 1, *identity.shape), per_kp], dim=1)

    def forward(
        self, feature: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> DenseMotion:
        """feature [B, C, d, h, w], keypoints [B, K, 3] (normalised (x, y, z)) -> DenseMotion.

        Argument order matches `WarpingNetwork.forward`; the release's sub-module takes
        (feature, kp_driving, kp_source), so call it by keyword when porting code.
        """
        bs, _, d, h, w = feature.shape
        if bs > 1 and feature.stride(0) == 0:
            # One source volume broadcast over the batch (an image source): compress it once
            # and keep it broadcast, instead of copying the volume per frame.
            feature = F.relu(self.norm(self.compress(feature[:1])), inplace=True)
            feature = feature.expand(bs, -1, -1, -1, -1)
        else:
            feature = F.relu(self.norm(self.compress(feature)), inplace=True)
        motions = self.sparse_motions((d, h, w), kp_source, kp_driving)

        # Sample the compressed volume once per flow. Stacking the K + 1 grids along the
        # output depth gives the same per-voxel samples as repeating the feature K + 1 times.
        deformed = F.grid_sample(
            feature,
            motions.reshape(bs, -1, h, w, 3),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        deformed = rearrange(deformed, "b c (k d) h w -> b k c d h w", d=d)

        heatmap = kp2gaussian(kp_driving, (d, h, w), self.kp_variance) - kp2gaussian(
            kp_source, (d, h, w), self.kp_variance
        )
        # Far from a keypoint the gaussians underflow into subnormals, which make x86 convolutions
        # several times slower (nearly half the CPU forward); zero them (changes values < 1.2e-38).
        heatmap = heatmap.masked_fill(heatmap.abs() < torch.finfo(heatmap.dtype).tiny, 0.0)
        # The identity flow gets an all-zero heatmap.
        heatmap = F.pad(heatmap, (0, 0, 0, 0, 0, 0, 1, 0))
        hourglass_in = torch.cat([heatmap.unsqueeze(2), deformed], dim=2)
        prediction = self.hourglass(hourglass_in.reshape(bs, -1, d, h, w))

        mask = torch.softmax(self.mask(prediction), dim=1)
        deformation = (motions * mask.unsqueeze(-1)).sum(dim=1)

        occlusion_map = None
        if self.occlusion is not None:
            folded = rearrange(prediction, "b c d h w -> b (c d) h w")
            occlusion_map = torch.sigmoid(self.occlusion(folded))
        return DenseMotion(mask, deformation, occlusion_map)


class WarpingNetwork(nn.Module):
    """Warps f_s by the dense motion, folds depth into channels and projects to the decoder's input.

    With the defaults (the release's): feature_3d Bx32x16x64x64 and keypoints Bx21x3 give
    Bx256x64x64. The feature volume must have `reshape_channel` channels and
    `dense_motion.reshape_depth` depth levels, with `reshape_channel * reshape_depth ==
    max_features`; h and w must be divisible by 2**dense_motion.num_blocks.
    """

    def __init__(
        self,
        num_kp: int = 21,
        block_expansion: int = 64,
        max_features: int = 512,
        num_down_blocks: int = 2,
        reshape_channel: int = 32,
        estimate_occlusion_map: bool = True,
        flag_use_occlusion_map: bool = True,
        dense_motion: DenseMotionConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        cfg = dense_motion if isinstance(dense_motion, DenseMotionConfig) else DenseMotionConfig()
        if isinstance(dense_motion, Mapping):
            cfg = replace(cfg, **dense_motion)
        if reshape_channel * cfg.reshape_depth != max_features:
            raise ValueError(
                f"reshape_channel * dense_motion.reshape_depth ({reshape_channel} * "
                f"{cfg.reshape_depth}) must equal max_features ({max_features})"
            )
        self.flag_use_occlusion_map = flag_use_occlusion_map
        self.dense_motion_network = DenseMotionNetwork(
            num_kp=num_kp,
            feature_channel=reshape_channel,
            estimate_occlusion_map=estimate_occlusion_map,
            config=cfg,
        )
        width = block_expansion * 2**num_down_blocks
        self.third = SameBlock2d(max_features, width, kernel_size=3, padding=1, lrelu=True)
        self.fourth = nn.Conv2d(width, width, kernel_size=1)

    def forward_with_motion(
        self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> tuple[torch.Tensor, DenseMotion]:
        """Like `forward`, also returning the dense-motion intermediates."""
        motion = self.dense_motion_network(feature_3d, kp_source, kp_driving)
        out = F.grid_sample(
            feature_3d,
            motion.deformation,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        out = self.fourth(self.third(rearrange(out, "b c d h w -> b (c d) h w")))
        if self.flag_use_occlusion_map and motion.occlusion_map is not None:
            out = out * motion.occlusion_map
        return out, motion

    def forward(
        self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> torch.Tensor:
        """feature_3d [B, C, D, H, W], kp_source / kp_driving [B, K, 3] -> warped feature [B, 256, H, W]."""
        return self.forward_with_motion(feature_3d, kp_source, kp_driving)[0]


# Only the hourglass's last up blocks gain from the polyphase form: the deeper ones run on
# 2x2 and 4x4 inputs, where reading the weights (1.8x larger summed) costs more than the
# multiply-adds saved (at the release's size: 54, 49, 42 ms -> 18, 20, 22 ms; 47, 54 -> 66, 51).
POLYPHASE_UP_BLOCKS = 3


def is_inference_form(net: WarpingNetwork) -> bool:
    """True for a warp built by `warp_inference_form`."""
    return any(isinstance(m, PolyphaseUpBlock3d | TapsFirstConv2d) for m in net.modules())


def warp_inference_form(net: WarpingNetwork) -> WarpingNetwork:
    """`net` for inference (eval mode, sharing its weights): the last hourglass up blocks as
    `PolyphaseUpBlock3d` and the occlusion head as a `TapsFirstConv2d`. The same values within
    float rounding (about 1e-6), 10% faster on CPU. The rewritten convs are built from the
    weights as they are now; `net` is unchanged. A warp already in that form is returned as it is."""
    if is_inference_form(net):
        return net
    fast = structural_copy(net).eval()
    dense = fast.dense_motion_network
    blocks = dense.hourglass.decoder.up_blocks
    for i in range(max(0, len(blocks) - POLYPHASE_UP_BLOCKS), len(blocks)):
        blocks[i] = PolyphaseUpBlock3d(blocks[i])
    # Taps first makes out_channels x 49 maps: a gain only for a head with few outputs.
    if (
        dense.occlusion is not None
        and dense.occlusion.out_channels * 4 <= dense.occlusion.in_channels
    ):
        dense.occlusion = TapsFirstConv2d(dense.occlusion)
    return fast
