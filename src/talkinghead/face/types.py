"""The contract between face analysis and the rest of the pipeline.

Every face backend (the release's auxiliary ONNX models, or the offline
mediapipe default) produces the same `FaceCrop` per source frame, so
registration and paste-back do not care which one ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class FaceBox:
    """A detected face in image pixels: corners, confidence, optional 5 keypoints [5, 2]."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float
    keypoints: np.ndarray | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


@dataclass
class FaceCrop:
    """One source frame, analysed.

    crop:        512x512x3 uint8 RGB face crop (the renderer's input space)
    M_c2o:       3x3 float32 affine matrix mapping crop pixels -> original-frame pixels
    landmarks:   [K, 2] float32 landmarks in original-frame pixels, used to track the next
                 video frame (K depends on the backend: 203 for the release's, 478 for mediapipe)
    eye_open:    [2] float32 eye-open ratios (left, right), as the release computes them
    eye_ball:    [6] float32 eye-ball offsets, as the release computes them
    box:         the detected face box (None when the frame was tracked, not detected)
    num_faces:   how many faces the detector saw (the largest is used)
    mesh:        [478, 3] float32 MediaPipe face mesh found on the crop, normalised (x / 512,
                 y / 512, z), which the eye attributes come from; None when not kept
    """

    crop: np.ndarray
    M_c2o: np.ndarray
    landmarks: np.ndarray
    eye_open: np.ndarray
    eye_ball: np.ndarray
    box: FaceBox | None = None
    num_faces: int = 1
    mesh: np.ndarray | None = None


@dataclass(frozen=True)
class CropConfig:
    """The release's 512 crop: scale 2.3, vertical offset -0.125, rotation aligned."""

    dsize: int = 512
    scale: float = 2.3
    vx_ratio: float = (
        0.0  # the release accepts but ignores it (see RELEASE_BEHAVIOUR.md); we honour it
    )
    vy_ratio: float = -0.125
    rotate: bool = True


class FaceAnalyzer(Protocol):
    """Finds, crops and describes the face of one RGB frame.

    `previous` is the result for the previous frame of a video: backends track
    from its landmarks instead of detecting again. Raises `NoFaceError` when a
    frame (without `previous`) holds no face.
    """

    name: str

    def analyze(self, rgb: np.ndarray, previous: FaceCrop | None = None) -> FaceCrop: ...
