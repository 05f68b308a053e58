"""A face analyser that replays one image's recorded analysis.

Registration needs a face backend (mediapipe, or the release's ONNX models); a machine
with neither (a GPU image without mediapipe, say) can still register a portrait whose
analysis was recorded elsewhere. The recording keeps the face's landmarks in image pixels,
its eye attributes and, when the analyser gave it, the face mesh on the crop; the 512
crop and its transform are rebuilt from the landmarks as every backend builds them, so
the same image gives the same `FaceCrop`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from talkinghead.face.crop import DEFAULT_CROP, crop_from_landmarks
from talkinghead.face.types import CropConfig, FaceAnalyzer, FaceCrop


class RecordedFaceAnalyzer:
    """Replays a recording (`record`, `save`, `load`) for the image it was made on.

    Any frame given to `analyze` is cropped at the recorded landmarks: it is meant for
    that image (or that image resized and shifted, see `transformed`), not for finding
    faces in others.
    """

    name = "recorded"

    def __init__(
        self,
        landmarks: np.ndarray,
        eye_open: np.ndarray,
        eye_ball: np.ndarray,
        crop: CropConfig = DEFAULT_CROP,
        mesh: np.ndarray | None = None,
    ) -> None:
        self.landmarks = np.asarray(landmarks, np.float32)
        self.eye_open = np.asarray(eye_open, np.float32)
        self.eye_ball = np.asarray(eye_ball, np.float32)
        self.mesh = None if mesh is None else np.asarray(mesh, np.float32)
        self.crop_config = crop

    @property
    def identity(self) -> str:
        """The recording's digest: avatar caches keep apart what two recordings register."""
        h = hashlib.sha256()
        for a in (self.landmarks, self.eye_open, self.eye_ball, self.mesh):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def record(
        cls, rgb: np.ndarray, analyzer: FaceAnalyzer | None = None, crop: CropConfig = DEFAULT_CROP
    ) -> RecordedFaceAnalyzer:
        """Analyse `rgb` with `analyzer` (default: the mediapipe backend); keep the result."""
        if analyzer is None:
            from talkinghead.face.mediapipe_backend import MediapipeFaceAnalyzer

            analyzer = MediapipeFaceAnalyzer(crop)
        face = analyzer.analyze(rgb)
        return cls(face.landmarks, face.eye_open, face.eye_ball, crop, face.mesh)

    @classmethod
    def load(cls, path: str | Path, crop: CropConfig = DEFAULT_CROP) -> RecordedFaceAnalyzer:
        with np.load(path) as data:
            mesh = data.get("mesh")  # None in recordings made before it
            return cls(data["landmarks"], data["eye_open"], data["eye_ball"], crop, mesh)

    def save(self, path: str | Path) -> None:
        arrays = {"landmarks": self.landmarks, "eye_open": self.eye_open, "eye_ball": self.eye_ball}
        if self.mesh is not None:
            arrays["mesh"] = self.mesh
        with open(path, "wb") as f:  # np.savez would append ".npz" to other names
            np.savez(f, **arrays)

    def transformed(self, scale: float, offset: tuple[float, float]) -> RecordedFaceAnalyzer:
        """The recording for the image resized by `scale`, then shifted by `offset` (x, y);
        the mesh, normalised on the crop, is the same."""
        landmarks = self.landmarks * np.float32(scale) + np.float32(offset)
        return RecordedFaceAnalyzer(
            landmarks, self.eye_open, self.eye_ball, self.crop_config, self.mesh
        )

    def analyze(
        self, rgb: np.ndarray, previous: FaceCrop | None = None, what: str = "the frame"
    ) -> FaceCrop:
        crop = crop_from_landmarks(rgb, self.landmarks, self.crop_config)
        return FaceCrop(
            crop=crop.image,
            M_c2o=crop.M_c2o.astype(np.float32),
            landmarks=self.landmarks,
            eye_open=self.eye_open,
            eye_ball=self.eye_ball,
            mesh=self.mesh,
        )
