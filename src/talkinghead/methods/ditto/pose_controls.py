"""The names of Ditto's whole-clip head-pose settings, without the control machinery's imports
(torch): batch job files and the app validate against them before anything heavy loads."""

from __future__ import annotations

# Head-pose offsets (degrees) and scales: whole-clip settings (CLI, batch jobs, the app) and keys.
POSE_CONTROLS: tuple[str, ...] = (
    "delta_pitch",
    "delta_yaw",
    "delta_roll",
    "alpha_pitch",
    "alpha_yaw",
    "alpha_roll",
)

__all__ = ["POSE_CONTROLS"]
