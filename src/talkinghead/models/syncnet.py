"""SyncNet (Chung & Zisserman 2016), the ``syncnet_v2`` model that LSE-C / LSE-D are measured with.

Parameter names are those of ``syncnet_v2.model`` (``netcnnaud.*``, ``netfcaud.*``,
``netcnnlip.*``, ``netfclip.*``), whose Sequential indices count every layer,
pooling and ReLU included.

- audio: MFCC [N, 1, 13, 20] (13 coefficients x 20 frames at 100 Hz = 0.2 s) -> [N, 1024];
- video: face crops [N, 3, 5, 224, 224] (5 frames at 25 fps, BGR, raw 0..255) -> [N, 1024].
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(conv: nn.Module, channels: int, bn: type[nn.Module]) -> list[nn.Module]:
    return [conv, bn(channels), nn.ReLU()]


def _audio_trunk() -> nn.Sequential:
    bn = nn.BatchNorm2d
    return nn.Sequential(
        *_conv_bn_relu(nn.Conv2d(1, 64, 3, padding=1), 64, bn),
        nn.MaxPool2d(1, 1),
        *_conv_bn_relu(nn.Conv2d(64, 192, 3, padding=1), 192, bn),
        nn.MaxPool2d(3, (1, 2)),
        *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1), 384, bn),
        *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1), 256, bn),
        *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1), 256, bn),
        nn.MaxPool2d(3, 2),
        *_conv_bn_relu(nn.Conv2d(256, 512, (5, 4)), 512, bn),
    )


def _lip_trunk() -> nn.Sequential:
    bn = nn.BatchNorm3d
    return nn.Sequential(
        *_conv_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), 96, bn),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
        *_conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, bn),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)),
        *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn),
        *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn),
        *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, bn),
        nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
        *_conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), 512, bn),
    )


def _head(embed_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim)
    )


class SyncNet(nn.Module):
    """Audio and lip embeddings in one space; in sync, the pair is close."""

    def __init__(self, embed_dim: int = 1024) -> None:
        super().__init__()
        self.netcnnaud = _audio_trunk()
        self.netfcaud = _head(embed_dim)
        self.netfclip = _head(embed_dim)
        self.netcnnlip = _lip_trunk()

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(frames).flatten(1))

    def forward(
        self, frames: torch.Tensor, mfcc: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_lip(frames), self.forward_aud(mfcc)
