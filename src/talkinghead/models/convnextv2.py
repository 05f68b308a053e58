"""A compact ConvNeXt-V2 backbone (Woo et al. 2023), as used by LivePortrait's motion extractor.

Layout and parameter names follow the LivePortrait/Ditto release so that its
checkpoints load unchanged: `downsample_layers.{i}` (the stem is index 0),
`stages.{i}.{j}` blocks and a final `norm` applied after global average pooling.
Classification heads are left to the user (see `motion_extractor.py`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ConvNeXtV2Config:
    """Backbone hyper-parameters; the defaults are ConvNeXt-V2-tiny."""

    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    in_channels: int = 3
    eps: float = 1e-6  # every LayerNorm of the backbone
    stem_stride: int = 4
    mlp_ratio: int = 4
    drop_path_rate: float = 0.0  # stochastic depth, training only

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.dims) or not self.depths:
            raise ValueError(
                f"depths {self.depths} and dims {self.dims} must be non-empty and of equal length"
            )


CONVNEXTV2_PRESETS: dict[str, ConvNeXtV2Config] = {
    "convnextv2_atto": ConvNeXtV2Config(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)),
    "convnextv2_femto": ConvNeXtV2Config(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384)),
    "convnextv2_pico": ConvNeXtV2Config(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512)),
    "convnextv2_nano": ConvNeXtV2Config(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640)),
    "convnextv2_tiny": ConvNeXtV2Config(),
    "convnextv2_base": ConvNeXtV2Config(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
}


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor.

    Written out with the biased variance, in the release's operation order, rather than
    permuting to `F.layer_norm`: the two round differently and the reference numbers
    come from this form.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        centred = x - mean
        var = centred.pow(2).mean(1, keepdim=True)
        x = centred / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GRN(nn.Module):
    """Global response normalisation on channels-last (N, H, W, C) activations."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        # [1, 1, 1, C] is the checkpoint's shape; it broadcasts over NHWC directly.
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability p."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """dwconv 7x7 -> LayerNorm -> Linear (x4) -> GELU -> GRN -> Linear, plus the residual."""

    def __init__(
        self, dim: int, eps: float = 1e-6, mlp_ratio: int = 4, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        hidden = mlp_ratio * dim
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        # Pointwise convolutions as Linear layers on NHWC (the checkpoint stores 2-D weights).
        self.pwconv1 = nn.Linear(dim, hidden)
        self.grn = GRN(hidden)
        self.pwconv2 = nn.Linear(hidden, dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        y = y.permute(0, 3, 1, 2)
        return x + drop_path(y, self.drop_path, self.training)


class ConvNeXtV2(nn.Module):
    """Feature extractor: image [B, C, H, W] -> pooled, normalised features [B, dims[-1]]."""

    def __init__(self, config: ConvNeXtV2Config | None = None) -> None:
        super().__init__()
        cfg = config or ConvNeXtV2Config()
        self.config = cfg
        dims, eps = cfg.dims, cfg.eps

        self.downsample_layers = nn.ModuleList()
        stem = nn.Sequential(
            nn.Conv2d(
                cfg.in_channels, dims[0], kernel_size=cfg.stem_stride, stride=cfg.stem_stride
            ),
            LayerNorm2d(dims[0], eps=eps),
        )
        self.downsample_layers.append(stem)
        for d_in, d_out in itertools.pairwise(dims):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm2d(d_in, eps=eps), nn.Conv2d(d_in, d_out, kernel_size=2, stride=2)
                )
            )

        # Stochastic depth grows linearly from 0 over all blocks, as in the paper.
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        self.stages = nn.ModuleList()
        start = 0
        for dim, depth in zip(dims, cfg.depths, strict=True):
            blocks = [
                Block(dim, eps=eps, mlp_ratio=cfg.mlp_ratio, drop_path=rates[start + j])
                for j in range(depth)
            ]
            self.stages.append(nn.Sequential(*blocks))
            start += depth

        self.norm = nn.LayerNorm(dims[-1], eps=eps)

    @property
    def out_features(self) -> int:
        return self.config.dims[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        return self.norm(x.mean((-2, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
