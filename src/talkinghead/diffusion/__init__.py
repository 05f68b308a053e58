"""Diffusion schedules and samplers, kept apart from the denoising networks.

`DiffusionSchedule` holds the float32 buffers of a noise schedule (Ditto's LMDM
uses `DiffusionSchedule.cosine()`); `DDIMSampler` runs the reverse process for
any model that maps `(x_t, cond_frame, cond, t)` to `(pred_noise, x_start)`.
"""

from talkinghead.diffusion.ddim import (
    DDIMCoefficients,
    DDIMSampler,
    Denoiser,
    ddim_coefficients,
    ddim_time_pairs,
)
from talkinghead.diffusion.schedule import (
    DiffusionSchedule,
    cosine_beta_schedule,
    predict_noise_from_start,
)

__all__ = [
    "DDIMCoefficients",
    "DDIMSampler",
    "Denoiser",
    "DiffusionSchedule",
    "cosine_beta_schedule",
    "ddim_coefficients",
    "ddim_time_pairs",
    "predict_noise_from_start",
]
