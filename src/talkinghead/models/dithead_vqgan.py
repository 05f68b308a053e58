"""DiT-Head stage 1: a VQGAN autoencoder (Esser et al. 2021) for full and masked faces.

DiT-Head trains two of these, one on face crops and one on the same crops with the
lower face masked out. The diffusion transformer works on the encoder's continuous
output (`VQModel.encode`, before quantisation, as latent diffusion does); decoding
quantises that latent against the codebook first, so whatever the DiT produces is
snapped onto codes the decoder was trained on.

Layout: a convolutional encoder with ``len(ch_mult) - 1`` stride-2 downsamplings
(factor ``f = 2 ** (len(ch_mult) - 1)``), a middle block with one self-attention
layer, a 1x1 projection to ``embed_dim`` channels, a codebook of ``n_embed``
vectors, and a mirrored decoder. The defaults are latent diffusion's VQ-f4
configuration (256x256x3 -> 64x64x3, 8192 codes): the paper's stated numbers for
f, the latent size and the codebook size did not survive in our copy of the text
(see docs/dithead.md), and f = 4 with a 64x64x3 latent is what DiT-L/2's 1024-token
sequence implies for 256-pixel faces.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass(frozen=True)
class VQGANConfig:
    """Hyper-parameters of one VQGAN; defaults are the paper-scale model (VQ-f4, 8192 codes)."""

    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)  # downsampling factor 2 ** (len - 1) = 4
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()  # extra attention at these feature sizes
    resolution: int = 256  # only used to place attn_resolutions
    z_channels: int = 3
    embed_dim: int = 3
    n_embed: int = 8192
    beta: float = 0.25  # commitment weight
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if not self.ch_mult:
            raise ValueError("ch_mult needs at least one level")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(channels, height, width) of the latent of a height x width image."""
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not a multiple of f = {f}")
        return self.embed_dim, height // f, width // f

    @classmethod
    def paper(cls, **overrides: Any) -> VQGANConfig:
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> VQGANConfig:
        """A ~60k-parameter model for tests (32-pixel faces, f = 4, 64 codes)."""
        base = dict(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, n_embed=64, resolution=32)
        return cls(**{**base, **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> VQGANConfig:
        presets = {"paper": cls.paper, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(
                f"unknown VQGAN preset {name!r}; expected one of {', '.join(sorted(presets))}"
            )
        return presets[name](**overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQGANConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _norm(channels: int) -> nn.GroupNorm:
    # 32 groups as in taming; small test models fall back to the largest divisor.
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        height = h.shape[2]
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pad right/bottom only so that a stride-2 3x3 conv halves even sizes exactly.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Middle(nn.Module):
    def __init__(self, ch: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, dropout)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResnetBlock(ch, ch, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        mults = (1, *cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            level = _Level()
            ch_in, ch_out = cfg.ch * mults[i], cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(ch_in, ch_out, cfg.dropout))
                ch_in = ch_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(ch_out))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(ch_out)
                res //= 2
            self.down.append(level)
        ch = cfg.ch * cfg.ch_mult[-1]
        self.mid = _Middle(ch, cfg.dropout)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        ch = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.downsample_factor
        self.conv_in = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = _Middle(ch, cfg.dropout)
        # Built bottom-up but stored top-down (self.up[0] is the full-resolution level).
        levels: list[_Level] = []
        for i in reversed(range(len(cfg.ch_mult))):
            level = _Level()
            ch_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(ch, ch_out, cfg.dropout))
                ch = ch_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(ch_out))
            if i != 0:
                level.upsample = Upsample(ch_out)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with a straight-through gradient (van den Oord et al.).

    loss = ||sg(z) - z_q||^2 + beta * ||z - sg(z_q)||^2 (codebook + commitment terms).
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.n_embed, self.embed_dim, self.beta = n_embed, embed_dim, beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_embed, 1.0 / n_embed)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Indices [B, H, W] of the nearest codebook vectors of z [B, C, H, W]."""
        flat = rearrange(z, "b c h w -> (b h w) c")
        w = self.embedding.weight
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ w.t() + w.pow(2).sum(1)[None]
        return d.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors [B, C, H, W] of indices [B, H, W]."""
        return rearrange(self.embedding(indices), "b h w c -> b c h w")

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [B, C, H, W] -> (z_q with straight-through gradient, loss, indices [B, H, W])."""
        indices = self.codes(z)
        z_q = self.lookup(indices)
        loss = F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())
        z_q = z + (z_q - z).detach()
        return z_q, loss, indices


class VQModel(nn.Module):
    """Encoder, codebook and decoder; images are [B, 3, H, W] in [-1, 1]."""

    def __init__(self, config: VQGANConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or VQGANConfig()
        if overrides:
            cfg = VQGANConfig.from_dict({**cfg.to_dict(), **overrides})
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return self.config.latent_shape(height, width)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous latent (before quantisation) [B, embed_dim, H / f, W / f]."""
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Latent -> image; the latent is snapped to the codebook first unless told not to."""
        if quantize:
            h, _, _ = self.quantize(h)
        return self.decoder(self.post_quant_conv(h))

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize.lookup(indices)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (reconstruction, codebook loss)."""
        z_q, qloss, _ = self.quantize(self.encode(x))
        return self.decoder(self.post_quant_conv(z_q)), qloss

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output weight: the adaptive GAN weight compares gradients there."""
        return self.decoder.conv_out.weight
