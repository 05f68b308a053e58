"""One DDIM sampler (Song et al. 2020) for all three methods.

The sampler sees a model only as ``model_fn(x_t, t) -> prediction`` (t a [B] long
tensor); each call site adapts its network with a closure. What differs between
the methods is a parameter, not a class:

=========  ==================  ============  ====================  =====
method     schedule            prediction    time grid (spacing)   eta
=========  ==================  ============  ====================  =====
Ditto      ``cosine()``        ``"x0"``      ``"ditto"``           1
DiT-Head   ``adm_linear()``    ``"epsilon"`` ``"adm"``             0
DiffTalk   ``scaled_linear()`` ``"epsilon"`` ``"leading"``, +1     0
=========  ==================  ============  ====================  =====

A time grid is a list of ``(t, t_prev)`` pairs; ``t_prev = -1`` means the clean
sample (alpha = 1): that step returns the predicted x_0. Every step with
``t_prev >= 0`` moves to ``x = sqrt(a_prev) x0 + c eps + sigma z``, with Ditto
release's float32 coefficients (`ddim_coefficients`) computed in the schedule's dtype.

Randomness comes from the ``generator`` only (or torch's global RNG without one):
x_T first (when the sampler draws it), then, per step, whatever ``before_step``
draws (inpainting) and, when eta > 0, one step-noise tensor for each step with
``t_prev >= 0``. ``step_noise`` fixes the step noise explicitly.

Deliberate difference from the Ditto release: the release draws the per-step noise
once, when a step count is first set up, and reuses those tensors for every later
window sampled with that step count, so consecutive windows share their stochastic
component (only x_T is fresh). Here the noise is fresh on every call (passing it as
``step_noise`` reproduces the release exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal, Protocol, get_args

import numpy as np
import torch

from talkinghead.diffusion.schedules import (
    DiffusionSchedule,
    predict_noise_from_start,
    randn_like_generator,
)

Prediction = Literal["x0", "epsilon"]
Spacing = Literal["ditto", "adm", "leading", "trailing"]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t [B]) -> x_0 or eps
StepHook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t [B]) -> x_t
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (i, t, x_t, x0)


class Denoiser(Protocol):
    """A Ditto-style motion model (`talkinghead.models.lmdm.LMDM` is one)."""

    seq_frames: int
    motion_feat_dim: int

    def __call__(
        self, x: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, time_cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


# ------------------------------------------------------------------------------ time grids


def ddim_time_pairs(
    num_steps: int,
    n_timestep: int = 1000,
    *,
    spacing: Spacing = "ditto",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
) -> list[tuple[int, int]]:
    """The `(t, t_prev)` pairs of a `num_steps`-step DDIM grid, from high noise down.

    * ``"ditto"`` (the Ditto release): a float32 ``linspace(-1, T - 1, N + 1)`` truncated
      to integers; 10 steps give (999, 899), ..., (99, -1).
    * ``"adm"`` (ADM's "ddimN" respacing, DiT-Head): `adm_timesteps`, then down to -1.
    * ``"leading"`` / ``"trailing"``: diffusers' `DDIMScheduler` spacings, with its
      ``t_prev = t - T // N``; ``steps_offset`` shifts "leading" (diffusers'
      ``steps_offset``); where t_prev < 0 the last step goes to the clean sample, or
      to alpha_bar[0] with ``set_alpha_to_one=False`` (DiffTalk: CompVis' DDIM).
    """
    if spacing not in get_args(Spacing):
        raise ValueError(f"spacing must be one of {get_args(Spacing)}, got {spacing!r}")
    if not 1 <= num_steps <= n_timestep:
        raise ValueError(f"num_steps must be in [1, {n_timestep}], got {num_steps}")
    if steps_offset and spacing != "leading":
        raise ValueError(f"steps_offset applies to the 'leading' spacing, not {spacing!r}")
    if not set_alpha_to_one and spacing not in ("leading", "trailing"):
        raise ValueError(f"set_alpha_to_one=False applies to diffusers' spacings, not {spacing!r}")

    if spacing == "ditto":
        times = torch.linspace(-1, n_timestep - 1, steps=num_steps + 1).int().tolist()[::-1]
        return list(pairwise(times))
    if spacing == "adm":
        times = [*adm_timesteps(num_steps, n_timestep)[::-1], -1]
        return list(pairwise(times))
    # diffusers computes these in numpy; so do we, to get its integers exactly.
    if spacing == "leading":
        ratio = n_timestep // num_steps
        ts = (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
    else:
        ts = np.round(np.arange(n_timestep, 0, -n_timestep / num_steps)).astype(np.int64) - 1
    final = -1 if set_alpha_to_one else 0
    step = n_timestep // num_steps
    pairs = [(int(t), int(t) - step if int(t) - step >= 0 else final) for t in ts]
    _check_pairs(pairs, n_timestep)
    return pairs


def adm_timesteps(num_steps: int, n_timestep: int = 1000) -> list[int]:
    """Ascending timesteps of ADM's "ddimN" respacing.

    The smallest integer stride giving exactly N steps from 0 (250 of 1000 -> stride 4,
    0 ... 996); when no stride does, N evenly spaced steps from 0 to T - 1, rounded.
    """
    if not 1 <= num_steps <= n_timestep:
        raise ValueError(f"num_steps must be in [1, {n_timestep}], got {num_steps}")
    for stride in range(1, n_timestep + 1):
        if len(range(0, n_timestep, stride)) == num_steps:
            return list(range(0, n_timestep, stride))
    return sorted({round(x) for x in np.linspace(0, n_timestep - 1, num_steps)})


def _check_pairs(pairs: Sequence[tuple[int, int]], n_timestep: int) -> None:
    if not pairs:
        raise ValueError("a DDIM time grid needs at least one (t, t_prev) pair")
    for t, t_prev in pairs:
        # t_prev == t is a no-op step (diffusers' "leading" grid ending on alpha_bar[0]).
        if not (0 <= t < n_timestep and -1 <= t_prev <= t):
            raise ValueError(
                f"bad DDIM step ({t}, {t_prev}): need 0 <= t < {n_timestep} and -1 <= t_prev <= t"
            )


# ------------------------------------------------------------------------------ coefficients


@dataclass(frozen=True)
class DDIMCoefficients:
    """Per-step coefficients (in the schedule's dtype) of the update
    `x = x0 * alpha_next_sqrt + c * eps + sigma * z`.

    `time_cond`, `alpha_sqrt` (sqrt(a_t)) and `one_minus_alpha_sqrt` (sqrt(1 - a_t)) have
    one entry per pair; `alpha_next_sqrt`, `c` and `sigma` one per pair with t_next >= 0.
    """

    time_pairs: list[tuple[int, int]]
    time_cond: torch.Tensor
    alpha_next_sqrt: torch.Tensor
    c: torch.Tensor
    sigma: torch.Tensor
    alpha_sqrt: torch.Tensor
    one_minus_alpha_sqrt: torch.Tensor

    @property
    def num_noise_steps(self) -> int:
        return int(self.sigma.shape[0])


def ddim_coefficients(
    alphas_cumprod: torch.Tensor,
    steps: int | Sequence[tuple[int, int]],
    eta: float = 1.0,
) -> DDIMCoefficients:
    """The DDIM coefficients for `steps` steps of the Ditto grid, or for explicit `(t, t_prev)` pairs.

    The formulas (and their float32 rounding for a float32 schedule) are the Ditto release's.
    """
    n_timestep = int(alphas_cumprod.shape[0])
    if isinstance(steps, int):
        pairs = ddim_time_pairs(steps, n_timestep)
    else:
        pairs = [(int(t), int(t_prev)) for t, t_prev in steps]
        _check_pairs(pairs, n_timestep)
    noisy = [(t, t_next) for t, t_next in pairs if t_next >= 0]
    alpha = alphas_cumprod[[t for t, _ in noisy]]
    alpha_next = alphas_cumprod[[t_next for _, t_next in noisy]]
    sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
    # With eta = 1, 1 - alpha_next - sigma^2 is 0 in exact arithmetic and can round below 0
    # in float32 (e.g. 3 steps), where the release gets NaN; clamping keeps those steps finite.
    c = (1 - alpha_next - sigma**2).clamp(min=0).sqrt()
    alpha_t = alphas_cumprod[[t for t, _ in pairs]]
    return DDIMCoefficients(
        time_pairs=pairs,
        time_cond=torch.tensor([t for t, _ in pairs], dtype=torch.long),
        alpha_next_sqrt=alpha_next.sqrt(),
        c=c,
        sigma=sigma,
        alpha_sqrt=alpha_t.sqrt(),
        one_minus_alpha_sqrt=(1 - alpha_t).sqrt(),
    )


# ------------------------------------------------------------------------------ sampling


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    *,
    schedule: DiffusionSchedule,
    time_pairs: Sequence[tuple[int, int]],
    prediction: Prediction,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    step_noise: torch.Tensor | Sequence[torch.Tensor] | None = None,
    clip_x0: float | None = None,
    before_step: StepHook | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Denoise `x_T` over `time_pairs` and return the sample (see the module doc).

    model_fn: ``(x_t, t [B]) -> x_0`` (``prediction="x0"``) or ``-> eps`` (``"epsilon"``).
    step_noise: ``[K, *x_T.shape]`` or K tensors, K = the steps with t_prev >= 0;
        used when eta > 0 instead of drawing from `generator`.
    clip_x0: clamp the predicted x_0 to [-clip_x0, clip_x0] (and re-derive eps).
    before_step: ``(x_t, t) -> x_t`` applied before each model call, e.g. inpainting.
    callback: ``(i, t, x_t, x0_pred)`` after each prediction.
    """
    coef = ddim_coefficients(schedule.alphas_cumprod, time_pairs, eta)
    return _ddim_loop(
        model_fn,
        x_T,
        schedule=schedule,
        coef=coef,
        prediction=prediction,
        eta=eta,
        generator=generator,
        step_noise=step_noise,
        clip_x0=clip_x0,
        before_step=before_step,
        callback=callback,
    )


def _ddim_loop(
    model_fn: ModelFn,
    x: torch.Tensor,
    *,
    schedule: DiffusionSchedule,
    coef: DDIMCoefficients,
    prediction: Prediction,
    eta: float,
    generator: torch.Generator | None,
    step_noise: torch.Tensor | Sequence[torch.Tensor] | None,
    clip_x0: float | None,
    before_step: StepHook | None,
    callback: StepCallback | None,
) -> torch.Tensor:
    if prediction not in get_args(Prediction):
        raise ValueError(f"prediction must be one of {get_args(Prediction)}, got {prediction!r}")
    if step_noise is not None and len(step_noise) != coef.num_noise_steps:
        raise ValueError(
            f"step_noise needs {coef.num_noise_steps} entries for {len(coef.time_pairs)} steps, "
            f"got {len(step_noise)}"
        )
    shape, batch = tuple(x.shape), x.shape[0]
    if prediction == "x0":
        # The same tensor ops as Ditto's LMDM uses for its noise prediction (bit-identical).
        recip1m, recipm1 = (
            b.to(device=x.device, dtype=x.dtype)
            for b in (schedule.sqrt_recip1m_alphas_cumprod, schedule.sqrt_recipm1_alphas_cumprod)
        )
    # Python scalars, as the references apply them (ADM's floats, diffusers' CPU 0-dim
    # tensors, the Ditto release's .item()); a scalar is rounded to the data's dtype.
    alpha_sqrt, one_minus_sqrt = coef.alpha_sqrt.tolist(), coef.one_minus_alpha_sqrt.tolist()
    next_sqrt, c, sigma = coef.alpha_next_sqrt.tolist(), coef.c.tolist(), coef.sigma.tolist()
    noisy_step = 0
    for i, (t, t_prev) in enumerate(coef.time_pairs):
        t_batch = torch.full((batch,), t, device=x.device, dtype=torch.long)
        if before_step is not None:
            x = before_step(x, t_batch)
        out = model_fn(x, t_batch)
        if prediction == "x0":
            x0, eps = out, predict_noise_from_start(x, t_batch, out, recip1m, recipm1)
        else:
            x0, eps = (x - one_minus_sqrt[i] * out) / alpha_sqrt[i], out
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x - alpha_sqrt[i] * x0) / one_minus_sqrt[i]
        if callback is not None:
            callback(i, t, x, x0)
        if t_prev < 0:
            x = x0
            continue
        k = noisy_step
        noisy_step += 1
        x = x0 * next_sqrt[k] + c[k] * eps
        if eta > 0:
            if step_noise is None:
                z = randn_like_generator(shape, generator, x)
            else:
                z = _expect_shape(step_noise[k].to(device=x.device, dtype=x.dtype), shape, "noise")
            x = x + sigma[k] * z
    return x


class DDIMSampler:
    """`ddim_sample` with its settings fixed: schedule, steps, grid, prediction, eta.

    The defaults are Ditto's (cosine schedule, x_0 prediction, the release's grid,
    eta = 1); DiT-Head and DiffTalk pass theirs (see the module doc).

    * ``sampler.sample(model_fn, shape, generator=g)``: the generic entry point; draws
      x_T ~ N(0, I) (unless `x_T` is given) on `device` in `dtype`, then denoises.
    * ``sampler(model, cond_frame, cond, generator=g)``: a Ditto motion model
      (`Denoiser`), one window per batch row, `[B, seq_frames, motion_feat_dim]`.
    """

    def __init__(
        self,
        num_steps: int = 50,
        eta: float = 1.0,
        schedule: DiffusionSchedule | None = None,
        *,
        prediction: Prediction = "x0",
        spacing: Spacing = "ditto",
        steps_offset: int = 0,
        set_alpha_to_one: bool = True,
        clip_x0: float | None = None,
    ) -> None:
        if prediction not in get_args(Prediction):
            raise ValueError(
                f"prediction must be one of {get_args(Prediction)}, got {prediction!r}"
            )
        self.schedule = schedule if schedule is not None else DiffusionSchedule.cosine()
        self.num_steps = num_steps
        self.eta = eta
        self.prediction: Prediction = prediction
        self.spacing: Spacing = spacing
        self.clip_x0 = clip_x0
        pairs = ddim_time_pairs(
            num_steps,
            self.schedule.n_timestep,
            spacing=spacing,
            steps_offset=steps_offset,
            set_alpha_to_one=set_alpha_to_one,
        )
        self.coefficients = ddim_coefficients(self.schedule.alphas_cumprod, pairs, eta)

    @property
    def time_pairs(self) -> list[tuple[int, int]]:
        return self.coefficients.time_pairs

    @property
    def timesteps(self) -> list[int]:
        """The model's timesteps, in sampling order."""
        return [t for t, _ in self.time_pairs]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_steps={self.num_steps}, eta={self.eta}, "
            f"prediction={self.prediction!r}, spacing={self.spacing!r}, "
            f"n_timestep={self.schedule.n_timestep})"
        )

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: Sequence[int],
        *,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        step_noise: torch.Tensor | Sequence[torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        before_step: StepHook | None = None,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Sample `shape` from ``model_fn(x_t, t) -> prediction`` (see `ddim_sample`)."""
        shape = tuple(shape)
        like = torch.empty(0, device=device, dtype=dtype)
        x = randn_like_generator(shape, generator, like) if x_T is None else x_T.to(like)
        x = _expect_shape(x, shape, "x_T")
        return _ddim_loop(
            model_fn,
            x,
            schedule=self.schedule,
            coef=self.coefficients,
            prediction=self.prediction,
            eta=self.eta,
            generator=generator,
            step_noise=step_noise,
            clip_x0=self.clip_x0,
            before_step=before_step,
            callback=callback,
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
        """Motion windows `[B, seq_frames, motion_feat_dim]` from a Ditto `Denoiser`."""
        self._check_model(model)
        shape = (cond.shape[0], model.seq_frames, model.motion_feat_dim)
        take = 1 if self.prediction == "x0" else 0  # the model returns (pred_noise, x_start)

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model(x, cond_frame, cond, t)[take]

        return self.sample(
            model_fn,
            shape,
            generator=generator,
            x_T=x_T,
            step_noise=step_noise,
            device=cond.device,
            dtype=cond.dtype,
        )

    def _check_model(self, model: Denoiser) -> None:
        # A model carrying its own schedule must agree with ours, else pred_noise is off.
        own = getattr(model, "alphas_cumprod", None)
        if isinstance(own, torch.Tensor) and own.shape != self.schedule.alphas_cumprod.shape:
            raise ValueError(
                f"model has a {own.shape[0]}-step schedule, sampler {self.schedule.n_timestep}"
            )


def _expect_shape(x: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    return x
