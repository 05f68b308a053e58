"""Face analysis with the release's auxiliary models (``ditto_pytorch/aux_models/``).

The chain, with the release's pre- and post-processing:

1. ``det_10g.onnx`` (InsightFace SCRFD): the frame letterboxed into 512 x 512
   (top-left, zero padding), BGR, ``(x - 127.5) / 128``; outputs scores, box
   distances and 5 keypoints for strides 8, 16, 32 with 2 anchors per cell;
   score >= 0.5, NMS at IoU 0.4; the box with the largest area is used.
2. ``2d106det.onnx``: an upright 192 x 192 crop of 1.5 x the box's longer side,
   BGR, raw 0..255; output in [-1, 1] -> 106 landmarks.
3. ``landmark203.onnx``: the 224 crop (scale 1.5, vy -0.1, rotation aligned)
   from the 106 landmarks, RGB / 255; output in [0, 1] of the crop -> 203 landmarks.
4. The 512 crop from the 203 landmarks (`CropConfig`).
5. ``face_landmarker.task`` (MediaPipe FaceLandmarker, one face) on the 512
   crop -> 478 normalised landmarks -> eye attributes.

Video frames after the first skip steps 1-2: the 224 crop comes from the
previous frame's landmarks. Step 5 is pluggable (any callable RGB -> [478, 3]
normalised landmarks or None), e.g. the face mesh of the mediapipe wheel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from talkinghead.errors import CheckpointError, NoFaceError
from talkinghead.face.crop import DEFAULT_CROP, crop_from_landmarks, describe_face, warp_points
from talkinghead.face.types import CropConfig, FaceBox, FaceCrop

RELEASE_AUX_FILES: dict[str, str] = {
    "detector": "det_10g.onnx",
    "landmark106": "2d106det.onnx",
    "landmark203": "landmark203.onnx",
    "landmark478": "face_landmarker.task",
}
# The crop the 203-point model sees.
LANDMARK203_CROP = CropConfig(dsize=224, scale=1.5, vx_ratio=0.0, vy_ratio=-0.1)

Landmark478Source = Callable[[np.ndarray], "np.ndarray | None"]


def release_files(aux_dir: str | Path) -> dict[str, Path]:
    """The release's auxiliary model paths inside ``aux_dir`` (whether they exist or not)."""
    return {key: Path(aux_dir) / name for key, name in RELEASE_AUX_FILES.items()}


def has_release_files(aux_dir: str | Path | None) -> bool:
    return aux_dir is not None and all(p.is_file() for p in release_files(aux_dir).values())


