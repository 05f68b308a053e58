"""Latent-diffusion noise schedules (CompVis conventions) and masked DDIM sampling.

DiffTalk trains on the latent-diffusion "linear" schedule: 1000 steps with betas
linear in sqrt(beta) from 0.0015 to 0.0195 (diffusers calls it "scaled_linear").
Inference is DDIM (eta 0, 200 steps by default) on the timesteps 1, 6, ..., 996
(diffusers' "leading" spacing with offset 1, which is CompVis' uniform DDIM
discretisation), with the last step landing on alpha_bar[0] (no "alpha = 1").

Sampling inpaints, as the release does: before every step the region to keep is
replaced by the known latent noised to the current timestep, so only the masked
(mouth) region is generated. Every random draw comes from the caller's
`torch.Generator`, so a seed fixes the result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TRAIN_TIMESTEPS = 1000
BETA_START = 0.0015
BETA_END = 0.0195
DEFAULT_DDIM_STEPS = 200


def training_scheduler(num_train_timesteps: int = TRAIN_TIMESTEPS):
    """diffusers `DDPMScheduler` with DiffTalk's schedule (for `add_noise` in training)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )


def ddim_scheduler(num_train_timesteps: int = TRAIN_TIMESTEPS):
    """diffusers `DDIMScheduler` reproducing CompVis' DDIM sampler on that schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )


# (x_t, t as a [B] long tensor) -> predicted noise
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def masked_ddim_sample(
    eps_fn: EpsFn,
    known: torch.Tensor,
    keep: torch.Tensor,
    *,
    scheduler=None,
    steps: int = DEFAULT_DDIM_STEPS,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """Sample x_0 where `keep` is 0, keeping `known` where it is 1.

    known: [B, C, h, w] clean latent of the frame; keep: [B or 1, 1, h, w] in [0, 1].
    The known region is re-noised with fresh noise at every step (CompVis' inpainting
    rule) and pasted in clean at the end.
    """
    scheduler = scheduler or ddim_scheduler()
    scheduler.set_timesteps(steps, device=known.device)

    def randn() -> torch.Tensor:
        # Drawn on the generator's device, then moved: the same seed gives the same numbers
        # on any device.
        gen_device = generator.device if generator is not None else "cpu"
        return torch.randn(
            known.shape, generator=generator, device=gen_device, dtype=known.dtype
        ).to(known.device)

    x = randn()
    b = known.shape[0]
    for t in scheduler.timesteps:
        tt = torch.full((b,), int(t), device=known.device, dtype=torch.long)
        noised = scheduler.add_noise(known, randn(), tt)
        x = keep * noised + (1 - keep) * x
        eps = eps_fn(x, tt)
        noise = randn() if eta > 0 else None
        x = scheduler.step(eps, int(t), x, eta=eta, variance_noise=noise).prev_sample
    return keep * known + (1 - keep) * x


__all__ = [
    "BETA_END",
    "BETA_START",
    "DEFAULT_DDIM_STEPS",
    "TRAIN_TIMESTEPS",
    "ddim_scheduler",
    "masked_ddim_sample",
    "training_scheduler",
]
