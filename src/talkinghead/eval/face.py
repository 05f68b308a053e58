"""Face tracks for the face-region metrics, and the three crops built from them.

A `FaceTrack` is, per frame, a face box (x0, y0, x1, y1) and five keypoints (eye
centres, nose tip, mouth corners; image-left first). The default tracker runs the
offline MediaPipe face mesh (`talkinghead.face`): the first frame is detected, the
next ones tracked from the previous landmarks; the box is the extent of the mesh
points from brows to chin (the points the release's 203-point layout also has:
no forehead), about the box a face detector gives. Frames where the face is lost
take the nearest frame's result.

Crops:

- `face_crops` (PSNR/SSIM/LPIPS on the face): a square of 1.2 x the box's longer
  side, centred on the box; the side is the median over the video and the centres
  are median-filtered over 13 frames, so every crop has one size; pixels outside
  the frame are black. No resizing: the reference's track crops both videos.
- `syncnet_crops`: syncnet_python's ``crop_video`` (box size and centre
  median-filtered over 13 frames, half-size ``bs``; rows ``cy - bs ..
  cy + 1.8 bs``, columns ``cx - 1.4 bs .. cx + 1.4 bs``, padded with grey 110,
  resized to 224x224 bilinear).
- `arcface_align`: the 5 keypoints mapped onto InsightFace's 112x112 ArcFace
  template by a least-squares similarity (Umeyama), bilinear, black outside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import medfilt

from talkinghead.errors import NoFaceError

FACE_CROP_SCALE = 1.2
SMOOTH_KERNEL = 13  # syncnet_python's median filter over box size and centre
SYNCNET_CROP_SCALE = 0.4
SYNCNET_SIZE = 224
SYNCNET_PAD_VALUE = 110
ARCFACE_SIZE = 112
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


@dataclass
class FaceTrack:
    """Per-frame face boxes [T, 4] (x0, y0, x1, y1) and keypoints [T, 5, 2], frame pixels."""

    boxes: np.ndarray
    points: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    def take(self, idx: np.ndarray) -> FaceTrack:
        return FaceTrack(self.boxes[idx], self.points[idx])


# frames [T, H, W, 3] RGB uint8, a name for messages -> FaceTrack
FaceTracker = Callable[[np.ndarray, str], FaceTrack]


def _box_and_points(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from talkinghead.face.crop import MESH_CROP_POINTS
    from talkinghead.face.mediapipe_backend import MESH_KEYPOINTS

    lmk = np.asarray(landmarks, dtype=np.float64)[:, :2]
    if len(lmk) == 5:
        pts = lmk
        box_pts = lmk
    elif len(lmk) in (468, 478):
        pts = lmk[list(MESH_KEYPOINTS)] if len(lmk) == 478 else lmk[[33, 263, 1, 61, 291]]
        box_pts = lmk[list(MESH_CROP_POINTS)]
    else:
        raise ValueError(f"face tracking needs 5 keypoints or a 468/478-point mesh, got {len(lmk)}")
    box = np.concatenate([box_pts.min(0), box_pts.max(0)])
    return box, pts


class MeshFaceTracker:
    """The default `FaceTracker`: MediaPipe's face mesh (detect once, then track)."""

    def __init__(self, analyzer: object | None = None) -> None:
        if analyzer is None:
            from talkinghead.face.mediapipe_backend import MediapipeFaceAnalyzer

            analyzer = MediapipeFaceAnalyzer()
        self.analyzer = analyzer

    def __call__(self, frames: np.ndarray, what: str) -> FaceTrack:
        from talkinghead.face.types import FaceCrop

        boxes: list[np.ndarray | None] = []
        points: list[np.ndarray | None] = []
        previous = None
        for i, frame in enumerate(frames):
            try:
                lmk, _, n = self.analyzer.landmarks(frame, previous, f"{what} frame {i}")
            except NoFaceError:
                boxes.append(None)
                points.append(None)
                previous = None
                continue
            box, pts = _box_and_points(lmk)
            boxes.append(box)
            points.append(pts)
            # Only the landmarks and the face count are read back when tracking.
            previous = FaceCrop(
                crop=np.zeros((0, 0, 3), np.uint8),
                M_c2o=np.eye(3, dtype=np.float32),
                landmarks=np.asarray(lmk, np.float32),
                eye_open=np.zeros(2, np.float32),
                eye_ball=np.zeros(6, np.float32),
                num_faces=n,
            )
        return fill_gaps(boxes, points, what)