def onnx_session(path: str | Path, providers: Sequence[str] | None = None):
    """An onnxruntime session (CUDA first when available), or `CheckpointError`."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: face model not found")
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(str(path), providers=list(providers))
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise CheckpointError(f"{path}: not a loadable ONNX model ({exc})") from exc


def _bgr_blob(img: np.ndarray, mean: float, std: float) -> np.ndarray:
    """HWC RGB uint8 -> 1x3xHxW float32 BGR, (x - mean) / std (the detectors' input)."""
    x = img[..., ::-1].astype(np.float32)
    x = (x - np.float32(mean)) * np.float32(1.0 / std)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS, highest score first; areas count the end pixel (+1), as InsightFace."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(scores)[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return keep


@dataclass(frozen=True)
class ScrfdConfig:
    input_size: int = 512
    mean: float = 127.5
    std: float = 128.0
    strides: tuple[int, ...] = (8, 16, 32)
    anchors_per_cell: int = 2
    score_threshold: float = 0.5
    nms_threshold: float = 0.4


DEFAULT_SCRFD = ScrfdConfig()


class ScrfdDetector:
    """SCRFD (det_10g): RGB uint8 -> boxes [N, 5] (x0, y0, x1, y1, score), keypoints [N, 5, 2].

    Outputs are read by position (scores, boxes, keypoints, each for strides 8,
    16, 32), so both the InsightFace file and the release's renamed export work.
    """

    def __init__(self, session, config: ScrfdConfig = DEFAULT_SCRFD) -> None:
        self.session = session
        self.config = config
        self.input_name = session.get_inputs()[0].name
        self._centres: dict[int, np.ndarray] = {}

    def anchor_centres(self, stride: int) -> np.ndarray:
        """[cells * anchors, 2] (x, y) in input pixels: row-major cells, anchors adjacent."""
        if stride not in self._centres:
            n = self.config.input_size // stride
            ys, xs = np.mgrid[:n, :n]
            centres = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float32) * stride
            self._centres[stride] = np.repeat(centres, self.config.anchors_per_cell, axis=0)
        return self._centres[stride]

    def letterbox(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """Resize into the square input keeping the aspect ratio, top-left; -> (image, scale)."""
        size = self.config.input_size
        h, w = rgb.shape[:2]
        if h / w > 1:
            new_h, new_w = size, int(size / (h / w))
        else:
            new_w, new_h = size, int(size * (h / w))
        out = np.zeros((size, size, 3), np.uint8)
        out[:new_h, :new_w] = cv2.resize(rgb, (new_w, new_h))
        return out, new_h / h

    def blob(self, square: np.ndarray) -> np.ndarray:
        return _bgr_blob(square, self.config.mean, self.config.std)

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        square, det_scale = self.letterbox(rgb)
        outs = self.session.run(None, {self.input_name: self.blob(square)})
        outs = [o[0] if o.ndim == 3 else o for o in outs]  # batched exports carry a batch axis
        n = len(cfg.strides)
        scores, boxes, kps = [], [], []
        for i, stride in enumerate(cfg.strides):
            centres = self.anchor_centres(stride)
            score = outs[i].reshape(-1)
            keep = score >= cfg.score_threshold
            dist = outs[n + i].reshape(-1, 4)[keep] * stride
            c = centres[keep]
            boxes.append(np.concatenate([c - dist[:, :2], c + dist[:, 2:]], 1))
            offsets = outs[2 * n + i].reshape(-1, 5, 2)[keep] * stride
            kps.append(c[:, None] + offsets)
            scores.append(score[keep])
        score = np.concatenate(scores)
        box = np.concatenate(boxes) / det_scale
        kp = np.concatenate(kps) / det_scale
        det = np.concatenate([box, score[:, None]], 1).astype(np.float32)
        keep = _nms(det[:, :4], det[:, 4], cfg.nms_threshold)
        return det[keep], kp[keep].astype(np.float32)


class Landmark106:
    """InsightFace 2d106det: RGB uint8 + box -> 106 landmarks [106, 2] in image pixels."""

    size = 192
    box_scale = 1.5

    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def transform(self, box: Sequence[float]) -> np.ndarray:
        """2x3 matrix: image -> the model's upright input crop around the box."""
        x0, y0, x1, y1 = (float(v) for v in box[:4])
        s = self.size / (max(x1 - x0, y1 - y0) * self.box_scale)
        half = self.size / 2
        return np.array([[s, 0, half - s * (x0 + x1) / 2], [0, s, half - s * (y0 + y1) / 2]])

    def __call__(self, rgb: np.ndarray, box: Sequence[float]) -> np.ndarray:
        M = self.transform(box)
        crop = cv2.warpAffine(rgb, M, (self.size, self.size), borderValue=0)
        pred = self.session.run(None, {self.input_name: _bgr_blob(crop, 0.0, 1.0)})[0]
        pts = pred.reshape(-1, 2)[-106:].astype(np.float64)
        pts = (pts + 1) * (self.size // 2)
        s = M[0, 0]
        return ((pts - M[:, 2]) / s).astype(np.float32)


class Landmark203:
    """The release's 203-point model: the 224 crop (RGB uint8) -> [203, 2] in crop pixels,
    or in image pixels given the crop's M_c2o."""

    size = 224

    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]
        # The ONNX export names its output; the original file has three, the landmarks last.
        if "landmarks" in names:
            self.output = names.index("landmarks")
        else:
            self.output = 2 if len(names) >= 3 else 0

    def __call__(self, crop: np.ndarray, M_c2o: np.ndarray | None = None) -> np.ndarray:
        x = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[self.output]
        pts = out[0].reshape(-1, 2) * self.size
        if M_c2o is not None:
            pts = warp_points(pts, M_c2o)
        return pts.astype(np.float32)


class TaskLandmarker478:
    """MediaPipe FaceLandmarker (``face_landmarker.task``), one face: RGB uint8 ->
    [478, 3] normalised (x / width, y / height, z / width), or None."""

    def __init__(self, task_path: str | Path) -> None:
        from talkinghead.face.mediapipe_backend import import_mediapipe

        mp = import_mediapipe()
        from mediapipe.tasks.python import BaseOptions, vision

        path = Path(task_path)
        if not path.is_file():
            raise CheckpointError(f"{path}: face landmarker not found")
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)), num_faces=1
        )
        try:
            self._landmarker = vision.FaceLandmarker.create_from_options(options)
        except Exception as exc:  # mediapipe raises RuntimeError/ValueError
            raise CheckpointError(f"{path}: not a loadable face landmarker ({exc})") from exc
        self._image = mp.Image
        self._format = mp.ImageFormat.SRGB

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        image = self._image(image_format=self._format, data=np.ascontiguousarray(rgb))
        faces = self._landmarker.detect(image).face_landmarks
        if not faces:
            return None
        return np.array([(p.x, p.y, p.z) for p in faces[0]], dtype=np.float32)

    def close(self) -> None:
        self._landmarker.close()


