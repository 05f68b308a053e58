"""What DiffTalk's data preparation and its inference both compute, written once.

A model only works on inputs made the way its training data was, so ``data``/``train``
and ``pipeline`` take all of these from here:

- face tracking and crops: MediaPipe's 478-point mesh, the crop (scale 1.8, vy -0.1
  around the mesh's jaw/brow box) smoothed over 5 frames against jitter (`track_faces`);
- the mesh geometry: the 51 landmarks of the condition (`landmark_condition`), the
  mouth mask of x_m (`masked_frame`: every row from the nose tip down black, as the
  release does), the lower-face region inference regenerates (`generation_mask`);
- audio windows: per video frame, 16 steps of character probabilities (`audio_windows`);
- images as the networks take them (`to_tensor_image`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from talkinghead.audio.ctc import frame_windows
from talkinghead.errors import MediaError, TalkingHeadError

if TYPE_CHECKING:
    import torch

    from talkinghead.audio.ctc import CharProbabilityEncoder

CROP_SCALE = 1.8
CROP_VY = -0.1
CROP_SMOOTHING = 5  # frames in the moving average of the crop transform

# MediaPipe face-mesh indices (image-left side first), counterparts of the 68-point
# layout's points the release keeps (0-3 and 13-47: upper jaw, brows, nose, eyes).
_JAW_UPPER = (127, 234, 93, 132, 361, 323, 454, 356)
_BROWS = (
    70, 63, 105, 66, 107, 55, 65, 52, 53, 46,
    300, 293, 334, 296, 336, 285, 295, 282, 283, 276,
)  # fmt: skip
_EYES = (33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380)
_NOSE = (168, 6, 197, 195, 5, 4, 98, 97, 2, 326, 327)
LANDMARK_POINTS: tuple[int, ...] = _JAW_UPPER + _BROWS + _EYES + _NOSE  # 51 points
NOSE_TIP = 1
# The lower face to regenerate: the jaw contour cheek to cheek via the chin, closed
# under the nose (the release's 68-point 2..14 + 33).
MOUTH_REGION = (
    93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
    377, 400, 378, 379, 365, 397, 288, 361, 323, 2,
)  # fmt: skip
MESH_POINTS = 478


# ---------------------------------------------------------------------------- geometry


def _check_mesh(landmarks: np.ndarray) -> np.ndarray:
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape[-2:] != (MESH_POINTS, 2):
        raise ValueError(
            f"DiffTalk needs MediaPipe's 478 landmarks [..., 478, 2], got {landmarks.shape}"
        )
    return landmarks


def landmark_condition(landmarks: np.ndarray, resolution: int) -> np.ndarray:
    """Crop-pixel mesh [..., 478, 2] -> the points outside the mouth region in [0, 1]: [..., 51, 2]."""
    lm = _check_mesh(landmarks)
    return (lm[..., list(LANDMARK_POINTS), :] / float(resolution)).astype(np.float32)


def mask_row(landmarks: np.ndarray) -> int:
    """First crop row of the masked region: the nose tip's row."""
    return int(np.floor(_check_mesh(landmarks)[NOSE_TIP, 1]))


def masked_frame(crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """x_m: the crop with every row from the nose tip down set to black (uint8 RGB)."""
    out = np.array(crop, copy=True)
    out[max(0, mask_row(landmarks)) :] = 0
    return out


def generation_mask(landmarks: np.ndarray, size: int, dilation: float = 0.03) -> np.ndarray:
    """[size, size] float32: 1 inside the lower-face polygon (to generate), 0 elsewhere.

    The polygon is grown by `dilation` x size pixels so that a mouth opening wider
    than the source's still falls inside.
    """
    lm = _check_mesh(landmarks)
    mask = np.zeros((size, size), np.uint8)
    pts = np.rint(lm[list(MOUTH_REGION)]).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1)
    grow = round(dilation * size)
    if grow > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        mask = cv2.dilate(mask, kernel)
    return mask.astype(np.float32)


