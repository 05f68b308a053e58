"""LivePortrait's SPADE decoder: warped feature volume (flattened) -> RGB image.

The residual blocks are SPADE-normalised (Park et al. 2019): every normalisation is a
parameter-free InstanceNorm modulated by a per-pixel scale and shift predicted from
the decoder's own input feature (the "segmentation map"), resized by nearest
neighbour to the block's resolution.

The release wraps the block convolutions in the legacy hook-based
`torch.nn.utils.spectral_norm`, so its checkpoints store `weight_orig`, `weight_u`,
`weight_v` instead of `weight`. `SpectralNormConv2d` keeps that interface without
hooks and caches the normalised weight for inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from talkinghead.models.conv_forms import UpsampledConv, structural_copy

_LEAKY_SLOPE = 0.2


class SpectralNormConv2d(nn.Module):
    """Conv2d whose effective weight is `weight_orig / sigma`, sigma = u . (W v), W = weight_orig as [out, -1].

    Same state and semantics as a Conv2d under the legacy `torch.nn.utils.spectral_norm`
    (dim 0, `n_power_iterations` power-iteration steps):

    * train mode: each forward first refines `weight_u` / `weight_v` in place by power
      iteration (no gradient), then normalises with gradients flowing through
      `weight_orig` only, exactly like torch's hook;
    * eval mode: sigma comes from the stored u and v as they are (a checkpoint's u, v
      are never re-estimated). The normalised weight is then cached and reused until
      `weight_orig`, `weight_u` or `weight_v` change (in-place updates are detected
      through the tensors' version counters; `load_state_dict`, `train()`/`eval()` and
      device/dtype moves clear the cache). When gradients to `weight_orig` are needed
      (grad mode on and `weight_orig.requires_grad`), the weight is recomputed each call
      so that autograd sees it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.padding = padding
        self.dilation = dilation
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        # bias before weight_orig: the order torch's hook leaves in the state_dict.
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.weight_orig = nn.Parameter(
            torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        )
        self.register_buffer("weight_u", torch.empty(out_channels))
        self.register_buffer("weight_v", torch.empty(in_channels * kernel_size * kernel_size))
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's initialisation, then u, v converged a few steps further than torch's
        # random start so that a fresh module in eval mode already has a sensible sigma.
        nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)
        if self.bias is not None:
            bound = 1.0 / (self.weight_orig[0].numel() ** 0.5)
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            self.weight_u.normal_()
            self.weight_v.normal_()
            self.weight_u.copy_(F.normalize(self.weight_u, dim=0, eps=self.eps))
            self.weight_v.copy_(F.normalize(self.weight_v, dim=0, eps=self.eps))
            self._power_iteration(self.weight_orig.flatten(1), steps=10)
        self.invalidate_cache()

    def _power_iteration(self, w_mat: torch.Tensor, steps: int) -> None:
        u, v = self.weight_u, self.weight_v
        for _ in range(steps):
            # `out=` updates the buffers in place, as the reference implementation does.
            F.normalize(torch.mv(w_mat.t(), u), dim=0, eps=self.eps, out=v)
            F.normalize(torch.mv(w_mat, v), dim=0, eps=self.eps, out=u)

    def compute_weight(self, power_iteration: bool = False) -> torch.Tensor:
        """The normalised weight; optionally after updating u, v by power iteration (training)."""
        w_mat = self.weight_orig.flatten(1)
        u, v = self.weight_u, self.weight_v
        if power_iteration and self.n_power_iterations > 0:
            with torch.no_grad():
                self._power_iteration(w_mat, self.n_power_iterations)
            # Clones keep autograd from seeing the next in-place buffer update.
            u = u.clone(memory_format=torch.contiguous_format)
            v = v.clone(memory_format=torch.contiguous_format)
        sigma = torch.dot(u, torch.mv(w_mat, v))
        return self.weight_orig / sigma

    def _cache_key(self) -> tuple | None:
        tensors = (self.weight_orig, self.weight_u, self.weight_v)
        if any(t.is_inference() for t in tensors):
            return None  # no version counter to watch: never cache
        return tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)

    def invalidate_cache(self) -> None:
        self._cache = None

    @property
    def weight(self) -> torch.Tensor:
        """The effective (normalised) weight at the current u, v; no power iteration."""
        return self._eval_weight()

    def _eval_weight(self) -> torch.Tensor:
        if (torch.is_grad_enabled() and self.weight_orig.requires_grad) or (
            torch.jit.is_tracing() or torch.compiler.is_compiling()
        ):
            return self.compute_weight()
        key = self._cache_key()
        if key is None:
            return self.compute_weight()
        if self._cache is None or self._cache[0] != key:
            # A normal (not inference-mode) tensor, so that a frozen decoder filled under
            # inference_mode can later pass gradients to its input.
            with torch.inference_mode(False), torch.no_grad():
                self._cache = (key, self.compute_weight())
        return self._cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Train mode refines u, v first (torch's hook semantics); eval reuses the cached weight.
        weight = self.compute_weight(power_iteration=True) if self.training else self._eval_weight()
        return F.conv2d(x, weight, self.bias, padding=self.padding, dilation=self.dilation)

    def train(self, mode: bool = True) -> SpectralNormConv2d:
        self.invalidate_cache()
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        self.invalidate_cache()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.invalidate_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, padding={self.padding}"
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        return s + f", bias={self.bias is not None}"


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class SPADE(nn.Module):
    """InstanceNorm(x) * (1 + gamma(seg)) + beta(seg), gamma/beta from a shared conv trunk.

    `seg` must already have x's spatial size. (The release resizes it by nearest
    neighbour inside every SPADE; the decoder does that once per resolution instead,
    which gives the same values and keeps traced graphs free of shape tests.)
    """

    def __init__(self, norm_channels: int, label_channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.mlp_shared = nn.Sequential(
            nn.Conv2d(label_channels, hidden, kernel_size=3, padding=1), nn.ReLU()
        )
        self.mlp_gamma = nn.Conv2d(hidden, norm_channels, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normalized = F.instance_norm(x, eps=1e-5)
        actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """Pre-activation residual block: SPADE -> leaky ReLU -> conv, twice; learned 1x1 shortcut if fin != fout.

    `seg` must have x's spatial size.
    """

    def __init__(self, fin: int, fout: int, label_channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = SpectralNormConv2d(fin, fmiddle, kernel_size=3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmiddle, fout, kernel_size=3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, kernel_size=1, bias=False)
        self.norm_0 = SPADE(fin, label_channels, hidden)
        self.norm_1 = SPADE(fmiddle, label_channels, hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_channels, hidden)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), _LEAKY_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), _LEAKY_SLOPE))
        return x_s + dx