class ReleaseFaceAnalyzer:
    """The release's face chain as a `FaceAnalyzer` (see the module docstring)."""

    name = "release"

    def __init__(
        self,
        detector: ScrfdDetector,
        landmark106: Landmark106,
        landmark203: Landmark203,
        landmark478: Landmark478Source,
        crop: CropConfig = DEFAULT_CROP,
    ) -> None:
        self.detector = detector
        self.landmark106 = landmark106
        self.landmark203 = landmark203
        self.landmark478 = landmark478
        self.crop_config = crop

    @classmethod
    def from_dir(
        cls,
        aux_dir: str | Path,
        crop: CropConfig = DEFAULT_CROP,
        landmark478: Landmark478Source | None = None,
        providers: Sequence[str] | None = None,
    ) -> ReleaseFaceAnalyzer:
        """Load the files of `RELEASE_AUX_FILES` from ``aux_dir`` (the .task one is not
        needed when another ``landmark478`` source is given)."""
        files = release_files(aux_dir)
        return cls(
            ScrfdDetector(onnx_session(files["detector"], providers)),
            Landmark106(onnx_session(files["landmark106"], providers)),
            Landmark203(onnx_session(files["landmark203"], providers)),
            landmark478 or TaskLandmarker478(files["landmark478"]),
            crop,
        )

    def landmarks(
        self, rgb: np.ndarray, previous: FaceCrop | None = None, what: str = "the frame"
    ) -> tuple[np.ndarray, FaceBox | None, int]:
        """(203 landmarks in frame pixels, detector box or None if tracked, face count)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {rgb.dtype} {rgb.shape}")
        box, num_faces = None, 1
        if previous is not None:
            track = previous.landmarks
            num_faces = previous.num_faces
        else:
            det, kps = self.detector(rgb)
            if len(det) == 0:
                raise NoFaceError(f"no face found in {what}")
            area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
            best = int(np.argmax(area))
            x0, y0, x1, y1, score = (float(v) for v in det[best])
            box, num_faces = FaceBox(x0, y0, x1, y1, score, kps[best]), len(det)
            track = self.landmark106(rgb, det[best])
        crop224 = crop_from_landmarks(rgb, track, LANDMARK203_CROP)
        return self.landmark203(crop224.image, crop224.M_c2o), box, num_faces

    def analyze(
        self, rgb: np.ndarray, previous: FaceCrop | None = None, what: str = "the frame"
    ) -> FaceCrop:
        lmk, box, num_faces = self.landmarks(rgb, previous, what)
        return describe_face(
            rgb, lmk, self.crop_config, self.landmark478, what=what, box=box, num_faces=num_faces
        )
