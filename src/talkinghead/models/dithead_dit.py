"""DiT-Head stage 2: a diffusion transformer that inpaints the lower face in latent space.

Input: the noisy latent of the target face, concatenated channel-wise with the
latent of the same frame with its lower face masked (masked-face VQGAN) and the
latent of a reference frame of the same person (full-face VQGAN). The result is
cut into ``patch_size`` x ``patch_size`` patches, linearly embedded and given
fixed 2-D sine-cosine position embeddings (as in DiT, Peebles & Xie 2022).

Conditioning follows the paper: the timestep embedding and the linearly projected
audio window (11 frames x 33 wav2vec2 CTC logits = 363 values) are "concatenated"
and serve as the key/value of a cross-attention layer in every block, with the
image tokens as queries. We read the concatenation as two context tokens, [t, a],
so that attention has something to weigh (with one token softmax is constant);
there is no adaLN modulation, since the paper routes the timestep through
cross-attention only. Each block is pre-norm: self-attention, cross-attention,
MLP. The output layer is zero-initialised, so an untrained model predicts
epsilon = 0, and its output is the noise (epsilon) prediction, one latent-sized
tensor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of the denoiser; defaults are DiT-L/2 on a 64x64x3 latent."""

    input_size: int = 64  # latent height = width
    latent_channels: int = 3
    num_cond_latents: int = 2  # masked frame, reference frame
    patch_size: int = 2
    hidden_size: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    audio_dim: int = 363  # 11-frame window x 33 CTC logits
    frequency_embedding_size: int = 256

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.input_size % self.patch_size:
            raise ValueError(
                f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}"
            )

    @property
    def in_channels(self) -> int:
        return self.latent_channels * (1 + self.num_cond_latents)

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    # DiT's model family (Peebles & Xie, Table 1), all with patch size 2 here.
    @classmethod
    def dit_l_2(cls, **overrides: Any) -> DiTConfig:
        return cls(**overrides)

    @classmethod
    def dit_b_2(cls, **overrides: Any) -> DiTConfig:
        return cls(**{"hidden_size": 768, "depth": 12, "num_heads": 12, **overrides})

    @classmethod
    def dit_s_2(cls, **overrides: Any) -> DiTConfig:
        return cls(**{"hidden_size": 384, "depth": 12, "num_heads": 6, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> DiTConfig:
        """For tests: an 8x8 latent (32-pixel faces at f = 4), 2 blocks of width 64."""
        base = {"input_size": 8, "hidden_size": 64, "depth": 2, "num_heads": 4}
        base["frequency_embedding_size"] = 64
        return cls(**{**base, **overrides})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DiTConfig:
        presets = {
            "paper": cls.dit_l_2,
            "dit-l/2": cls.dit_l_2,
            "dit-b/2": cls.dit_b_2,
            "dit-s/2": cls.dit_s_2,
            "tiny": cls.tiny,
        }
        key = name.lower()
        if key not in presets:
            raise ValueError(
                f"unknown DiT preset {name!r}; expected one of {', '.join(sorted(presets))}"
            )
        return presets[key](**overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding [grid * grid, dim] (half for y, half for x)."""
    if dim % 4:
        raise ValueError(f"position embedding dim must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid), indexing="ij")

    def embed(pos: np.ndarray) -> np.ndarray:
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([embed(ys), embed(xs)], axis=1).astype(np.float32)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps [B]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))


class Attention(nn.Module):
    """Multi-head attention; keys/values come from `context` when given (cross-attention)."""

    def __init__(self, dim: int, num_heads: int, cross: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.cross = cross
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
            q = self.q(x)
            k, v = self.kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (rearrange(a, "b n (h d) -> b h n d", h=self.num_heads) for a in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the [timestep, audio] tokens, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = Attention(dim, num_heads, cross=True)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context)
        return x + self.mlp(self.norm3(x))


class DiTHead(nn.Module):
    """The audio-conditioned latent denoiser: forward(x_t, t, masked, reference, audio) -> eps."""

    def __init__(self, config: DiTConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or DiTConfig()
        if overrides:
            cfg = DiTConfig.from_dict({**cfg.to_dict(), **overrides})
        self.config = cfg
        p, d = cfg.patch_size, cfg.hidden_size
        self.x_embedder = nn.Conv2d(cfg.in_channels, d, kernel_size=p, stride=p)
        grid = cfg.input_size // p
        pos = torch.from_numpy(sincos_pos_embed_2d(d, grid))[None]
        self.register_buffer("pos_embed", pos, persistent=False)
        self.t_embedder = TimestepEmbedder(d, cfg.frequency_embedding_size)
        self.audio_embedder = nn.Linear(cfg.audio_dim, d)
        self.blocks = nn.ModuleList(
            DiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm_out = nn.LayerNorm(d, eps=1e-6)
        self.out = nn.Linear(d, p * p * cfg.latent_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # An untrained model predicts zero noise: the loss starts at E[eps^2] = 1.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def context(self, t: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """The cross-attention keys/values [B, 2, hidden]: timestep token, audio token."""
        if audio.shape[-1] != self.config.audio_dim:
            raise ValueError(
                f"audio features must have {self.config.audio_dim} values, got {audio.shape[-1]}"
            )
        t_tok = self.t_embedder(t.reshape(-1))
        a_tok = self.audio_embedder(audio.reshape(audio.shape[0], -1))
        return torch.stack([t_tok, a_tok], dim=1)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        masked: torch.Tensor,
        reference: torch.Tensor,
        audio: torch.Tensor,
    ) -> torch.Tensor:
        """Latents [B, C, H, W] (noisy target, masked frame, reference), timesteps [B]
        and audio windows [B, audio_dim] -> predicted noise [B, C, H, W]."""
        cfg = self.config
        if x_t.shape[-1] != cfg.input_size or x_t.shape[-2] != cfg.input_size:
            raise ValueError(
                f"latent must be {cfg.input_size}x{cfg.input_size}, got {tuple(x_t.shape[-2:])}"
            )
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        h = self.x_embedder(torch.cat([x_t, masked, reference], dim=1))
        h = rearrange(h, "b d gh gw -> b (gh gw) d") + self.pos_embed.to(h.dtype)
        ctx = self.context(t, audio).to(h.dtype)
        for block in self.blocks:
            h = block(h, ctx)
        h = self.out(self.norm_out(h))
        g = cfg.input_size // cfg.patch_size
        return rearrange(
            h,
            "b (gh gw) (p q c) -> b c (gh p) (gw q)",
            gh=g,
            gw=g,
            p=cfg.patch_size,
            q=cfg.patch_size,
        )
