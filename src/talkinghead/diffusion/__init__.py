"""Diffusion schedules and the one DDIM sampler, kept apart from the denoising networks.

`schedules.DiffusionSchedule` holds a noise schedule's buffers (Ditto:
`DiffusionSchedule.cosine()`, DiT-Head: `.adm_linear()`, DiffTalk: `.scaled_linear()`);
`ddim.ddim_sample` / `ddim.DDIMSampler` run the reverse process for any
``model_fn(x_t, t) -> x_0 or eps``, with the prediction type and the time grid as
parameters. `DDIMSampler(...)(model, cond_frame, cond)` samples Ditto's motion model.
`seeding.noise_generator` turns a seed (or a given generator) into the CPU generator the
latent methods draw their noise from.
"""

from talkinghead.diffusion.ddim import (
    DDIMCoefficients,
    DDIMSampler,
    Denoiser,
    ModelFn,
    Prediction,
    Spacing,
    adm_timesteps,
    ddim_coefficients,
    ddim_sample,
    ddim_time_pairs,
)
from talkinghead.diffusion.schedules import (
    DiffusionSchedule,
    cosine_beta_schedule,
    linear_beta_schedule,
    predict_noise_from_start,
    scaled_linear_beta_schedule,
)
from talkinghead.diffusion.seeding import noise_generator

__all__ = [
    "DDIMCoefficients",
    "DDIMSampler",
    "Denoiser",
    "DiffusionSchedule",
    "ModelFn",
    "Prediction",
    "Spacing",
    "adm_timesteps",
    "cosine_beta_schedule",
    "ddim_coefficients",
    "ddim_sample",
    "ddim_time_pairs",
    "linear_beta_schedule",
    "noise_generator",
    "predict_noise_from_start",
    "scaled_linear_beta_schedule",
]
