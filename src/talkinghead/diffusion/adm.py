"""The ADM noise schedule (Dhariwal & Nichol 2021) with epsilon prediction, and DDIM sampling.

DiT-Head uses "the same hyperparameters as ADM": 1000 steps of the *linear*
schedule (betas from 1e-4 to 0.02, rescaled by 1000 / T for other step counts),
the model predicting the added noise, and the simple MSE loss. The DiT paper's
learned variance (the second half of ADM's output) is not used: DiT-Head's
objective is epsilon only, and DDIM with eta = 0 does not need a variance.

DDIM runs on ADM's respaced grid: "ddim250" takes every 4th of the 1000 steps
(0, 4, ..., 996), i.e. the smallest stride that gives exactly the requested count,
as ADM's ``space_timesteps`` does. All randomness comes from the ``generator``
(drawn on its device, in a fixed order), so a seed fixes the result.

Schedules are computed in float64 and the per-step coefficients are used as
Python floats, which keeps training and sampling independent of the latent's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t [B]) -> eps


def linear_beta_schedule(n_timestep: int = 1000) -> np.ndarray:
    """ADM's linear betas (float64 [n_timestep])."""
    if n_timestep < 1:
        raise ValueError(f"n_timestep must be >= 1, got {n_timestep}")
    scale = 1000 / n_timestep
    return np.linspace(scale * 1e-4, scale * 0.02, n_timestep, dtype=np.float64)


def ddim_timesteps(num_steps: int, n_timestep: int = 1000) -> list[int]:
    """Ascending timesteps of an N-step DDIM grid (ADM's "ddimN" respacing).

    The smallest integer stride giving exactly N steps from 0 (250 of 1000 -> stride 4,
    0 ... 996); when no stride does, N evenly spaced steps from 0 to T - 1, rounded.
    """
    if not 1 <= num_steps <= n_timestep:
        raise ValueError(f"num_steps must be in [1, {n_timestep}], got {num_steps}")
    for stride in range(1, n_timestep + 1):
        if len(range(0, n_timestep, stride)) == num_steps:
            return list(range(0, n_timestep, stride))
    return sorted({round(x) for x in np.linspace(0, n_timestep - 1, num_steps)})


@dataclass(frozen=True)
class ADMSchedule:
    """Float64 buffers of a discrete Gaussian diffusion with epsilon prediction."""

    betas: np.ndarray
    alphas_cumprod: np.ndarray

    @classmethod
    def linear(cls, n_timestep: int = 1000) -> ADMSchedule:
        betas = linear_beta_schedule(n_timestep)
        return cls(betas=betas, alphas_cumprod=np.cumprod(1.0 - betas))

    @property
    def n_timestep(self) -> int:
        return int(self.betas.shape[0])

    def _gather(self, values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = torch.from_numpy(values).to(like.device)[t.to(like.device).long()]
        return out.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps for per-sample timesteps t [B]."""
        a = self.alphas_cumprod
        return self._gather(np.sqrt(a), t, x0) * x0 + self._gather(np.sqrt(1 - a), t, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod
        return (
            self._gather(np.sqrt(1 / a), t, x_t) * x_t
            - self._gather(np.sqrt(1 / a - 1), t, x_t) * eps
        )

    def sample_timesteps(
        self, batch: int, generator: torch.Generator | None = None, device: str = "cpu"
    ) -> torch.Tensor:
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
        """The simple objective E ||eps - eps_theta(x_t, t)||^2 (a scalar)."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], generator, str(x0.device))
        if noise is None:
            noise = _randn(x0.shape, generator, x0)
        eps = model(self.q_sample(x0, t, noise), t)
        return torch.mean((eps.float() - noise.float()) ** 2)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor):
    # On the generator's device, so a CPU generator gives the same numbers on any target.
    gen_device = generator.device if generator is not None else like.device
    out = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return out.to(device=like.device, dtype=like.dtype)


class DDIMSampler:
    """DDIM (Song et al. 2020) for epsilon-predicting models on an ADM schedule.

    ``sampler(model, shape, generator=g)`` denoises from x_T ~ N(0, I) (or the given
    ``x_T``) over ``num_steps`` respaced steps and returns x_0. ``eta = 0`` (the
    default) is deterministic given x_T; ``eta > 0`` draws one noise tensor per step
    from the generator. ``callback(i, t, x_t, x0_pred)`` sees every step.
    """

    def __init__(
        self,
        num_steps: int = 250,
        eta: float = 0.0,
        schedule: ADMSchedule | None = None,
        clip_x0: float | None = None,
    ) -> None:
        self.schedule = schedule if schedule is not None else ADMSchedule.linear()
        self.num_steps = num_steps
        self.eta = eta
        self.clip_x0 = clip_x0
        self.timesteps = ddim_timesteps(num_steps, self.schedule.n_timestep)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_steps={self.num_steps}, eta={self.eta})"

    @torch.no_grad()
    def __call__(
        self,
        model: EpsModel,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        like = torch.empty(0, device=device, dtype=dtype)
        x = _randn(tuple(shape), generator, like) if x_T is None else x_T.to(like)
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"x_T must have shape {list(shape)}, got {list(x.shape)}")
        a = self.schedule.alphas_cumprod
        steps = self.timesteps[::-1]
        for i, t in enumerate(steps):
            t_prev = steps[i + 1] if i + 1 < len(steps) else -1
            a_t = float(a[t])
            a_prev = float(a[t_prev]) if t_prev >= 0 else 1.0
            eps = model(x, torch.full((shape[0],), t, device=x.device, dtype=torch.long))
            x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
            if self.clip_x0 is not None:
                x0 = x0.clamp(-self.clip_x0, self.clip_x0)
                eps = (x - a_t**0.5 * x0) / (1 - a_t) ** 0.5
            if callback is not None:
                callback(i, t, x, x0)
            sigma = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
            x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
            if sigma > 0 and t_prev >= 0:
                x = x + sigma * _randn(tuple(shape), generator, x)
        return x
