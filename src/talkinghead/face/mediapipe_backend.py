"""Offline face analysis with the models inside the mediapipe wheel (no download).

Per frame:

1. boxes: MediaPipe's full-range face detector (``face_detection``, model 1),
   which also finds small faces; the largest box is used, ``num_faces`` counts
   them all;
2. 478 landmarks (468 mesh points + 10 iris points): the face mesh
   (``face_mesh``, refined landmarks, static image mode) run on an upright
   square region of 1.6 x the box's longer side, resampled to 384 px, so the
   mesh's own short-range detector sees a large face whatever its size in the
   frame (if the detector saw nothing, the mesh runs on the whole frame as a
   second chance);
3. the 512 crop from those landmarks (`talkinghead.face.crop`: the mesh points
   that the release's 203-point layout has counterparts of define the box, and
   the same eye and mouth anchors), scale 2.3, vy -0.125, rotation aligned;
4. eye attributes from the mesh found again *on the 512 crop*, in normalised
   crop units, as the release does.

Video frames after the first (``previous`` given) skip the detector: the region
is the release's tracking crop (scale 1.5, vy -0.1) around the previous frame's
landmarks, and the mesh runs there. Tracking is ours rather than the mesh's own
streaming mode, so the analyser keeps no hidden state between calls; if the
face is lost, the frame is detected afresh.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from talkinghead.errors import NoFaceError, SettingsError
from talkinghead.face.crop import (
    DEFAULT_CROP,
    crop_transform,
    describe_face,
    warp_image,
    warp_points,
)
from talkinghead.face.types import CropConfig, FaceBox, FaceCrop

REGION_SIZE = 384  # pixels of the region the mesh runs on
DETECT_REGION_SCALE = 1.6  # region side / the detector box's longer side
TRACK_CROP = CropConfig(dsize=REGION_SIZE, scale=1.5, vx_ratio=0.0, vy_ratio=-0.1)

# The last release whose wheel carries the face models; its wheels stop at Python 3.12.
MEDIAPIPE_PYTHONS = ((3, 9), (3, 12))


def _has_0_10_21_wheel(python: tuple[int, int]) -> bool:
    return MEDIAPIPE_PYTHONS[0] <= python <= MEDIAPIPE_PYTHONS[1]


def import_mediapipe(*, solutions: bool = False) -> ModuleType:
    """The mediapipe module, or a one-line `SettingsError` saying how to get it: both face
    backends need it. `solutions`: this backend's legacy graphs and the models in the wheel
    (0.10.21; mediapipe 1.x has only the tasks API, which the release backend uses)."""
    here = sys.version_info[:2]
    try:
        import mediapipe
    except ImportError:
        raise SettingsError(missing_mediapipe_message(here)) from None
    if solutions and not offline_backend_available():
        version = getattr(mediapipe, "__version__", "?")
        raise SettingsError(
            f"the offline mediapipe face backend needs mediapipe 0.10.21 (the last with its "
            f"face models), not {version}: "
            + (
                'pip install -c constraints.txt -e ".[face]"'
                if _has_0_10_21_wheel(here)
                else "on this Python use the release's face models (talkinghead download; "
                "--face-backend release)"
            )
        )
    return mediapipe


def offline_backend_available() -> bool:
    """Whether this backend can run: a mediapipe with its legacy face graphs and models
    (looked up without importing mediapipe, which takes a second)."""
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = Path(next(iter(spec.submodule_search_locations)))
    needed = (
        "python/solutions/face_mesh.py",
        "modules/face_detection/face_detection_full_range_sparse.tflite",
        "modules/face_landmark/face_landmark_with_attention.tflite",
    )
    return all((root / name).is_file() for name in needed)


def missing_mediapipe_message(python: tuple[int, int]) -> str:
    """What to do without mediapipe on Python `python` (major, minor)."""
    if _has_0_10_21_wheel(python):
        how = (
            'not installed here: pip install -c constraints.txt -e ".[face]" '
            "(or pip install 'talkinghead[face]')"
        )
    else:
        how = (
            f'not installed here: pip install -e ".[face]" (on Python {python[0]}.{python[1]} '
            "it brings mediapipe 1.x, enough for the release's face models, not for the "
            "offline mediapipe backend)"
        )
    return f"face analysis needs mediapipe, {how}"


# 5 keypoints in the detector order (eyes, nose tip, mouth corners; image-left first).
MESH_KEYPOINTS = (468, 473, 1, 61, 291)


def _as_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(rgb)


class MeshLandmarker:
    """MediaPipe's face mesh with irises: RGB uint8 -> faces, each [478, 3] normalised
    (x / width, y / height, z / width), the face nearest the image centre first."""

    def __init__(self, max_num_faces: int = 2, min_detection_confidence: float = 0.5) -> None:
        mp = import_mediapipe(solutions=True)
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True,
            refine_landmarks=True,
            max_num_faces=max_num_faces,
            min_detection_confidence=min_detection_confidence,
        )

    def faces(self, rgb: np.ndarray) -> list[np.ndarray]:
        result = self._mesh.process(_as_rgb(rgb))
        found = [
            np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            for face in result.multi_face_landmarks or []
        ]
        # The region/crop we run on is centred on the face we want.
        found.sort(key=lambda f: float(np.abs(f[:, :2].mean(0) - 0.5).sum()))
        return found

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """The central face's landmarks [478, 3], or None."""
        faces = self.faces(rgb)
        return faces[0] if faces else None

    def close(self) -> None:
        self._mesh.close()


