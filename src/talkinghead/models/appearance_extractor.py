"""LivePortrait's appearance feature extractor F: source image -> 3D feature volume f_s."""

from __future__ import annotations

from itertools import pairwise

import torch
from einops import rearrange
from torch import nn

from talkinghead.models.liveportrait_blocks import DownBlock2d, ResBlock3d, SameBlock2d


class AppearanceFeatureExtractor(nn.Module):
    """2D encoder whose channels are folded into (channel, depth), then refined by 3D res blocks.

    With the defaults (the release's), a Bx3x256x256 RGB image in [0, 1] gives a
    Bx32x16x64x64 volume: `max_features` channels at 1/2**num_down_blocks resolution,
    split as `reshape_channel` x `reshape_depth`.
    """

    def __init__(
        self,
        image_channel: int = 3,
        block_expansion: int = 64,
        num_down_blocks: int = 2,
        max_features: int = 512,
        reshape_channel: int = 32,
        reshape_depth: int = 16,
        num_resblocks: int = 6,
    ) -> None:
        super().__init__()
        if reshape_channel * reshape_depth != max_features:
            raise ValueError(
                f"reshape_channel * reshape_depth ({reshape_channel} * {reshape_depth}) "
                f"must equal max_features ({max_features})"
            )
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth

        widths = [min(max_features, block_expansion * 2**i) for i in range(num_down_blocks + 1)]
        self.first = SameBlock2d(image_channel, block_expansion, kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(DownBlock2d(cin, cout) for cin, cout in pairwise(widths))
        self.second = nn.Conv2d(widths[-1], max_features, kernel_size=1)
        # Sequential child names "3dr{i}" are the checkpoint's key names.
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, image_channel, H, W] -> feature_3d [B, reshape_channel, reshape_depth, h, w]."""
        out = self.first(image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        out = rearrange(out, "b (c d) h w -> b c d h w", c=self.reshape_channel)
        return self.resblocks_3d(out)
