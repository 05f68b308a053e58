"""RIFE's intermediate-flow network (Huang et al., ECCV 2022), for 2x frame interpolation.

DiT-Head smooths the temporal jitter of its frames with RIFE. This is the model
of the RIFE paper (``IFNet`` with the context network and the refinement U-Net,
the weights the authors publish as ``flownet.pkl``); parameter names follow that
file, minus DataParallel's ``module.`` prefix, so it loads strictly.

How it interpolates the middle frame of (I0, I1), images in [0, 1]:

1. three IFBlocks estimate, coarse to fine (at 1/4, 1/2 and full resolution), the
   flows from the middle frame to both inputs [B, 4] and a fusion mask; each later
   block refines the previous estimate from the inputs, the backward-warped inputs
   and the mask;
2. the inputs are warped to the middle and fused by the sigmoid of the mask;
3. a context network extracts 4-level features of both inputs, warped along the
   flows, and a small U-Net predicts a residual in [-1, 1] that is added.

``block_tea`` (the privileged "teacher" block used only in training) is kept so
that the published state dict loads; inference never runs it. Inputs must be
multiples of 32 pixels (`RIFE.interpolate` pads). The published model was trained
on frames in OpenCV's BGR order; `talkinghead.frames.interpolation`
feeds it that way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at (x + flow_x, y + flow_y): flow [B, 2, H, W] in pixels."""
    b, _, h, w = flow.shape
    ys = torch.linspace(-1.0, 1.0, h, device=flow.device, dtype=flow.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=flow.device, dtype=flow.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    gx = grid_x[None] + flow[:, 0] / ((w - 1.0) / 2.0)
    gy = grid_y[None] + flow[:, 1] / ((h - 1.0) / 2.0)
    grid = torch.stack([gx, gy], dim=-1).expand(b, h, w, 2)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, bias=True), nn.PReLU(cout))


def _deconv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=True), nn.PReLU(cout))


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class IFBlock(nn.Module):
    """One flow/mask estimator working at 1/scale resolution; outputs at full resolution."""

    def __init__(self, in_planes: int, c: int = 64) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_planes, c // 2, 3, 2, 1), _conv(c // 2, c, 3, 2, 1))
        self.convblock = nn.Sequential(*(_conv(c, c) for _ in range(8)))
        self.lastconv = nn.ConvTranspose2d(c, 5, 4, 2, 1)

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if scale != 1:
            x = _resize(x, 1.0 / scale)
        if flow is not None:
            x = torch.cat([x, _resize(flow, 1.0 / scale) / scale], dim=1)
        x = self.conv0(x)
        x = self.convblock(x) + x
        out = _resize(self.lastconv(x), scale * 2)
        return out[:, :4] * scale * 2, out[:, 4:5]


class _Conv2(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride, 1)
        self.conv2 = _conv(cout, cout, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


_C = 16  # base width of the context network and the U-Net


class ContextNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _Conv2(3, _C)
        self.conv2 = _Conv2(_C, 2 * _C)
        self.conv3 = _Conv2(2 * _C, 4 * _C)
        self.conv4 = _Conv2(4 * _C, 8 * _C)

    def forward(self, x: torch.Tensor, flow: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = conv(x)
            flow = _resize(flow, 0.5) * 0.5
            feats.append(backward_warp(x, flow))
        return feats


class RefineUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down0 = _Conv2(17, 2 * _C)
        self.down1 = _Conv2(4 * _C, 4 * _C)
        self.down2 = _Conv2(8 * _C, 8 * _C)
        self.down3 = _Conv2(16 * _C, 16 * _C)
        self.up0 = _deconv(32 * _C, 8 * _C)
        self.up1 = _deconv(16 * _C, 4 * _C)
        self.up2 = _deconv(8 * _C, 2 * _C)
        self.up3 = _deconv(4 * _C, _C)
        self.conv = nn.Conv2d(_C, 3, 3, 1, 1)

    def forward(self, inputs: torch.Tensor, c0: list[torch.Tensor], c1: list[torch.Tensor]):
        s0 = self.down0(inputs)
        s1 = self.down1(torch.cat([s0, c0[0], c1[0]], 1))
        s2 = self.down2(torch.cat([s1, c0[1], c1[1]], 1))
        s3 = self.down3(torch.cat([s2, c0[2], c1[2]], 1))
        x = self.up0(torch.cat([s3, c0[3], c1[3]], 1))
        x = self.up1(torch.cat([x, s2], 1))
        x = self.up2(torch.cat([x, s1], 1))
        x = self.up3(torch.cat([x, s0], 1))
        return torch.sigmoid(self.conv(x))


class RIFE(nn.Module):
    """forward(img0, img1) -> the middle frame; images [B, 3, H, W] in [0, 1], H, W % 32 == 0."""

    def __init__(self) -> None:
        super().__init__()
        self.block0 = IFBlock(6, c=240)
        self.block1 = IFBlock(13 + 4, c=150)
        self.block2 = IFBlock(13 + 4, c=90)
        self.block_tea = IFBlock(16 + 4, c=90)  # training-only teacher, kept for loading
        self.contextnet = ContextNet()
        self.unet = RefineUNet()

    def forward(
        self, img0: torch.Tensor, img1: torch.Tensor, scales: tuple[float, ...] = (4, 2, 1)
    ) -> torch.Tensor:
        if img0.shape[-1] % 32 or img0.shape[-2] % 32:
            raise ValueError(f"RIFE needs sizes that are multiples of 32, got {img0.shape[-2:]}")
        flow, mask = self.block0(torch.cat([img0, img1], 1), None, scales[0])
        warped0 = backward_warp(img0, flow[:, :2])
        warped1 = backward_warp(img1, flow[:, 2:4])
        for block, scale in ((self.block1, scales[1]), (self.block2, scales[2])):
            x = torch.cat([img0, img1, warped0, warped1, mask], 1)
            flow_d, mask_d = block(x, flow, scale)
            flow, mask = flow + flow_d, mask + mask_d
            warped0 = backward_warp(img0, flow[:, :2])
            warped1 = backward_warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        merged = warped0 * weight + warped1 * (1 - weight)
        c0 = self.contextnet(img0, flow[:, :2])
        c1 = self.contextnet(img1, flow[:, 2:4])
        refine_in = torch.cat([img0, img1, warped0, warped1, mask, flow], 1)
        res = self.unet(refine_in, c0, c1)[:, :3] * 2 - 1
        return torch.clamp(merged + res, 0, 1)

    @torch.no_grad()
    def interpolate(self, img0: torch.Tensor, img1: torch.Tensor, scale: float = 1.0):
        """Middle frame for any size: pads to a multiple of 32 and crops back. ``scale``
        < 1 estimates flow at lower resolution (for 4K, as RIFE's own ``--scale``)."""
        h, w = img0.shape[-2:]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        pad = (0, pw - w, 0, ph - h)
        a, b = F.pad(img0, pad), F.pad(img1, pad)
        scales = tuple(s / scale for s in (4, 2, 1))
        return self(a, b, scales)[..., :h, :w]
