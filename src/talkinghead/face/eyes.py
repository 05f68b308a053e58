"""Eye attributes of the motion model's condition, from MediaPipe's 478 face-mesh landmarks.

Per eye (the one on the image's left first, then the other):

* openness: the sum of three lid heights over the eye width;
* eye-ball offset: the iris's direction from the eye centre minus the eye's
  inner->outer direction, scaled by the iris's distance from the centre.

The release computes both on the landmarks found on the 512 crop, in
MediaPipe's normalised units (x / width, y / height, z / width); the offset is
not scale invariant, so callers must pass normalised landmarks of the crop.
The offsets are laid out ``[xL, xR, yL, yR, zL, zR]`` (coordinate-major).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_EPS = 1e-8

# MediaPipe face-mesh indices: eye corners (outer, inner), lid pairs (lower, upper), iris centre.
_EYES = (
    (33, 133, ((145, 159), (144, 160), (153, 158)), 468),  # left in the image
    (263, 362, ((374, 386), (373, 387), (380, 385)), 473),  # right in the image
)


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).sum(-1))


def _direction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a - b) / (_dist(a, b)[..., None] + _EPS)


def eye_attributes(lmk478: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks ``[..., 478, C]`` (C = 2 or 3) -> eye open ``[..., 2]``, eye ball ``[..., 2 * C]``.

    Computed in float32, as the release does.
    """
    lmk = np.asarray(lmk478, dtype=np.float32)
    if lmk.ndim < 2 or lmk.shape[-2] != 478 or lmk.shape[-1] not in (2, 3):
        raise ValueError(f"expected MediaPipe landmarks [..., 478, 2|3], got {lmk.shape}")
    opens, balls = [], []
    for outer, inner, lids, iris in _EYES:
        p_out, p_in = lmk[..., outer, :], lmk[..., inner, :]
        width = _dist(p_out, p_in)
        height = sum(_dist(lmk[..., lo, :], lmk[..., up, :]) for lo, up in lids)
        opens.append(height / (width + _EPS))
        centre = (p_out + p_in) * 0.5
        ball = lmk[..., iris, :]
        move = _direction(ball, centre) - _direction(p_out, p_in)
        balls.append(move * _dist(ball, centre)[..., None])
    # One face's values are numpy scalars, which NumPy 1 promotes to float64 against the
    # Python-float epsilon; the cast gives what the float32 condition builder would read.
    eye_open = np.stack(opens, -1).astype(np.float32, copy=False)
    eye_ball = np.stack(balls, -1).astype(np.float32, copy=False)  # [..., C, 2]
    return eye_open, eye_ball.reshape(*eye_ball.shape[:-2], -1)


def eye_attributes_from_landmarks(
    lmk478: torch.Tensor | np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per source frame: landmarks ``[F, 478, C]`` -> eye open ``[F, 2]``, eye ball ``[F, 2 * C]``.

    The tensor form the condition builder takes (see `eye_attributes`).
    """
    import torch  # only this wrapper needs it; the face layer itself is numpy

    if isinstance(lmk478, torch.Tensor):
        lmk478 = lmk478.detach().cpu().numpy()
    eye_open, eye_ball = eye_attributes(lmk478)
    return torch.from_numpy(eye_open), torch.from_numpy(eye_ball)