@dataclass(frozen=True)
class SPADEDecoderConfig:
    """Decoder sizes; the defaults are the release's (input 256 channels, 64 output channels)."""

    upscale: int | None = 2
    max_features: int = 512
    block_expansion: int = 64
    out_channels: int = 64
    num_down_blocks: int = 2
    spade_hidden: int = 128
    num_middle_blocks: int = 6

    @property
    def in_channels(self) -> int:
        """Channels of the input feature, which is also the SPADE label map (256 in the release)."""
        return min(self.max_features, self.block_expansion * 2**self.num_down_blocks)


class SPADEDecoder(nn.Module):
    """Feature [B, C, H, W] (C = 256, H = W = 64 in the release) -> image [B, 3, 4H*u, 4W*u] in (0, 1).

    `fc` doubles the channels, `num_middle_blocks` SPADE blocks run at the input
    resolution, then two x2 nearest upsamplings each followed by a channel-reducing
    block, and a final conv + PixelShuffle(`upscale`) (u = upscale, 2 in the release)
    and sigmoid. Every block is conditioned on the input feature itself.
    """

    def __init__(
        self,
        upscale: int | None = 2,
        max_features: int = 512,
        block_expansion: int = 64,
        out_channels: int = 64,
        num_down_blocks: int = 2,
        spade_hidden: int = 128,
        num_middle_blocks: int = 6,
    ) -> None:
        super().__init__()
        cfg = SPADEDecoderConfig(
            upscale=upscale,
            max_features=max_features,
            block_expansion=block_expansion,
            out_channels=out_channels,
            num_down_blocks=num_down_blocks,
            spade_hidden=spade_hidden,
            num_middle_blocks=num_middle_blocks,
        )
        self.config = cfg
        c, hidden = cfg.in_channels, spade_hidden
        self.fc = nn.Conv2d(c, 2 * c, kernel_size=3, padding=1)
        self.num_middle_blocks = num_middle_blocks
        for i in range(num_middle_blocks):
            setattr(self, f"G_middle_{i}", SPADEResnetBlock(2 * c, 2 * c, c, hidden))
        self.up_0 = SPADEResnetBlock(2 * c, c, c, hidden)
        self.up_1 = SPADEResnetBlock(c, out_channels, c, hidden)
        if upscale is None or upscale <= 1:
            self.conv_img = nn.Conv2d(out_channels, 3, kernel_size=3, padding=1)
        else:
            # The release hard-codes PixelShuffle(2) here; for upscale=2 this is the same.
            self.conv_img = nn.Sequential(
                nn.Conv2d(out_channels, 3 * upscale**2, kernel_size=3, padding=1),
                nn.PixelShuffle(upscale),
            )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for i in range(self.num_middle_blocks):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        # The label map follows x up by nearest neighbour (exact integer ratios, so
        # scale_factor=2 picks the same pixels as the release's resize to x's size).
        seg = _upsample2(feature)
        x = self.up_0(_upsample2(x), seg)
        seg = _upsample2(seg)
        x = self.up_1(_upsample2(x), seg)
        x = self.conv_img(F.leaky_relu(x, _LEAKY_SLOPE))
        return torch.sigmoid(x)


class PolyphaseSPADEDecoder(SPADEDecoder):
    """A `SPADEDecoder` for inference whose upsampled blocks convolve the label map at its
    own resolution (`UpsampledConv`): the same function within float rounding (about
    1e-6), with 12% fewer multiply-adds. Built by `polyphase_decoder`; run by every runtime
    but ``--runtime torch``, which keeps the release's arithmetic exactly.
    """

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for i in range(self.num_middle_blocks):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        x = self.up_0(_upsample2(x), feature)  # each SPADE trunk upsamples the label map itself
        x = self.up_1(_upsample2(x), feature)
        x = self.conv_img(F.leaky_relu(x, _LEAKY_SLOPE))
        return torch.sigmoid(x)


def polyphase_decoder(decoder: SPADEDecoder) -> PolyphaseSPADEDecoder:
    """`decoder` as a `PolyphaseSPADEDecoder` (eval mode, sharing its weights; the summed
    label-map convs are computed from the weights as they are now); `decoder` is unchanged.
    A decoder already in that form is returned as it is."""
    if isinstance(decoder, PolyphaseSPADEDecoder):
        return decoder
    fast = structural_copy(decoder).eval()
    fast.__class__ = PolyphaseSPADEDecoder
    for block, scale in ((fast.up_0, 2), (fast.up_1, 4)):
        for norm in ("norm_0", "norm_1", "norm_s"):
            spade = getattr(block, norm, None)
            if spade is not None:
                conv, relu = spade.mlp_shared
                spade.mlp_shared = UpsampledConv(conv, scale, activation=relu)
    return fast
