"""Ditto's latent motion diffusion model (LMDM): a conditional transformer denoiser.

It predicts a clean window of motion vectors x_0 `[B, L, D]` (L = 80 frames,
D = 265: scale, 3x66 pose bins, translation, 63 expression offsets) from a noisy
one, the motion of the previous (conditioning) frame, and a per-frame condition
`[B, L, C]` (C = 1103: HuBERT 1024, emotion 8, eye-open 2, eye-ball 6, source
keypoints 63). Sampling lives in `talkinghead.diffusion` (`DDIMSampler`).

Architecture (parameter names are the release's checkpoint keys):

* the noisy motion, concatenated with the conditioning frame repeated over time,
  is projected to `latent_dim` (`input_projection`);
* the condition is projected (`cond_projection`) and encoded by two pre-norm
  transformer layers (`cond_encoder`); its mean over time, through a small MLP
  (`non_attn_cond_projection`), is added to the timestep vector;
* the timestep is embedded sinusoidally (`time_mlp`) and gives both the FiLM
  vector (`to_time_cond`) and two extra memory tokens (`to_time_tokens`);
* eight pre-norm decoder layers (`seqTransDecoder.stack`) do self-attention,
  cross-attention to the layer-normed memory (condition tokens + 2 time tokens)
  and an exact-GELU feed-forward, each branch modulated by FiLM
  `(scale + 1) * y + shift` before its residual add;
* rotary position embedding (one module, shared by every layer, hence stored
  under 11 keys) rotates the *inputs* of the query and key projections; values
  are computed from unrotated inputs;
* classifier-free guidance swaps the encoded condition for learned null tokens
  (`null_cond_embed`) and the pooled vector for `null_cond_hidden`, and mixes
  `uncond + (cond - uncond) * guidance_weight`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import nn

from talkinghead.diffusion.schedule import DiffusionSchedule, predict_noise_from_start


@dataclass(frozen=True)
class LMDMConfig:
    """Hyper-parameters of the motion model; defaults are the v0.4 HuBERT release."""

    motion_feat_dim: int = 265
    audio_feat_dim: int = 1103  # the release's class default 1024 + 35 = 1059 is another variant
    seq_frames: int = 80
    latent_dim: int = 512
    ff_size: int = 1024
    num_layers: int = 8
    num_heads: int = 8
    num_cond_layers: int = 2
    dropout: float = 0.1
    rotary_theta: float = 10000.0
    multi_cond_frame: bool = False  # per-frame conditioning motion [B, L, D + 1] (mask channel)
    guidance_weight: float = 2.0
    n_timestep: int = 1000
    cosine_s: float = 8e-3
    clip_denoised: bool = False  # clamp x_0 to [-1, 1]; off in the release

    def __post_init__(self) -> None:
        if self.latent_dim % self.num_heads:
            raise ValueError(
                f"latent_dim {self.latent_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.latent_dim % 2:
            raise ValueError(
                f"latent_dim must be even for the rotary embedding, got {self.latent_dim}"
            )


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the full feature dimension, interleaved pairs.

    Feature pairs (2i, 2i+1) at position p are rotated by the angle p * freqs[i].
    `freqs` is a buffer because the release stores it in the checkpoint. `tables(n)`
    builds the cos/sin tables for positions 0..n-1 once per forward; `rotate` applies them
    to any sequence of length <= n (positions start at 0 for every sequence).
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim)
        self.register_buffer("freqs", freqs)

    def tables(self, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """`(cos, signed_sin)` [n, dim]; the sine carries the sign of the pair rotation."""
        positions = torch.arange(n, device=self.freqs.device, dtype=self.freqs.dtype)
        angles = repeat(torch.outer(positions, self.freqs), "n f -> n (f r)", r=2)
        sign = torch.tensor([-1.0, 1.0], device=angles.device, dtype=angles.dtype).repeat(
            angles.shape[-1] // 2
        )
        return angles.cos().to(dtype), (angles.sin() * sign).to(dtype)

    @staticmethod
    def rotate(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(x_2i, x_2i+1) -> (x_2i cos - x_2i+1 sin, x_2i+1 cos + x_2i sin) along axis -2."""
        cos, signed_sin = (t[: x.shape[-2]] for t in tables)
        swapped = rearrange(x, "... (f r) -> ... f r", r=2).flip(-1).flatten(-2)
        return x * cos + swapped * signed_sin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate `x [..., n, dim]` along its sequence axis (-2), positions 0..n-1."""
        return self.rotate(x, self.tables(x.shape[-2], x.dtype))


class Attention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s parameter layout (batch first).

    Keys: `in_proj_weight` [3d, d] (q, k, v stacked), `in_proj_bias`, `out_proj`.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        d = value.shape[-1]
        w, b = self.in_proj_weight, self.in_proj_bias
        if query is key:  # rotated self-attention: one projection for q and k
            q, k = F.linear(query, w[: 2 * d], b[: 2 * d]).chunk(2, dim=-1)
        else:
            q = F.linear(query, w[:d], b[:d])
            k = F.linear(key, w[d : 2 * d], b[d : 2 * d])
        v = F.linear(value, w[2 * d :], b[2 * d :])
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.num_heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class CondEncoderLayer(nn.Module):
    """Pre-norm self-attention + feed-forward layer encoding the condition sequence."""

    def __init__(self, cfg: LMDMConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        d = cfg.latent_dim
        self.self_attn = Attention(d, cfg.num_heads, cfg.dropout)
        self.linear1 = nn.Linear(d, cfg.ff_size)
        self.linear2 = nn.Linear(cfg.ff_size, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.rotary = rotary

    def forward(
        self, x: torch.Tensor, rotary_tables: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        h = self.norm1(x)
        qk = self.rotary(h) if rotary_tables is None else self.rotary.rotate(h, rotary_tables)
        x = x + self.dropout(self.self_attn(qk, qk, h))
        h = self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout(h)


class FiLM(nn.Module):
    """`(scale, shift)` [B, 1, d] each, from `Linear(Mish(v))` of a vector v [B, d]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Mish(), nn.Linear(dim, 2 * dim))

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = rearrange(self.block(v), "b c -> b 1 c").chunk(2, dim=-1)
        return scale, shift


