"""Convolution blocks and grid helpers shared by LivePortrait's appearance and warping networks.

Attribute names (`conv`, `norm`, `conv1`, ...) are part of the released checkpoints'
key layout and must not change. BatchNorm runs with PyTorch's default eps (1e-5).
Coordinates are normalised to [-1, 1] on an `align_corners=True`-style lattice,
`2 * i / (n - 1) - 1`, ordered (x, y, z) = (width, height, depth) as `grid_sample` expects.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from talkinghead.models.conv_forms import UpsampledConv


class SameBlock2d(nn.Module):
    """Conv2d -> BatchNorm2d -> ReLU (or leaky ReLU, slope 0.01), resolution preserved."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        padding: int = 1,
        lrelu: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features)
        self.negative_slope = 0.01 if lrelu else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.conv(x))
        if self.negative_slope:
            return F.leaky_relu(out, self.negative_slope, inplace=True)
        return F.relu(out, inplace=True)


class DownBlock2d(nn.Module):
    """Conv2d -> BatchNorm2d -> ReLU -> 2x2 average pooling."""

    def __init__(
        self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x)), inplace=True), 2)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x))))))."""

    def __init__(self, features: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, kernel_size, padding=padding)
        self.conv2 = nn.Conv3d(features, features, kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm3d(features)
        self.norm2 = nn.BatchNorm3d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x), inplace=True))
        out = self.conv2(F.relu(self.norm2(out), inplace=True))
        return out.add_(x)


class DownBlock3d(nn.Module):
    """Conv3d -> BatchNorm3d -> ReLU -> average pooling over (h, w) only; depth is kept."""

    def __init__(
        self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size, padding=padding)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x)), inplace=True), (1, 2, 2))


class UpBlock3d(nn.Module):
    """Nearest 2x upsampling of (h, w) -> Conv3d -> BatchNorm3d -> ReLU."""

    def __init__(
        self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size, padding=padding)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return F.relu(self.norm(self.conv(out)), inplace=True)


class PolyphaseUpBlock3d(nn.Module):
    """An `UpBlock3d` for inference with its conv at the input's resolution (`UpsampledConv`):
    2.25x fewer multiply-adds, the same values within float rounding. Shares `block`'s norm."""

    def __init__(self, block: UpBlock3d) -> None:
        super().__init__()
        self.conv = UpsampledConv(block.conv, 2)
        self.norm = block.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)), inplace=True)


def _level_features(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * 2**level)


class HourglassEncoder(nn.Module):
    """`num_blocks` DownBlock3d; returns the input and every level's output (the U-Net skips)."""

    def __init__(
        self, block_expansion: int, in_features: int, num_blocks: int, max_features: int
    ) -> None:
        super().__init__()
        widths = [in_features] + [
            _level_features(block_expansion, max_features, i + 1) for i in range(num_blocks)
        ]
        self.down_blocks = nn.ModuleList(DownBlock3d(cin, cout) for cin, cout in pairwise(widths))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    """UpBlock3d per level, each followed by concatenation with the matching skip, then a 3x3x3 conv.

    The output has `block_expansion + in_features` channels (last up block + the raw input).
    """

    def __init__(
        self, block_expansion: int, in_features: int, num_blocks: int, max_features: int
    ) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            # Every level but the deepest receives its upsampled input concatenated with a skip.
            width = _level_features(block_expansion, max_features, i + 1)
            cin = width if i == num_blocks - 1 else 2 * width
            blocks.append(UpBlock3d(cin, _level_features(block_expansion, max_features, i)))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1]), strict=True):
            out = torch.cat([block(out), skip], dim=1)
        return F.relu(self.norm(self.conv(out)), inplace=True)


class Hourglass(nn.Module):
    """3D U-Net whose pooling halves only (h, w): both must be divisible by 2**num_blocks."""

    def __init__(
        self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256
    ) -> None:
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def make_coordinate_grid(
    spatial_size: tuple[int, int, int], dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Normalised (x, y, z) coordinates of a d x h x w lattice, shape [d, h, w, 3]."""
    d, h, w = spatial_size

    def axis(n: int) -> torch.Tensor:
        return 2 * (torch.arange(n, dtype=dtype, device=device) / (n - 1)) - 1

    x = axis(w).view(1, 1, w).expand(d, h, w)
    y = axis(h).view(1, h, 1).expand(d, h, w)
    z = axis(d).view(d, 1, 1).expand(d, h, w)
    return torch.stack([x, y, z], dim=-1)


def kp2gaussian(
    kp: torch.Tensor, spatial_size: tuple[int, int, int], kp_variance: float
) -> torch.Tensor:
    """Keypoints [B, K, 3] -> unnormalised gaussian heatmaps [B, K, d, h, w]."""
    grid = make_coordinate_grid(spatial_size, kp.dtype, kp.device)
    diff = grid - kp[:, :, None, None, None, :]
    return torch.exp(-0.5 * diff.square().sum(-1) / kp_variance)