def latent_keep_mask(generate: np.ndarray, latent_size: int) -> np.ndarray:
    """Pixel generation mask [H, W] -> latent keep mask [h, w]: 0 where any pixel is generated."""
    h = generate.shape[0]
    f = h // latent_size
    blocks = generate[: f * latent_size, : f * latent_size].reshape(latent_size, f, latent_size, f)
    return (blocks.max(axis=(1, 3)) <= 0).astype(np.float32)


def to_tensor_image(rgb: np.ndarray) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> float tensor [3, H, W] in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0


# ---------------------------------------------------------------------------- face tracking


def smooth_transforms(matrices: np.ndarray, window: int = CROP_SMOOTHING) -> np.ndarray:
    """Centred moving average (shrinking at the ends) of [F, 3, 3] similarity matrices."""
    if window <= 1 or len(matrices) <= 1:
        return matrices.copy()
    half = window // 2
    out = np.empty_like(matrices)
    for i in range(len(matrices)):
        out[i] = matrices[max(0, i - half) : i + half + 1].mean(0)
    return out


@dataclass
class TrackedFaces:
    """A face tracked through frames, on a temporally smoothed crop transform."""

    o2c: np.ndarray  # [F, 3, 3] float64, frame pixels -> crop pixels
    landmarks: np.ndarray  # [F, 478, 2] float32, crop pixels

    @property
    def c2o(self) -> np.ndarray:
        return np.linalg.inv(self.o2c).astype(np.float32)

    def crop(self, frame: np.ndarray, i: int, resolution: int) -> np.ndarray:
        from talkinghead.face.crop import warp_image

        return warp_image(frame, self.o2c[i], resolution)


def track_faces(
    analyzer: Any,
    frames: Iterable[np.ndarray],
    resolution: int,
    *,
    scale: float = CROP_SCALE,
    vy: float = CROP_VY,
    smoothing: int = CROP_SMOOTHING,
    what: str = "the source",
) -> TrackedFaces:
    """Find the face in every frame (tracking it from the previous one); crop
    `resolution` pixels around it (`scale` x the mesh box, shifted by `vy`) with the
    crop transform smoothed over `smoothing` frames."""
    from talkinghead.face.crop import crop_transform, warp_points

    lmks, o2c, previous = [], [], None
    for i, frame in enumerate(frames):
        face = analyzer.analyze(frame, previous=previous)
        if face.landmarks.shape[0] != MESH_POINTS:
            raise TalkingHeadError(
                f"{what}: DiffTalk needs 478 mesh landmarks; the {analyzer.name!r} face "
                f"backend gives {face.landmarks.shape[0]} (frame {i})"
            )
        lmks.append(face.landmarks)
        o2c.append(crop_transform(face.landmarks, dsize=resolution, scale=scale, vy_ratio=vy)[0])
        previous = face
    if not lmks:
        raise MediaError(f"{what}: no frames")
    smoothed = smooth_transforms(np.stack(o2c), smoothing)
    landmarks = np.stack([warp_points(p, m) for p, m in zip(lmks, smoothed, strict=True)])
    return TrackedFaces(smoothed, landmarks.astype(np.float32))


# ---------------------------------------------------------------------------- audio


def audio_windows(
    encoder: CharProbabilityEncoder,
    audio_16k: np.ndarray,
    num_frames: int,
    fps: float,
    *,
    what: str = "the audio",
) -> np.ndarray:
    """Per video frame at `fps`, the 16 steps of `encoder`'s character probabilities
    centred on it: [num_frames, 16, C] float32."""
    probs = encoder.probabilities(audio_16k)
    if probs.shape[0] == 0:
        raise MediaError(f"{what}: the audio track is empty")
    return frame_windows(probs, num_frames, fps, rate=encoder.rate)


__all__ = [
    "CROP_SCALE",
    "CROP_SMOOTHING",
    "CROP_VY",
    "LANDMARK_POINTS",
    "MESH_POINTS",
    "MOUTH_REGION",
    "NOSE_TIP",
    "TrackedFaces",
    "audio_windows",
    "generation_mask",
    "landmark_condition",
    "latent_keep_mask",
    "mask_row",
    "masked_frame",
    "smooth_transforms",
    "to_tensor_image",
    "track_faces",
]
