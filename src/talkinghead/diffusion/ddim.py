"""DDIM sampling for x_0-predicting denoisers such as Ditto's motion model.

The sampler owns the loop and the per-step coefficients; the model only maps
`(x_t, cond_frame, cond, t)` to `(pred_noise, x_start)` (see `Denoiser`). The
time grid, `eta` and the coefficients follow the release's `LMDM.setup`.

Deliberate difference from the release: the release draws the per-step noise
once, when a step count is first set up, and reuses those same tensors for
every later window sampled with that step count, so consecutive windows share
their stochastic component (only the initial x_T is fresh). `DDIMSampler`
draws fresh per-step noise on every call from the given generator (or takes it
explicitly via `step_noise`, which also reproduces the release exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

import torch

from talkinghead.diffusion.schedule import DiffusionSchedule


class Denoiser(Protocol):
    """What `DDIMSampler` needs from a model (`talkinghead.models.lmdm.LMDM` is one)."""

    seq_frames: int
    motion_feat_dim: int

    def __call__(
        self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, time_cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def ddim_time_pairs(num_steps: int, n_timestep: int = 1000) -> list[tuple[int, int]]:
    """`(t, t_next)` pairs from t = n_timestep - 1 down to t_next = -1 (the final x_0 step).

    The grid is a float32 `linspace(-1, n_timestep - 1, num_steps + 1)` truncated
    to integers, as in the release; e.g. 10 steps give (999, 899), ..., (99, -1).
    """
    if not 1 <= num_steps <= n_timestep:
        raise ValueError(f"num_steps must be in [1, {n_timestep}], got {num_steps}")
    times = torch.linspace(-1, n_timestep - 1, steps=num_steps + 1).int().tolist()[::-1]
    return list(pairwise(times))


@dataclass(frozen=True)
class DDIMCoefficients:
    """Per-step coefficients of the update `x = x0 * alpha_next_sqrt + c * eps + sigma * z`.

    `time_cond` has one entry per pair; the three coefficient tensors (float32)
    have one entry per pair with t_next >= 0 (all but the last).
    """

    time_pairs: list[tuple[int, int]]
    time_cond: torch.Tensor
    alpha_next_sqrt: torch.Tensor
    c: torch.Tensor
    sigma: torch.Tensor

    @property
    def num_noise_steps(self) -> int:
        return int(self.sigma.shape[0])


def ddim_coefficients(
    alphas_cumprod: torch.Tensor, num_steps: int, eta: float = 1.0
) -> DDIMCoefficients:
    """The DDIM step coefficients for `num_steps` steps (float32, as the release's setup)."""
    pairs = ddim_time_pairs(num_steps, int(alphas_cumprod.shape[0]))
    noisy = [(t, t_next) for t, t_next in pairs if t_next >= 0]
    alpha = alphas_cumprod[[t for t, _ in noisy]]
    alpha_next = alphas_cumprod[[t_next for _, t_next in noisy]]
    sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
    # With eta = 1, 1 - alpha_next - sigma^2 is 0 in exact arithmetic and can round below 0
    # in float32 (e.g. 3 steps), where the release gets NaN; clamping keeps those steps finite.
    c = (1 - alpha_next - sigma**2).clamp(min=0).sqrt()
    return DDIMCoefficients(
        time_pairs=pairs,
        time_cond=torch.tensor([t for t, _ in pairs], dtype=torch.long),
        alpha_next_sqrt=alpha_next.sqrt(),
        c=c,
        sigma=sigma,
    )


class DDIMSampler:
    """DDIM sampler with the release's time grid and coefficients (eta = 1 by default).

    `sampler(model, cond_frame, cond, generator=g)` returns one motion window per
    batch row, `[B, seq_frames, motion_feat_dim]`. Randomness comes from
    `generator` only (or from torch's global RNG when none is given): x_T first,
    then one fresh noise tensor per stochastic step, in step order. Pass `x_T`
    and/or `step_noise` (`[num_steps - 1, B, L, D]`, or a sequence of `[B, L, D]`;
    entry i is used by the i-th pair with t_next >= 0) to fix them explicitly.
    Unlike the release, noise is *not* reused between calls (see the module doc).
    """

    def __init__(
        self,
        num_steps: int = 50,
        eta: float = 1.0,
        schedule: DiffusionSchedule | None = None,
    ) -> None:
        self.schedule = schedule if schedule is not None else DiffusionSchedule.cosine()
        self.num_steps = num_steps
        self.eta = eta
        self.coefficients = ddim_coefficients(self.schedule.alphas_cumprod, num_steps, eta)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_steps={self.num_steps}, eta={self.eta}, "
            f"n_timestep={self.schedule.n_timestep})"
        )

    @torch.no_grad()
    def __call__(
        self,
        model: Denoiser,
        cond_frame: torch.Tensor,
        cond: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        step_noise: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        self._check_model(model)
        coef = self.coefficients
        batch, device = cond.shape[0], cond.device
        shape = (batch, model.seq_frames, model.motion_feat_dim)
        if step_noise is not None and len(step_noise) != coef.num_noise_steps:
            raise ValueError(
                f"step_noise needs {coef.num_noise_steps} entries for {self.num_steps} steps, "
                f"got {len(step_noise)}"
            )

        x = _noise(shape, generator, device, cond.dtype) if x_T is None else x_T
        x = _expect_shape(x.to(device=device, dtype=cond.dtype), shape, "x_T")
        i = 0
        for time_cond, (_, t_next) in zip(coef.time_cond, coef.time_pairs, strict=True):
            t = time_cond.expand(batch).to(device)
            pred_noise, x_start = model(x, cond_frame, cond, t)
            if t_next < 0:
                x = x_start
                continue
            if step_noise is None:
                z = _noise(shape, generator, device, cond.dtype)
            else:
                z = _expect_shape(step_noise[i].to(device=device, dtype=cond.dtype), shape, "noise")
            x = (
                x_start * coef.alpha_next_sqrt[i].item()
                + coef.c[i].item() * pred_noise
                + coef.sigma[i].item() * z
            )
            i += 1
        return x

    def _check_model(self, model: Denoiser) -> None:
        # A model carrying its own schedule must agree with ours, else pred_noise is off.
        own = getattr(model, "alphas_cumprod", None)
        if isinstance(own, torch.Tensor) and own.shape != self.schedule.alphas_cumprod.shape:
            raise ValueError(
                f"model has a {own.shape[0]}-step schedule, sampler {self.schedule.n_timestep}"
            )


def _noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    # Draw on the generator's device so a CPU generator gives the same numbers for any target.
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def _expect_shape(x: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    return x
