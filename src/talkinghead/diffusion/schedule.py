"""Deprecated: the schedules moved to `talkinghead.diffusion.schedules` (kept for one release)."""

from talkinghead.diffusion.schedules import (
    DiffusionSchedule,
    cosine_beta_schedule,
    predict_noise_from_start,
)

__all__ = ["DiffusionSchedule", "cosine_beta_schedule", "predict_noise_from_start"]
