"""What DiT-Head's data preparation, training and inference all compute the same way.

* the face crop (`crop_face`): a rotation-aligned similarity crop from the landmarks
  (`CropSettings`), with the landmarks carried into crop pixels;
* the lower-face mask (`lower_face_mask`): the convex hull of the landmarks that lie
  below a line across the face (``cut`` of the way from the eyes to the mouth, just
  under the nose tip by default), extended below the chin so that a wider open mouth
  fits inside, dilated, and blurred with a Gaussian so that pasting the generated face
  back leaves no seam; `apply_mask` blacks that region out;
* the audio windows (`audio_windows`): per-frame CTC logits stacked over ``window``
  frames centred on each frame (11 x 33 = the paper's 363 values);
* the image tensors the networks see (`to_tensor_image`, `from_tensor_image`).

Keeping them here (not in `data` or `pipeline`) is what lets inference run exactly
the preprocessing the model was trained on without importing the training side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from talkinghead.face.crop import anchor_points, warp_image, warp_points
from talkinghead.methods.dithead.config import CropSettings, MaskSettings

if TYPE_CHECKING:
    import torch

DEFAULT_MASK = MaskSettings()  # frozen: safe to share as a default argument


# --------------------------------------------------------------------------- crop


def crop_face(
    frame: np.ndarray, landmarks: np.ndarray, crop: CropSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(crop [S, S, 3] uint8, landmarks [K, 2] in crop pixels, M_c2o 3x3) of one frame,
    for ``landmarks`` in frame pixels."""
    M_o2c, M_c2o = crop.transform(landmarks)
    image = warp_image(frame, M_o2c, crop.size)
    points = warp_points(landmarks[:, :2], M_o2c)
    return image, points, M_c2o


# --------------------------------------------------------------------------- mask


def lower_face_polygon(
    landmarks: np.ndarray, mask: MaskSettings = DEFAULT_MASK, shift: tuple[float, float] = (0, 0)
) -> np.ndarray:
    """Convex hull [P, 2] (float32, same pixels as the landmarks) of the lower face.

    Works for every landmark layout `talkinghead.face.crop` knows (68+ points).
    """
    pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
    if pts.shape[0] < 68:
        raise ValueError(f"a lower-face mask needs a dense landmark layout, got {pts.shape[0]}")
    eyes, mouth = anchor_points(pts)
    axis = mouth - eyes
    length = float(np.linalg.norm(axis))
    if length < 1e-6:
        raise ValueError("degenerate landmarks: eyes and mouth coincide")
    u = axis / length
    along = (pts - eyes) @ u / length
    lower = pts[along >= mask.cut]
    below_mouth = pts[along > 1.0]
    extended = below_mouth + u * (mask.chin_extend * length)
    sel = np.concatenate([lower, extended]) + np.asarray(shift, dtype=np.float64)
    return cv2.convexHull(sel.astype(np.float32))[:, 0, :]


def lower_face_mask(
    landmarks: np.ndarray,
    size: int | tuple[int, int],
    mask: MaskSettings = DEFAULT_MASK,
    shift: tuple[float, float] = (0, 0),
) -> np.ndarray:
    """Blurred lower-face mask [H, W] float32 in [0, 1] (1 = generated region).

    ``landmarks`` are in the mask's pixels (crop pixels for a crop); ``size`` is the
    crop side or (height, width); lengths in ``mask`` are fractions of the larger side.
    """
    h, w = (size, size) if isinstance(size, int) else size
    side = max(h, w)
    poly = lower_face_polygon(landmarks, mask, shift)
    canvas = np.zeros((h, w), np.uint8)
    bits = 4  # sub-pixel vertex precision
    cv2.fillConvexPoly(
        canvas, np.round(poly * (1 << bits)).astype(np.int32), 255, cv2.LINE_AA, bits
    )
    grow = round(mask.dilate * side)
    if grow > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        canvas = cv2.dilate(canvas, kernel)
    k, sigma = mask.kernel(side)
    out = canvas.astype(np.float32) / 255.0
    if k > 1:
        out = cv2.GaussianBlur(out, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    return np.clip(out, 0.0, 1.0)


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the masked region blacked out (uint8 in, uint8 out)."""
    keep = 1.0 - mask[..., None]
    return np.clip(image.astype(np.float32) * keep + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- audio


def audio_windows(features: np.ndarray, window: int = 11) -> np.ndarray:
    """Per-frame features [N, V] -> windows [N, window * V] centred on each frame
    (frames t - window // 2 ... t + window // 2, edges repeated)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the audio window must be a positive odd number, got {window}")
    feats = np.asarray(features, dtype=np.float32)
    half = window // 2
    padded = np.pad(feats, ((half, half), (0, 0)), mode="edge")
    idx = np.arange(feats.shape[0])[:, None] + np.arange(window)[None]
    return padded[idx].reshape(feats.shape[0], -1)


# --------------------------------------------------------------------------- tensors


def to_tensor_image(images: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 torch [..., 3, H, W] in [-1, 1]."""
    import torch  # lazily: data preparation runs without building any tensor

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0)
    return x.movedim(-1, -3)


def from_tensor_image(x: torch.Tensor) -> np.ndarray:
    """float torch [..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte()
    return x.movedim(-3, -1).cpu().numpy()


__all__ = [
    "apply_mask",
    "audio_windows",
    "crop_face",
    "from_tensor_image",
    "lower_face_mask",
    "lower_face_polygon",
    "to_tensor_image",
]
