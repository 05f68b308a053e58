"""Inference forms of convolutions give the convolutions' values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from talkinghead.models.conv_forms import TapsFirstConv2d, UpsampledConv


@pytest.mark.parametrize("scale", [2, 3, 4, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_2d_is_the_conv_of_the_upsampled_input(scale: int, bias: bool) -> None:
    torch.manual_seed(scale)
    conv = nn.Conv2d(6, 5, kernel_size=3, padding=1, bias=bias)
    x = torch.randn(2, 6, 5, 7)  # not square: rows and columns are handled apart
    with torch.no_grad():
        expected = conv(F.interpolate(x, scale_factor=scale, mode="nearest")).relu()
        got = UpsampledConv(conv, scale, activation=nn.ReLU())(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("depth_kernel", "depth_padding"), [(3, 1), (1, 0)])
def test_3d_upsamples_only_the_last_two_axes(depth_kernel: int, depth_padding: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 3, kernel_size=(depth_kernel, 3, 3), padding=(depth_padding, 1, 1))
    x = torch.randn(2, 4, 3, 4, 6)
    with torch.no_grad():
        expected = conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))
        got = UpsampledConv(conv, 2)(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_refuses_what_it_cannot_rewrite() -> None:
    with pytest.raises(ValueError, match="scale >= 2"):
        UpsampledConv(nn.Conv2d(2, 2, 3, padding=1), 1)
    with pytest.raises(ValueError, match="3x3"):
        UpsampledConv(nn.Conv2d(2, 2, 5, padding=2), 2)
    with pytest.raises(ValueError, match="3x3"):
        UpsampledConv(nn.Conv2d(2, 2, 3, padding=1, stride=2), 2)


@pytest.mark.parametrize(("out_channels", "kernel", "bias"), [(1, 7, True), (3, 3, False)])
def test_taps_first_is_the_conv(out_channels: int, kernel: int, bias: bool) -> None:
    torch.manual_seed(kernel)
    conv = nn.Conv2d(12, out_channels, kernel, padding=kernel // 2, bias=bias)
    x = torch.randn(2, 12, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(TapsFirstConv2d(conv)(x), conv(x), atol=1e-5, rtol=1e-5)


def test_taps_first_refuses_other_padding() -> None:
    with pytest.raises(ValueError, match="same"):
        TapsFirstConv2d(nn.Conv2d(4, 1, 7, padding=0))
