"""DiffTalk's diffusion settings (CompVis latent-diffusion conventions) and masked DDIM.

DiffTalk trains on the latent-diffusion "linear" schedule: 1000 steps with betas
linear in sqrt(beta) from 0.0015 to 0.0195 (diffusers calls it "scaled_linear").
Inference is DDIM (eta 0, 200 steps by default) on the timesteps 1, 6, ..., 996
(diffusers' "leading" spacing with offset 1, which is CompVis' uniform DDIM
discretisation), with the last step landing on alpha_bar[0] (no "alpha = 1").
Both run on the package's one schedule type and DDIM; they give the numbers of
diffusers' `DDPMScheduler.add_noise` / `DDIMScheduler.step` with those settings.

Sampling inpaints, as the release does: before every step the region to keep is
replaced by the known latent noised to the current timestep, so only the masked
(mouth) region is generated. Every random draw comes from the caller's
`torch.Generator`, so a seed fixes the result.
"""

from __future__ import annotations

import torch

from talkinghead.diffusion.ddim import DDIMSampler, ModelFn
from talkinghead.diffusion.schedules import DiffusionSchedule, randn_like_generator

TRAIN_TIMESTEPS = 1000
BETA_START = 0.0015
BETA_END = 0.0195
DEFAULT_DDIM_STEPS = 200


def difftalk_schedule(n_timestep: int = TRAIN_TIMESTEPS) -> DiffusionSchedule:
    """DiffTalk's training (and sampling) schedule."""
    return DiffusionSchedule.scaled_linear(n_timestep, BETA_START, BETA_END)


def ddim_sampler(
    steps: int = DEFAULT_DDIM_STEPS, eta: float = 0.0, schedule: DiffusionSchedule | None = None
) -> DDIMSampler:
    """CompVis' DDIM sampler on DiffTalk's schedule (epsilon prediction, timesteps 1 + 5k)."""
    return DDIMSampler(
        steps,
        eta,
        schedule if schedule is not None else difftalk_schedule(),
        prediction="epsilon",
        spacing="leading",
        steps_offset=1,
        set_alpha_to_one=False,
    )


@torch.no_grad()
def masked_ddim_sample(
    eps_fn: ModelFn,
    known: torch.Tensor,
    keep: torch.Tensor,
    *,
    schedule: DiffusionSchedule | None = None,
    steps: int = DEFAULT_DDIM_STEPS,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """Sample x_0 where `keep` is 0, keeping `known` where it is 1.

    eps_fn: ``(x_t, t [B]) -> eps``; known: [B, C, h, w] clean latent of the frame;
    keep: [B or 1, 1, h, w] in [0, 1]. The known region is re-noised with fresh noise at
    every step (CompVis' inpainting rule) and pasted in clean at the end.
    """
    sampler = ddim_sampler(steps, eta, schedule)

    def paste_known(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        noise = randn_like_generator(tuple(known.shape), generator, known)
        return keep * sampler.schedule.q_sample(known, t, noise) + (1 - keep) * x

    x = sampler.sample(
        eps_fn,
        known.shape,
        generator=generator,
        device=known.device,
        dtype=known.dtype,
        before_step=paste_known,
    )
    return keep * known + (1 - keep) * x


__all__ = [
    "BETA_END",
    "BETA_START",
    "DEFAULT_DDIM_STEPS",
    "TRAIN_TIMESTEPS",
    "ddim_sampler",
    "difftalk_schedule",
    "masked_ddim_sample",
]
