"""DiT-Head's stage 3 (2x frame interpolation) lives in `talkinghead.frames.interpolation`,
shared with DiffTalk; this module keeps the old import path."""

from talkinghead.frames.interpolation import (
    KINDS,
    RIFE_DIRNAME,
    RIFE_FILE,
    FlowInterpolator,
    Interpolator,
    RIFEInterpolator,
    create_interpolator,
    interpolate_2x,
    rife_weights,
)

__all__ = [
    "KINDS",
    "RIFE_DIRNAME",
    "RIFE_FILE",
    "FlowInterpolator",
    "Interpolator",
    "RIFEInterpolator",
    "create_interpolator",
    "interpolate_2x",
    "rife_weights",
]
