"""LPIPS (Zhang et al. 2018, v0.1): AlexNet or VGG-16 features compared through learned 1x1 layers.

Parameter names follow the two files the metric is usually run with, so they load
without renaming:

- the ImageNet backbone as torchvision saves it (``alexnet-owt-7be5be79.pth``,
  ``vgg16-397923af.pth``): ``features.<index>.weight|bias``; here under ``net.``;
- the linear heads of the ``lpips`` package (``weights/v0.1/alex.pth``, ``vgg.pth``):
  ``lin<k>.model.1.weight``, a ``Dropout`` at index 0 and the 1x1 conv at index 1.

The input shift/scale of the ``lpips`` package are constants, kept as non-persistent
buffers so the state dict holds exactly the two files' tensors.
"""

from __future__ import annotations

import torch
from torch import nn

# (out_channels, kernel, stride, padding) of torchvision's AlexNet convolutions; a
# max-pool (3, 2) follows the first, second and last.
_ALEX_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
# torchvision's VGG-16 configuration ("D"): channels, "M" = max-pool (2, 2).
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)

# Index just past each ReLU whose output LPIPS compares (the ``lpips`` package's slices).
ALEX_TAPS = (2, 5, 8, 10, 12)
VGG16_TAPS = (4, 9, 16, 23, 30)
ALEX_CHANNELS = (64, 192, 384, 256, 256)
VGG16_CHANNELS = (64, 128, 256, 512, 512)

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def _alexnet_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for i, (out_ch, k, s, p) in enumerate(_ALEX_CONVS):
        layers += [nn.Conv2d(in_ch, out_ch, k, stride=s, padding=p), nn.ReLU()]
        if i in (0, 1, 4):
            layers.append(nn.MaxPool2d(3, 2))
        in_ch = out_ch
    return nn.Sequential(*layers)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), 3, padding=1), nn.ReLU()]
            in_ch = int(v)
    return nn.Sequential(*layers)


class TapFeatures(nn.Module):
    """A torchvision ``features`` stack returning the activations at `taps`."""

    def __init__(self, features: nn.Sequential, taps: tuple[int, ...]) -> None:
        super().__init__()
        self.features = features
        self.taps = taps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        start = 0
        for end in self.taps:
            for layer in self.features[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs


class NetLinLayer(nn.Module):
    """One learned head: channel weights as a 1x1 convolution (Dropout at index 0 for the key names)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def backbone(net: str) -> TapFeatures:
    """The ImageNet trunk LPIPS taps: ``"alex"`` or ``"vgg"``."""
    if net == "alex":
        return TapFeatures(_alexnet_features(), ALEX_TAPS)
    if net in ("vgg", "vgg16"):
        return TapFeatures(_vgg16_features(), VGG16_TAPS)
    raise ValueError(f"unknown LPIPS network {net!r}; expected 'alex' or 'vgg'")


def _unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between images in [-1, 1], [N, 3, H, W] each -> [N]."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        self.net_name = "vgg" if net == "vgg16" else net
        self.net = backbone(net)
        channels = ALEX_CHANNELS if self.net_name == "alex" else VGG16_CHANNELS
        for k, ch in enumerate(channels):
            self.add_module(f"lin{k}", NetLinLayer(ch))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    @property
    def lins(self) -> list[NetLinLayer]:
        return [getattr(self, f"lin{k}") for k in range(len(self.net.taps))]

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        n = x0.shape[0]
        # One pass over both images halves the Python overhead of the trunk.
        feats = self.net((torch.cat([x0, x1]) - self.shift) / self.scale)
        total = x0.new_zeros(n)
        for f, lin in zip(feats, self.lins, strict=True):
            f = _unit_normalize(f)
            diff = (f[:n] - f[n:]) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


__all__ = ["LPIPS", "NetLinLayer", "TapFeatures", "backbone"]