def fill_gaps(
    boxes: Sequence[np.ndarray | None], points: Sequence[np.ndarray | None], what: str
) -> FaceTrack:
    """Frames without a face take the nearest frame's box and points."""
    found = [i for i, b in enumerate(boxes) if b is not None]
    if not found:
        raise NoFaceError(f"{what}: no face found in any frame")
    found_arr = np.array(found)
    nearest = found_arr[np.abs(np.arange(len(boxes))[:, None] - found_arr[None]).argmin(1)]
    return FaceTrack(
        np.stack([boxes[j] for j in nearest]).astype(np.float64),
        np.stack([points[j] for j in nearest]).astype(np.float64),
    )


def _medfilt(x: np.ndarray, kernel: int = SMOOTH_KERNEL, zero_pad: bool = False) -> np.ndarray:
    """Running median over `kernel` frames.

    ``zero_pad``: scipy.signal.medfilt, as syncnet_python smooths (its tracks are at least
    100 frames, so the zeros it pads with never win the median); only used when the
    track is at least `kernel` long. Otherwise the ends repeat the edge values.
    """
    x = x.astype(np.float64)
    if len(x) < 2:
        return x
    if zero_pad and len(x) >= kernel:
        return medfilt(x, kernel_size=kernel)
    return median_filter(x, size=min(kernel, len(x) - (len(x) + 1) % 2), mode="nearest")


def _crop_with_pad(frame: np.ndarray, y0: int, y1: int, x0: int, x1: int, value: int) -> np.ndarray:
    """frame[y0:y1, x0:x1] with `value` wherever the window leaves the frame."""
    h, w = frame.shape[:2]
    out = np.full((y1 - y0, x1 - x0, frame.shape[2]), value, dtype=frame.dtype)
    sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if sy0 < sy1 and sx0 < sx1:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return out


def face_windows(track: FaceTrack, scale: float = FACE_CROP_SCALE) -> np.ndarray:
    """Integer square windows [T, 4] (y0, y1, x0, x1), one size, smoothed centres."""
    b = track.boxes
    longer = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
    side = max(round(float(np.median(longer)) * scale), 8)
    cx = _medfilt((b[:, 0] + b[:, 2]) / 2)
    cy = _medfilt((b[:, 1] + b[:, 3]) / 2)
    x0 = np.round(cx - side / 2).astype(int)
    y0 = np.round(cy - side / 2).astype(int)
    return np.stack([y0, y0 + side, x0, x0 + side], axis=1)


def face_crops(frames: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """The face-region crops [T, S, S, 3] of `face_windows` (black outside the frame)."""
    return np.stack(
        [_crop_with_pad(f, *map(int, w), value=0) for f, w in zip(frames, windows, strict=True)]
    )


def syncnet_crops(frames: np.ndarray, track: FaceTrack) -> np.ndarray:
    """224x224 RGB face crops [T, 224, 224, 3] cut the way syncnet_python does."""
    b = track.boxes
    s = _medfilt(np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2, zero_pad=True)
    cy = _medfilt((b[:, 1] + b[:, 3]) / 2, zero_pad=True)
    cx = _medfilt((b[:, 0] + b[:, 2]) / 2, zero_pad=True)
    cs = SYNCNET_CROP_SCALE
    out = np.empty((len(frames), SYNCNET_SIZE, SYNCNET_SIZE, 3), np.uint8)
    for i, frame in enumerate(frames):
        bs = s[i]
        # The reference pads by int(bs * (1 + 2 cs)) and truncates the padded coordinates.
        pad = int(bs * (1 + 2 * cs))
        my, mx = cy[i] + pad, cx[i] + pad
        y0, y1 = int(my - bs) - pad, int(my + bs * (1 + 2 * cs)) - pad
        x0, x1 = int(mx - bs * (1 + cs)) - pad, int(mx + bs * (1 + cs)) - pad
        face = _crop_with_pad(frame, y0, y1, x0, x1, SYNCNET_PAD_VALUE)
        out[i] = cv2.resize(face, (SYNCNET_SIZE, SYNCNET_SIZE), interpolation=cv2.INTER_LINEAR)
    return out


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity [2, 3] mapping src points onto dst (Umeyama 1991)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def arcface_align(frame: np.ndarray, points: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The 112x112 ArcFace crop of a face from its 5 keypoints."""
    m = similarity_transform(points, ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))
    return cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