def _modulate(x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    scale, shift = scale_shift
    return (scale + 1) * x + shift


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention, cross-attention, feed-forward, each FiLM-ed."""

    def __init__(self, cfg: LMDMConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        d = cfg.latent_dim
        self.self_attn = Attention(d, cfg.num_heads, cfg.dropout)
        self.multihead_attn = Attention(d, cfg.num_heads, cfg.dropout)
        self.linear1 = nn.Linear(d, cfg.ff_size)
        self.linear2 = nn.Linear(cfg.ff_size, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.film1 = FiLM(d)
        self.film2 = FiLM(d)
        self.film3 = FiLM(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.rotary = rotary

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_rotated: torch.Tensor,
        film: torch.Tensor,
        rotary_tables: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        h = self.norm1(x)
        qk = self.rotary.rotate(h, rotary_tables)
        x = x + _modulate(self.dropout(self.self_attn(qk, qk, h)), self.film1(film))
        h = self.norm2(x)
        h = self.multihead_attn(self.rotary.rotate(h, rotary_tables), memory_rotated, memory)
        x = x + _modulate(self.dropout(h), self.film2(film))
        h = self.linear2(self.dropout(F.gelu(self.linear1(self.norm3(x)))))
        return x + _modulate(self.dropout(h), self.film3(film))


class DecoderStack(nn.Module):
    """Holds the decoder layers under `stack` (the release's key prefix)."""

    def __init__(self, layers: list[DecoderLayer]) -> None:
        super().__init__()
        self.stack = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        if not len(self.stack):
            return x
        # Every layer shares the rotary module: one table, and the memory (keys) rotated once.
        rotary = self.stack[0].rotary
        tables = rotary.tables(max(x.shape[-2], memory.shape[-2]), x.dtype)
        memory_rotated = rotary.rotate(memory, tables)
        for layer in self.stack:
            x = layer(x, memory, memory_rotated, film, tables)
        return x


class SinusoidalTimestepEmbedding(nn.Module):
    """`[sin(t * f_i), cos(t * f_i)]` with f_i = exp(-ln(10000) * i / (half - 1)), i < half."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000) / (half - 1)))
        angles = t[:, None].to(freqs.dtype) * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class MotionDecoder(nn.Module):
    """The LMDM transformer (the release's inner module; its state_dict is the checkpoint)."""

    def __init__(self, config: LMDMConfig | None = None) -> None:
        super().__init__()
        cfg = config or LMDMConfig()
        self.config = cfg
        d = cfg.latent_dim
        self.rotary = RotaryEmbedding(d, cfg.rotary_theta)
        self.time_mlp = nn.Sequential(
            SinusoidalTimestepEmbedding(d), nn.Linear(d, 4 * d), nn.Mish()
        )
        self.to_time_cond = nn.Sequential(nn.Linear(4 * d, d))
        self.to_time_tokens = nn.Sequential(
            nn.Linear(4 * d, 2 * d), Rearrange("b (r d) -> b r d", r=2)
        )
        self.null_cond_embed = nn.Parameter(torch.randn(1, cfg.seq_frames, d))
        self.null_cond_hidden = nn.Parameter(torch.randn(1, d))
        self.norm_cond = nn.LayerNorm(d)
        in_feats = 2 * cfg.motion_feat_dim + (1 if cfg.multi_cond_frame else 0)
        self.input_projection = nn.Linear(in_feats, d)
        self.cond_encoder = nn.Sequential(
            *(CondEncoderLayer(cfg, self.rotary) for _ in range(cfg.num_cond_layers))
        )
        self.cond_projection = nn.Linear(cfg.audio_feat_dim, d)
        self.non_attn_cond_projection = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d)
        )
        self.seqTransDecoder = DecoderStack(
            [DecoderLayer(cfg, self.rotary) for _ in range(cfg.num_layers)]
        )
        self.final_layer = nn.Linear(d, cfg.motion_feat_dim)

    # -- pieces shared by the single-branch and the guided forward --------------------------

    def embed_motion(self, x: torch.Tensor, cond_frame: torch.Tensor) -> torch.Tensor:
        """Noisy motion [B, L, D] + conditioning frame [B, D] ([B, L, D+1] if multi) -> [B, L, d]."""
        if not self.config.multi_cond_frame:
            cond_frame = repeat(cond_frame, "b f -> b n f", n=x.shape[1])
        return self.input_projection(torch.cat((x, cond_frame), dim=-1))

    def embed_time(self, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps [B] -> FiLM vector (before the condition is added) [B, d], tokens [B, 2, d]."""
        # The sinusoid is computed in float32 (as the release); the MLP runs in the weights' dtype.
        sinusoid = self.time_mlp[0](times).to(self.to_time_cond[0].weight.dtype)
        hidden = self.time_mlp[1:](sinusoid)
        return self.to_time_cond(hidden), self.to_time_tokens(hidden)

    def encode_condition(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition [B, L, C] -> encoded tokens [B, L, d] and pooled vector [B, d]."""
        tokens = self.cond_projection(cond)
        tables = self.rotary.tables(tokens.shape[-2], tokens.dtype)
        for layer in self.cond_encoder:
            tokens = layer(tokens, tables)
        return tokens, self.non_attn_cond_projection(tokens.mean(dim=-2))

    def null_condition(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned unconditional tokens and pooled vector, expanded to `batch`."""
        tokens = self.null_cond_embed.to(dtype).expand(batch, -1, -1)
        return tokens, self.null_cond_hidden.to(dtype).expand(batch, -1)

    def decode(
        self,
        h: torch.Tensor,
        cond_tokens: torch.Tensor,
        cond_hidden: torch.Tensor,
        time_film: torch.Tensor,
        time_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """Run the decoder stack on latent motion `h` and return the x_0 prediction [B, L, D]."""
        memory = self.norm_cond(torch.cat((cond_tokens, time_tokens), dim=-2))
        return self.final_layer(self.seqTransDecoder(h, memory, time_film + cond_hidden))

    # -- forwards ------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        cond_frame: torch.Tensor,
        cond: torch.Tensor,
        times: torch.Tensor,
        cond_drop_prob: float = 0.0,
        *,
        keep_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One branch: x_0 prediction [B, L, D] with the condition dropped per sample.

        `cond_drop_prob` 1 gives the unconditional branch, 0 the conditional one; in
        between each sample is dropped with that probability (training), drawn from
        `generator`. `keep_mask` [B] bool overrides the draw.
        """
        batch = x.shape[0]
        times = _per_sample(times, batch, x.device)
        h = self.embed_motion(x, cond_frame)
        time_film, time_tokens = self.embed_time(times)
        if keep_mask is None:
            if cond_drop_prob >= 1:
                keep_mask = torch.zeros(batch, dtype=torch.bool, device=x.device)
            elif cond_drop_prob <= 0:
                keep_mask = None  # everything kept
            else:
                gen_device = generator.device if generator is not None else x.device
                draw = torch.rand(batch, generator=generator, device=gen_device).to(x.device)
                keep_mask = draw < 1 - cond_drop_prob
        null_tokens, null_hidden = self.null_condition(batch, h.dtype)
        if keep_mask is not None and not keep_mask.any():
            # Nothing kept: the condition encoder's output would be discarded anyway.
            tokens, hidden = null_tokens, null_hidden
        else:
            tokens, hidden = self.encode_condition(cond)
            if keep_mask is not None:
                tokens = torch.where(keep_mask[:, None, None], tokens, null_tokens)
                hidden = torch.where(keep_mask[:, None], hidden, null_hidden)
        return self.decode(h, tokens, hidden, time_film, time_tokens)

    def guided_branches(
        self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, times: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unconditional and conditional x_0 predictions, from one decoder pass at batch 2B.

        The motion and time embeddings are shared and the condition is encoded once
        (the unconditional branch does not use it).
        """
        batch = x.shape[0]
        times = _per_sample(times, batch, x.device)
        h = self.embed_motion(x, cond_frame)
        time_film, time_tokens = self.embed_time(times)
        cond_tokens, cond_hidden = self.encode_condition(cond)
        null_tokens, null_hidden = self.null_condition(batch, h.dtype)
        out = self.decode(
            torch.cat((h, h)),
            torch.cat((null_tokens, cond_tokens)),
            torch.cat((null_hidden, cond_hidden)),
            torch.cat((time_film, time_film)),
            torch.cat((time_tokens, time_tokens)),
        )
        uncond, conditioned = out.chunk(2)
        return uncond, conditioned

    def guided_forward(
        self,
        x: torch.Tensor,
        cond_frame: torch.Tensor,
        cond: torch.Tensor,
        times: torch.Tensor,
        guidance_weight: float,
    ) -> torch.Tensor:
        """Classifier-free guided x_0: `uncond + (cond - uncond) * guidance_weight`."""
        uncond, conditioned = self.guided_branches(x, cond_frame, cond, times)
        return uncond + (conditioned - uncond) * guidance_weight


class LMDM(nn.Module):
    """Guided x_0 / noise predictor around `MotionDecoder` (the checkpoint goes into `.model`).

    `LMDM()` is the v0.4 HuBERT network; keyword arguments override `LMDMConfig`
    fields (`LMDM(audio_feat_dim=1059)`), or pass `config=LMDMConfig(...)`.
    The schedule buffers are derived, not stored in checkpoints.
    """

    alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    sqrt_recip1m_alphas_cumprod: torch.Tensor

    def __init__(self, config: LMDMConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or LMDMConfig()
        if overrides:
            known = {f.name for f in fields(LMDMConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"unknown LMDM config field(s): {', '.join(unknown)}")
            cfg = replace(cfg, **overrides)
        self.config = cfg
        self.model = MotionDecoder(cfg)
        schedule = DiffusionSchedule.cosine(cfg.n_timestep, cfg.cosine_s)
        for name, value in schedule.buffers().items():
            self.register_buffer(name, value, persistent=False)

    @property
    def seq_frames(self) -> int:
        return self.config.seq_frames

    @property
    def motion_feat_dim(self) -> int:
        return self.config.motion_feat_dim

    def extra_repr(self) -> str:
        defaults = asdict(LMDMConfig())
        changed = {k: v for k, v in asdict(self.config).items() if defaults[k] != v}
        return ", ".join(f"{k}={v}" for k, v in changed.items())

    def predict_noise_from_start(
        self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor
    ) -> torch.Tensor:
        return predict_noise_from_start(
            x_t, t, x_start, self.sqrt_recip1m_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod
        )

    def forward(
        self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, time_cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided `(pred_noise, x_start)`, each [B, L, D], for x_t at timesteps `time_cond` [B] (or [1])."""
        time_cond = _per_sample(time_cond, x.shape[0], x.device)
        x_start = self.model.guided_forward(
            x, cond_frame, cond, time_cond, self.config.guidance_weight
        )
        if self.config.clip_denoised:
            x_start = x_start.clamp(-1.0, 1.0)
        return self.predict_noise_from_start(x, time_cond, x_start), x_start


def _per_sample(times: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """Timesteps as an int64 tensor [B]; a scalar or a single value is broadcast."""
    times = torch.as_tensor(times, device=device).reshape(-1)
    if times.shape[0] == 1 and batch != 1:
        times = times.expand(batch)
    if times.shape[0] != batch:
        raise ValueError(f"expected {batch} timesteps (or one), got {times.shape[0]}")
    return times.long()
