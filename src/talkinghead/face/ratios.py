"""Eye-close and lip-close ratios of a face, the inputs of LivePortrait's retargeting MLPs.

A ratio is an opening over a width: lid-to-lid distance over eye width per eye, and
lip-to-lip distance over mouth width. On the release's 203 landmarks (the face
backend ``release``) the points are LivePortrait's own; on MediaPipe's 478 (the
``mediapipe`` backend) they are the matching face-mesh points (eye lid centres and
corners, inner lip centres and mouth corners), which give the same ratios up to the
two landmark models' differences.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-6

# (opening a, opening b, width a, width b) per ratio, by landmark count.
_POINTS: dict[int, dict[str, tuple[tuple[int, int, int, int], ...]]] = {
    203: {"eyes": ((6, 18, 0, 12), (30, 42, 24, 36)), "lip": ((90, 102, 48, 66),)},
    478: {"eyes": ((159, 145, 33, 133), (386, 374, 263, 362)), "lip": ((13, 14, 61, 291),)},
}


def _ratios(landmarks: np.ndarray, which: str) -> np.ndarray:
    lmk = np.asarray(landmarks, dtype=np.float32)
    if lmk.ndim != 2 or lmk.shape[0] not in _POINTS:
        raise ValueError(f"expected [203 or 478, 2|3] landmarks, got {lmk.shape}")
    lmk = lmk[:, :2]
    out = [
        np.linalg.norm(lmk[a] - lmk[b]) / (np.linalg.norm(lmk[c] - lmk[d]) + _EPS)
        for a, b, c, d in _POINTS[lmk.shape[0]][which]
    ]
    return np.asarray(out, dtype=np.float32)


def eye_close_ratio(landmarks: np.ndarray) -> np.ndarray:
    """[2] float32: lid opening over eye width, per eye (LivePortrait's order)."""
    return _ratios(landmarks, "eyes")


def lip_close_ratio(landmarks: np.ndarray) -> np.ndarray:
    """[1] float32: lip opening over mouth width."""
    return _ratios(landmarks, "lip")


__all__ = ["eye_close_ratio", "lip_close_ratio"]
