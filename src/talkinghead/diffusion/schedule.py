"""Noise schedules of the diffusion models.

The motion model of Ditto (LMDM) uses the cosine schedule of Nichol & Dhariwal
(2021) with 1000 steps. Its precision path is part of the released behaviour:
the betas are computed in float64, cast to float32, and the cumulative product
is taken in float32; every derived buffer is then computed in float32 from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def cosine_beta_schedule(
    n_timestep: int = 1000, s: float = 8e-3, max_beta: float = 0.999
) -> torch.Tensor:
    """Betas of the cosine schedule, float64 [n_timestep], clipped to [0, max_beta]."""
    if n_timestep < 1:
        raise ValueError(f"n_timestep must be >= 1, got {n_timestep}")
    steps = torch.arange(n_timestep + 1, dtype=torch.float64) / n_timestep + s
    alpha_bar = torch.cos(steps / (1 + s) * math.pi / 2) ** 2
    alpha_bar = alpha_bar / alpha_bar[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(0.0, max_beta)


@dataclass(frozen=True)
class DiffusionSchedule:
    """Float32 buffers of a discrete diffusion schedule (CPU tensors of length n_timestep).

    `sqrt_recip1m_alphas_cumprod` = sqrt(1 / (1 - a_t)) and `sqrt_recipm1_alphas_cumprod`
    = sqrt(1 / a_t - 1) are what turns a predicted x_0 back into a noise prediction.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    sqrt_recip1m_alphas_cumprod: torch.Tensor

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> DiffusionSchedule:
        # The float32 cast happens *before* the cumulative product (release behaviour).
        betas = betas.to(torch.float32)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        return cls(
            betas=betas,
            alphas_cumprod=alphas_cumprod,
            sqrt_recipm1_alphas_cumprod=torch.sqrt(1.0 / alphas_cumprod - 1),
            sqrt_recip1m_alphas_cumprod=torch.sqrt(1.0 / (1.0 - alphas_cumprod)),
        )

    @classmethod
    def cosine(
        cls, n_timestep: int = 1000, s: float = 8e-3, max_beta: float = 0.999
    ) -> DiffusionSchedule:
        """The LMDM schedule (defaults = the release's)."""
        return cls.from_betas(cosine_beta_schedule(n_timestep, s, max_beta))

    @property
    def n_timestep(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def buffers(self) -> dict[str, torch.Tensor]:
        """The buffers a denoiser module registers (names as in the release)."""
        return {
            "alphas_cumprod": self.alphas_cumprod,
            "sqrt_recipm1_alphas_cumprod": self.sqrt_recipm1_alphas_cumprod,
            "sqrt_recip1m_alphas_cumprod": self.sqrt_recip1m_alphas_cumprod,
        }


def predict_noise_from_start(
    x_t: torch.Tensor,
    t: torch.Tensor,
    x_start: torch.Tensor,
    sqrt_recip1m_alphas_cumprod: torch.Tensor,
    sqrt_recipm1_alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """eps = sqrt(1 / (1 - a_t)) * x_t - x_0 / sqrt(1 / a_t - 1), with per-sample t [B]."""
    shape = (t.shape[0],) + (1,) * (x_t.ndim - 1)
    a = sqrt_recip1m_alphas_cumprod.gather(-1, t).reshape(shape)
    b = sqrt_recipm1_alphas_cumprod.gather(-1, t).reshape(shape)
    return a * x_t - x_start / b
