"""Noise schedules of the three methods, as one `DiffusionSchedule` type.

Each constructor reproduces its source's precision path, which is part of the
numbers the methods produce:

* `DiffusionSchedule.cosine()`: Ditto's motion model (the cosine schedule of
  Nichol & Dhariwal 2021, 1000 steps). The betas are computed in float64, cast to
  float32, and the cumulative product is taken in float32, as the release does.
* `DiffusionSchedule.adm_linear()`: DiT-Head ("the same hyperparameters as ADM"):
  ADM's linear betas 1e-4 -> 0.02, rescaled by 1000 / T, everything in float64.
* `DiffusionSchedule.scaled_linear(T, beta_start, beta_end)`: DiffTalk (CompVis'
  "linear", betas linear in sqrt(beta)), in float32 exactly as diffusers'
  `beta_schedule="scaled_linear"` computes it.

All buffers are CPU tensors in the schedule's dtype; `q_sample`, `predict_x0` and
`training_loss` compute their per-timestep factors in that dtype, then cast them to
the data's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t [B]) -> eps


def cosine_beta_schedule(
    n_timestep: int = 1000, s: float = 8e-3, max_beta: float = 0.999
) -> torch.Tensor:
    """Betas of the cosine schedule, float64 [n_timestep], clipped to [0, max_beta]."""
    _check_length(n_timestep)
    steps = torch.arange(n_timestep + 1, dtype=torch.float64) / n_timestep + s
    alpha_bar = torch.cos(steps / (1 + s) * math.pi / 2) ** 2
    alpha_bar = alpha_bar / alpha_bar[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(0.0, max_beta)


def linear_beta_schedule(n_timestep: int = 1000) -> torch.Tensor:
    """ADM's linear betas, float64 [n_timestep] (1e-4 -> 0.02 at 1000 steps, scaled by 1000 / T)."""
    _check_length(n_timestep)
    scale = 1000 / n_timestep
    # numpy's linspace, as ADM: torch's rounds some interior points differently.
    return torch.from_numpy(np.linspace(scale * 1e-4, scale * 0.02, n_timestep, dtype=np.float64))


def scaled_linear_beta_schedule(
    n_timestep: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """Betas linear in sqrt(beta), float32 [n_timestep] (diffusers' "scaled_linear")."""
    _check_length(n_timestep)
    return torch.linspace(beta_start**0.5, beta_end**0.5, n_timestep, dtype=torch.float32) ** 2


def _check_length(n_timestep: int) -> None:
    if n_timestep < 1:
        raise ValueError(f"n_timestep must be >= 1, got {n_timestep}")


@dataclass(frozen=True)
class DiffusionSchedule:
    """Buffers of a discrete diffusion schedule (CPU tensors of length n_timestep, one dtype).

    `sqrt_recip1m_alphas_cumprod` = sqrt(1 / (1 - a_t)) and `sqrt_recipm1_alphas_cumprod`
    = sqrt(1 / a_t - 1) are what turns a predicted x_0 back into a noise prediction.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    sqrt_recip1m_alphas_cumprod: torch.Tensor

    @classmethod
    def from_betas(
        cls, betas: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> DiffusionSchedule:
        # The cast happens *before* the cumulative product (the Ditto release's behaviour).
        betas = betas.to(dtype)
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
        """Ditto's LMDM schedule (defaults = the release's), float32."""
        return cls.from_betas(cosine_beta_schedule(n_timestep, s, max_beta))

    @classmethod
    def adm_linear(cls, n_timestep: int = 1000) -> DiffusionSchedule:
        """DiT-Head's schedule: ADM's linear betas, float64 throughout."""
        return cls.from_betas(linear_beta_schedule(n_timestep), torch.float64)

    @classmethod
    def scaled_linear(
        cls, n_timestep: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> DiffusionSchedule:
        """diffusers' "scaled_linear" (CompVis' "linear"; DiffTalk: 0.0015 -> 0.0195), float32."""
        return cls.from_betas(scaled_linear_beta_schedule(n_timestep, beta_start, beta_end))

    @property
    def n_timestep(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.alphas_cumprod.dtype

    def buffers(self) -> dict[str, torch.Tensor]:
        """The buffers a denoiser module registers (names as in the Ditto release)."""
        return {
            "alphas_cumprod": self.alphas_cumprod,
            "sqrt_recipm1_alphas_cumprod": self.sqrt_recipm1_alphas_cumprod,
            "sqrt_recip1m_alphas_cumprod": self.sqrt_recip1m_alphas_cumprod,
        }

    def _gather(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # Per-sample factors [B, 1, ...]: computed in the schedule's dtype, then cast.
        out = values.to(like.device)[t.to(like.device).long()]
        return out.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps for per-sample timesteps t [B]."""
        a = self.alphas_cumprod
        return self._gather(a.sqrt(), t, x0) * x0 + self._gather((1 - a).sqrt(), t, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(1 / a_t) x_t - sqrt(1 / a_t - 1) eps for per-sample timesteps t [B]."""
        a = self.alphas_cumprod
        return (
            self._gather((1 / a).sqrt(), t, x_t) * x_t
            - self._gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device: str = "cpu"
    ) -> torch.Tensor:
        """Uniform training timesteps [batch], drawn on the generator's device."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.n_timestep, (batch,), generator=generator, device=gen_device)
        return t.to(device)

    def training_loss(
        self,
        model: EpsModel,
        x0: torch.Tensor,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The simple epsilon objective E ||eps - eps_theta(x_t, t)||^2 (a scalar)."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], generator, str(x0.device))
        if noise is None:
            noise = randn_like_generator(x0.shape, generator, x0, torch.float32)
        eps = model(self.q_sample(x0, t, noise), t)
        return torch.mean((eps.float() - noise.float()) ** 2)


def randn_like_generator(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    like: torch.Tensor,
    draw_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Normal noise on `like`'s device and dtype, drawn on the generator's device.

    Drawing there (and in `draw_dtype`, default `like.dtype`) makes a CPU generator give
    the same numbers whatever the target device.
    """
    gen_device = generator.device if generator is not None else like.device
    out = torch.randn(shape, generator=generator, device=gen_device, dtype=draw_dtype or like.dtype)
    return out.to(device=like.device, dtype=like.dtype)


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


__all__ = [
    "DiffusionSchedule",
    "EpsModel",
    "cosine_beta_schedule",
    "linear_beta_schedule",
    "predict_noise_from_start",
    "randn_like_generator",
    "scaled_linear_beta_schedule",
]