class MediapipeDetector:
    """MediaPipe's full-range face detector: RGB uint8 -> boxes in pixels, largest first."""

    def __init__(self, min_detection_confidence: float = 0.5) -> None:
        mp = import_mediapipe(solutions=True)
        self._det = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_detection_confidence
        )

    def __call__(self, rgb: np.ndarray) -> list[FaceBox]:
        h, w = rgb.shape[:2]
        result = self._det.process(_as_rgb(rgb))
        boxes = []
        for det in result.detections or []:
            rel = det.location_data.relative_bounding_box
            x0, y0 = rel.xmin * w, rel.ymin * h
            boxes.append(
                FaceBox(x0, y0, x0 + rel.width * w, y0 + rel.height * h, float(det.score[0]))
            )
        return sorted(boxes, key=lambda b: -b.area)

    def close(self) -> None:
        self._det.close()


def _square_region(box: FaceBox) -> np.ndarray:
    """M_o2c (3x3) of an upright square region around a detector box."""
    side = DETECT_REGION_SCALE * max(box.x1 - box.x0, box.y1 - box.y0, 1.0)
    s = REGION_SIZE / side
    cx, cy = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    return np.array([[s, 0, REGION_SIZE / 2 - s * cx], [0, s, REGION_SIZE / 2 - s * cy], [0, 0, 1]])


class MediapipeFaceAnalyzer:
    """The offline `FaceAnalyzer` (see the module docstring)."""

    name = "mediapipe"

    def __init__(self, crop: CropConfig = DEFAULT_CROP, min_detection_confidence: float = 0.5):
        self.crop_config = crop
        self.detector = MediapipeDetector(min_detection_confidence)
        self.mesh = MeshLandmarker(
            max_num_faces=2, min_detection_confidence=min_detection_confidence
        )

    def _mesh_in_region(self, rgb: np.ndarray, M_o2c: np.ndarray) -> np.ndarray | None:
        """Landmarks [478, 2] in frame pixels of the face at the centre of a region, or None."""
        region = warp_image(rgb, M_o2c, REGION_SIZE)
        lmk = self.mesh(region)
        if lmk is None:
            return None
        return warp_points(lmk[:, :2] * REGION_SIZE, np.linalg.inv(M_o2c)).astype(np.float32)

    def landmarks(
        self, rgb: np.ndarray, previous: FaceCrop | None = None, what: str = "the frame"
    ) -> tuple[np.ndarray, FaceBox | None, int]:
        """(landmarks [478, 2] in frame pixels, detector box or None if tracked, face count)."""
        rgb = _as_rgb(rgb)
        if previous is not None:
            M_o2c, _ = crop_transform(
                previous.landmarks,
                dsize=TRACK_CROP.dsize,
                scale=TRACK_CROP.scale,
                vy_ratio=TRACK_CROP.vy_ratio,
            )
            lmk = self._mesh_in_region(rgb, M_o2c)
            if lmk is not None:
                return lmk, None, previous.num_faces
        boxes = self.detector(rgb)
        if boxes:
            lmk = self._mesh_in_region(rgb, _square_region(boxes[0]))
            if lmk is not None:
                return lmk, boxes[0], len(boxes)
        # The detector missed (or the mesh disagreed): the mesh's own detector, whole frame.
        faces = self.mesh.faces(rgb)
        if not faces:
            raise NoFaceError(f"no face found in {what}")
        h, w = rgb.shape[:2]
        pixels = [f[:, :2] * (w, h) for f in faces]
        best = max(pixels, key=lambda p: float(np.prod(p.max(0) - p.min(0))))
        return best.astype(np.float32), None, max(len(boxes), len(faces))

    def analyze(
        self, rgb: np.ndarray, previous: FaceCrop | None = None, what: str = "the frame"
    ) -> FaceCrop:
        lmk, box, num_faces = self.landmarks(rgb, previous, what)
        if box is not None:
            keypoints = lmk[list(MESH_KEYPOINTS)]
            box = FaceBox(box.x0, box.y0, box.x1, box.y1, box.score, keypoints)
        return describe_face(
            rgb, lmk, self.crop_config, self.mesh, what=what, box=box, num_faces=num_faces
        )

    def close(self) -> None:
        self.detector.close()
        self.mesh.close()
