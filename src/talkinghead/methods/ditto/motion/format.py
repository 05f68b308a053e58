"""Ditto's 265-dim motion vector and its keyed (renderer) form.

One motion frame is the concatenation, in this order, of

=======  ====  ==================================================
key      size  content
=======  ====  ==================================================
scale       1  keypoint scale, stored as ``scale - 1``
pitch      66  66-bin pose logits
yaw        66  66-bin pose logits
roll       66  66-bin pose logits
t           3  translation
exp        63  expression offsets of the 21 keypoints
=======  ====  ==================================================

The release's converter also knows an optional trailing ``kp`` block (63
canonical keypoints, 328 dims in all). The motion model never produces it, so
the 265-dim vector is the normal form; a 328-dim vector is accepted and ``kp``
is carried through, and a ``kp`` supplied next to a 265-dim vector is passed
through into the dict unchanged.

Conversions work on torch tensors and numpy arrays alike and are batched over
any leading dims: ``[..., 265] <-> {key: [..., size]}``. They are lossless
except for the ``scale`` offset, where ``(v + 1) - 1`` can round by one float
ulp (it is exact for scales in [0.5, 2], the range real faces live in).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", torch.Tensor, np.ndarray)


@dataclass(frozen=True)
class MotionField:
    """One named block of the motion vector."""

    name: str
    size: int
    offset: int
    shift: float = 0.0  # stored value = dict value - shift (1.0 for scale)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


@dataclass(frozen=True)
class MotionLayout:
    """Ordered fields of a motion vector."""

    fields: tuple[MotionField, ...]

    @classmethod
    def from_sizes(
        cls, sizes: tuple[tuple[str, int], ...], shifts: Mapping[str, float] | None = None
    ) -> MotionLayout:
        shifts = shifts or {}
        fields, offset = [], 0
        for name, size in sizes:
            fields.append(MotionField(name, size, offset, shifts.get(name, 0.0)))
            offset += size
        return cls(tuple(fields))

    @property
    def dim(self) -> int:
        return sum(f.size for f in self.fields)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def __getitem__(self, name: str) -> MotionField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


MOTION_LAYOUT = MotionLayout.from_sizes(
    (("scale", 1), ("pitch", 66), ("yaw", 66), ("roll", 66), ("t", 3), ("exp", 63)),
    shifts={"scale": 1.0},
)
# The release's converter with its optional canonical-keypoint block appended.
MOTION_LAYOUT_WITH_KP = MotionLayout((*MOTION_LAYOUT.fields, MotionField("kp", 63, 265)))
# The keys of the keyed form, in the vector's order: scale, pitch, yaw, roll, t, exp, kp.
MOTION_KEYS: tuple[str, ...] = MOTION_LAYOUT_WITH_KP.names

MOTION_DIM = MOTION_LAYOUT.dim  # 265
# Scale, pose and translation: the dims the clip-wise generator smooths (exp is left alone).
POSE_DIMS = MOTION_LAYOUT["exp"].offset  # 202


def _concat(parts: list[Array]) -> Array:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts, dim=-1)
    return np.concatenate(parts, axis=-1)


def _as_block(value: Array, size: int, name: str) -> Array:
    # Accept a trailing singleton-free layout too, e.g. scale [...] instead of [..., 1].
    if value.shape[-1:] != (size,):
        if size == 1:
            value = value[..., None]
        else:
            raise ValueError(f"motion field {name!r} must end in {size}, got {tuple(value.shape)}")
    return value


def dict_to_motion(info: Mapping[str, Array], *, include_kp: bool = False) -> Array:
    """Keyed motion ``{scale, pitch, yaw, roll, t, exp[, kp]}`` -> vector ``[..., 265]``.

    ``kp`` is ignored unless ``include_kp`` is set (then the vector has 328
    dims). Leading dims of all fields must agree; ``scale`` may also come
    without its trailing 1.
    """
    layout = MOTION_LAYOUT_WITH_KP if include_kp else MOTION_LAYOUT
    missing = [f.name for f in layout.fields if f.name not in info]
    if missing:
        raise KeyError(f"motion dict lacks {missing}")
    parts = []
    for f in layout.fields:
        v = _as_block(info[f.name], f.size, f.name)
        parts.append(v - f.shift if f.shift else v)
    return _concat(parts)


def motion_to_dict(motion: Array, *, kp: Array | None = None) -> dict[str, Array]:
    """Vector ``[..., 265]`` (or ``[..., 328]`` with ``kp``) -> ``{key: [..., size]}``.

    A ``kp`` given here is put in the dict unchanged (the renderer wants the
    source's canonical keypoints next to the generated motion).
    """
    dim = motion.shape[-1]
    if dim == MOTION_LAYOUT_WITH_KP.dim:
        layout = MOTION_LAYOUT_WITH_KP
    elif dim == MOTION_DIM:
        layout = MOTION_LAYOUT
    else:
        raise ValueError(f"motion vectors have {MOTION_DIM} (or 328 with kp) dims, got {dim}")
    out = {}
    for f in layout.fields:
        v = motion[..., f.slice]
        out[f.name] = v + f.shift if f.shift else v
    if kp is not None:
        if "kp" in out:
            raise ValueError("kp given twice: in the 328-dim vector and as an argument")
        out["kp"] = kp
    return out


def motion_frames(motion: Array, *, kp: Array | None = None) -> list[dict[str, Array]]:
    """``[N, 265]`` -> N per-frame dicts with ``[1, size]`` fields, the renderer's per-frame form."""
    return [motion_to_dict(motion[i : i + 1], kp=kp) for i in range(motion.shape[0])]
