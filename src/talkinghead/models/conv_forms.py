"""Inference forms of convolutions: the same values within float rounding (about 1e-6),
computed with fewer multiply-adds or on faster kernels. They are built from a trained conv
for the runtimes other than ``--runtime torch``, which keeps the release's arithmetic.

`UpsampledConv`: a 3x3 conv of a nearest-upsampled input, at the input's resolution.
``conv(F.interpolate(x, scale_factor=s, mode="nearest"))`` reads every source pixel
s x s times. Along each upsampled axis, output position ``s * i + a`` sees source rows
``i - 1, i, i + 1`` only through the taps that land on the same source row, so each phase
``a`` is a 2-tap convolution of x whose taps are sums of the original ones; phases with
the same summed taps (the inner ones when s > 2) share one. All phases then come from one
convolution of x with (phase classes)^2 x out_channels outputs, interleaved afterwards:
2.25x fewer multiply-adds for s = 2, 4x for s = 4.

`TapsFirstConv2d`: a k x k conv with few output channels (the warp's occlusion head,
2272 -> 1) as a 1x1 conv to one channel per output and tap, then the taps' shifted sum.
The multiply-adds are the same, but oneDNN runs a many-input one-output k x k conv at a
few GFLOPS and the 1x1 conv near its peak (3.5x faster for the release's head).
"""

from __future__ import annotations

import copy
import itertools
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def structural_copy(module: ModuleT) -> ModuleT:
    """A copy of `module`'s module tree that shares its parameters and buffers (no weights
    copied), for building an inference form by swapping sub-modules of the copy."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return copy.deepcopy(module, memo={id(t): t for t in tensors})


def phase_taps(scale: int) -> tuple[list[int], torch.Tensor, list[int]]:
    """Per phase of one upsampled axis its class; the classes' 2x3 tap-summing matrices
    (summed tap p of a class = sum of the original taps it maps to); and each class's first
    source row as an index into a conv output padded by one row on each side (0 reads rows
    ``i - 1, i``; 1 reads ``i, i + 1``)."""
    classes: list[tuple[int, tuple[tuple[int, ...], ...]]] = []
    phase_class = []
    for a in range(scale):
        offsets = [(a + dy) // scale for dy in (-1, 0, 1)]  # source row of taps -1, 0, +1
        first = min(offsets)
        rows = tuple(tuple(int(o - first == p) for o in offsets) for p in (0, 1))
        if (first, rows) not in classes:
            classes.append((first, rows))
        phase_class.append(classes.index((first, rows)))
    matrices = torch.tensor([rows for _, rows in classes], dtype=torch.float64)
    return phase_class, matrices, [first + 1 for first, _ in classes]


class UpsampledConv(nn.Module):
    """`conv` (2-D 3x3, or 3-D k x 3 x 3; stride 1, padding 1 on the last two axes) of x
    upsampled `scale` times by nearest neighbour along its last two axes, at x's resolution.

    `activation`, if given, must be elementwise: it commutes with the interleave, so it runs
    before it, on (classes / scale)^2 of the values, fused with the conv where the runtime can.
    """

    def __init__(
        self, conv: nn.Conv2d | nn.Conv3d, scale: int, activation: nn.Module | None = None
    ) -> None:
        super().__init__()
        if scale < 2:
            raise ValueError("UpsampledConv needs scale >= 2 (at scale 1 use the conv itself)")
        if (
            conv.kernel_size[-2:] != (3, 3)
            or conv.padding[-2:] != (1, 1)
            or any(s != 1 for s in conv.stride)
            or any(d != 1 for d in conv.dilation)
            or conv.groups != 1
            or conv.padding_mode != "zeros"
        ):
            raise ValueError(
                "UpsampledConv takes a 3x3 (or k x 3 x 3) conv with padding 1, stride 1, "
                "no dilation or groups, zero padding"
            )
        self.scale = scale
        self.dims = conv.weight.dim() - 2
        self.leading_padding = tuple(conv.padding[:-2])
        self.phase_class, matrices, self.starts = phase_taps(scale)
        self.classes = len(self.starts)
        self.out_channels = conv.out_channels
        self.activation = activation if activation is not None else nn.Identity()
        weight = conv.weight.detach().double()
        # [class_y, class_x, out, in, (k,) 2, 2]: taps summed per row and per column class.
        summed = torch.einsum("ypa,oi...ab,xqb->yxoi...pq", matrices, weight, matrices)
        self.register_buffer("weight", summed.flatten(0, 2).to(conv.weight.dtype))
        bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(conv.out_channels)
        self.register_buffer("bias", bias.to(conv.weight.dtype).repeat(self.classes**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        conv = F.conv2d if self.dims == 2 else F.conv3d
        y = self.activation(conv(x, self.weight, self.bias, padding=(*self.leading_padding, 1, 1)))
        o, n = self.out_channels, self.classes
        rows = []
        for a in range(self.scale):
            ca, ra = self.phase_class[a], self.starts[self.phase_class[a]]
            cols = []
            for b in range(self.scale):
                cb, rb = self.phase_class[b], self.starts[self.phase_class[b]]
                c = ca * n + cb
                # One slice over channels and both axes: a single Slice in ONNX (indexing
                # an unflattened class axis costs a Gather per phase, 1.6x slower).
                cols.append(y[:, c * o : (c + 1) * o, ..., ra : ra + h, rb : rb + w])
            rows.append(torch.stack(cols, dim=-1))  # [B, O, ..., H, W, scale]
        out = torch.stack(rows, dim=-3)  # [B, O, ..., H, scale, W, scale]
        return out.flatten(-2, -1).flatten(-3, -2)


class TapsFirstConv2d(nn.Module):
    """`conv` (2-D, stride 1, "same" zero padding, no dilation or groups) as a 1x1 conv
    to out_channels x k^2 channels followed by a grouped one-hot k x k conv that sums the
    shifted taps. Worth it only for few output channels (k^2 intermediate maps each)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        kh, kw = conv.kernel_size
        if (
            conv.padding != (kh // 2, kw // 2)
            or kh % 2 == 0
            or kw % 2 == 0
            or conv.stride != (1, 1)
            or conv.dilation != (1, 1)
            or conv.groups != 1
            or conv.padding_mode != "zeros"
        ):
            raise ValueError(
                "TapsFirstConv2d takes an odd-sized conv with 'same' zero padding, stride 1, "
                "no dilation or groups"
            )
        o, i = conv.out_channels, conv.in_channels
        self.out_channels, self.padding = o, conv.padding
        weight = conv.weight.detach()
        # [O * kh * kw, I, 1, 1]: channel (o, tap) holds tap `tap` of output o.
        self.register_buffer("taps", weight.permute(0, 2, 3, 1).reshape(o * kh * kw, i, 1, 1))
        onehot = torch.eye(kh * kw, dtype=weight.dtype).reshape(1, kh * kw, kh, kw)
        self.register_buffer("shift", onehot.repeat(o, 1, 1, 1))  # [O, kh*kw, kh, kw]
        bias = conv.bias.detach() if conv.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = F.conv2d(x, self.taps)
        return F.conv2d(maps, self.shift, self.bias, padding=self.padding, groups=self.out_channels)
