"""The release's similarity crop around a face, from landmarks, and its exact inverse.

Geometry (as the release's ``crop_image``):

1. Two anchor points cancel the roll: the mean of both eye centres and the
   centre of the mouth corners. The crop's y axis points from the eyes to the
   mouth; its x axis is that rotated by -90 degrees.
2. The landmarks' bounding box in that rotated frame, made square with its
   longer side, times ``scale``, is the crop's size; its centre moves by
   ``vx_ratio`` / ``vy_ratio`` times the size along x / y (negative vy: up,
   to keep the forehead).
3. A similarity transform maps that square onto ``dsize x dsize`` pixels
   (bilinear, black outside the frame).

The release accepts ``vx_ratio`` but drops it; we apply it (default 0, so the
results are the same by default).

Point layouts, told apart by their count (eye-centre points; mouth corners):

=====  ===============================  ==================================
count  layout                           anchors
=====  ===============================  ==================================
5      detector keypoints               eyes 0, 1; mouth 3, 4
106    InsightFace 2d106                eyes 33 35 40 39 / 87 89 94 93; 52, 61
203    the release's landmark203        eyes 0 6 12 18 / 24 30 36 42; 48, 66
468    MediaPipe face mesh              eyes 33 133 159 145 / 263 362 386 374;
478    (with irises)                    mouth 61, 291
=====  ===============================  ==================================

The 203 layout (and 106) cover eyes, brows, nose, lips and the jaw contour from
ear to ear, but nothing above the brows. The MediaPipe mesh also covers the
forehead up to the hairline, which would make the box taller and push the crop
up. So for a mesh only the points the 203 layout has counterparts of define the
box (`MESH_CROP_POINTS`: the jaw contour below the temples, brows, eyes, nose
and lips), and the eye centres are the means of the same four points per eye
(two corners, top and bottom of the lid contour) that the 203 layout averages.
The release's 512 crop of a face is thus approximated by the crop of its mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from talkinghead.face.types import CropConfig, FaceBox, FaceCrop

# The jaw contour from temple to temple via the chin (no forehead), eyebrows, the
# eye and lip contours and the nose ridge of the MediaPipe mesh.
_MESH_JAW = (
    127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
    377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356,
)  # fmt: skip
_MESH_BROWS = (
    70, 63, 105, 66, 107, 55, 65, 52, 53, 46,
    300, 293, 334, 296, 336, 285, 295, 282, 283, 276,
)  # fmt: skip
_MESH_EYES = (
    33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246,
    263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466,
)  # fmt: skip
_MESH_NOSE = (168, 6, 197, 195, 5, 4, 1, 2, 98, 327, 64, 294, 48, 278)
_MESH_LIPS = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291,
    185, 40, 39, 37, 0, 267, 269, 270, 409,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308,
    191, 80, 81, 82, 13, 312, 311, 310, 415,
)  # fmt: skip
MESH_CROP_POINTS: tuple[int, ...] = _MESH_JAW + _MESH_BROWS + _MESH_EYES + _MESH_NOSE + _MESH_LIPS

DEFAULT_CROP = CropConfig()  # the release's 512 crop


@dataclass(frozen=True)
class _Layout:
    eye_a: tuple[int, ...]
    eye_b: tuple[int, ...]
    mouth: tuple[int, int]
    box_points: tuple[int, ...] | None = None  # None: all points


_MESH = _Layout((33, 133, 159, 145), (263, 362, 386, 374), (61, 291), MESH_CROP_POINTS)
LAYOUTS: dict[int, _Layout] = {
    5: _Layout((0,), (1,), (3, 4)),
    106: _Layout((33, 35, 40, 39), (87, 89, 94, 93), (52, 61)),
    203: _Layout((0, 6, 12, 18), (24, 30, 36, 42), (48, 66)),
    468: _Layout(_MESH.eye_a, _MESH.eye_b, _MESH.mouth, MESH_CROP_POINTS),
    478: _MESH,
}


@dataclass(frozen=True)
class Crop:
    """A face crop: the image and the 3x3 float64 similarity matrices both ways."""

    image: np.ndarray
    M_o2c: np.ndarray  # original pixels -> crop pixels
    M_c2o: np.ndarray  # crop pixels -> original pixels


def _layout(pts: np.ndarray) -> _Layout:
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ValueError(f"landmarks must be [N, 2+], got {pts.shape}")
    if pts.shape[0] not in LAYOUTS:
        raise ValueError(
            f"unknown landmark layout with {pts.shape[0]} points; known: {sorted(LAYOUTS)}"
        )
    return LAYOUTS[pts.shape[0]]


def anchor_points(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks [N, 2] -> (centre between the eyes, centre of the mouth corners)."""
    pts = np.asarray(pts, dtype=np.float64)
    lay = _layout(pts)
    xy = pts[:, :2]
    eyes = (xy[list(lay.eye_a)].mean(0) + xy[list(lay.eye_b)].mean(0)) / 2
    return eyes, xy[list(lay.mouth)].mean(0)


def crop_transform(
    pts: np.ndarray,
    dsize: int = 512,
    scale: float = 2.3,
    vx_ratio: float = 0.0,
    vy_ratio: float = -0.125,
    rotate: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks [N, 2] in image pixels -> (M_o2c, M_c2o), 3x3 float64."""
    pts = np.asarray(pts, dtype=np.float64)
    lay = _layout(pts)
    eyes, mouth = anchor_points(pts)
    uy = mouth - eyes
    norm = np.linalg.norm(uy)
    uy = uy / norm if norm > 1e-3 else np.array([0.0, 1.0])
    ux = np.array([uy[1], -uy[0]])
    R = np.stack([ux, uy])  # rows: the crop's axes in image coordinates

    xy = pts[:, :2] if lay.box_points is None else pts[list(lay.box_points), :2]
    # The mean is only a pivot: the box centre in the rotated frame does not depend on it.
    pivot = xy.mean(0)
    rot = (xy - pivot) @ R.T
    lo, hi = rot.min(0), rot.max(0)
    size = float((hi - lo).max()) * scale
    centre = pivot + R.T @ ((lo + hi) / 2) + (ux * vx_ratio + uy * vy_ratio) * size

    s = dsize / size
    A = s * R if rotate else s * np.eye(2)
    M_o2c = np.eye(3)
    M_o2c[:2, :2] = A
    M_o2c[:2, 2] = dsize / 2 - A @ centre
    # Exact inverse of a similarity: transpose of the rotation over the scale.
    A_inv = (R.T if rotate else np.eye(2)) / s
    M_c2o = np.eye(3)
    M_c2o[:2, :2] = A_inv
    M_c2o[:2, 2] = centre - A_inv @ np.full(2, dsize / 2)
    return M_o2c, M_c2o


def warp_points(pts: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a 2x3 or 3x3 affine matrix to points [..., 2] (extra columns, e.g. z, are dropped)."""
    pts = np.asarray(pts)
    M = np.asarray(M, dtype=np.float64)
    out = pts[..., :2].astype(np.float64) @ M[:2, :2].T + M[:2, 2]
    return out.astype(np.result_type(pts.dtype, np.float32))


def warp_image(img: np.ndarray, M_o2c: np.ndarray, dsize: int | tuple[int, int]) -> np.ndarray:
    """Bilinear warp of an image with M (original -> output), black outside; dsize is (w, h) or n."""
    size = (dsize, dsize) if isinstance(dsize, int) else tuple(dsize)
    return cv2.warpAffine(
        img,
        np.asarray(M_o2c, dtype=np.float64)[:2],
        size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def crop_from_landmarks(
    img: np.ndarray, pts: np.ndarray, config: CropConfig = DEFAULT_CROP
) -> Crop:
    """Crop the face that the landmarks [N, 2] (image pixels) outline, as the release does."""
    M_o2c, M_c2o = crop_transform(
        pts,
        dsize=config.dsize,
        scale=config.scale,
        vx_ratio=config.vx_ratio,
        vy_ratio=config.vy_ratio,
        rotate=config.rotate,
    )
    return Crop(warp_image(img, M_o2c, config.dsize), M_o2c, M_c2o)


def describe_face(
    rgb: np.ndarray,
    landmarks: np.ndarray,
    config: CropConfig,
    landmarks478: Callable[[np.ndarray], np.ndarray | None],
    *,
    what: str,
    box: FaceBox | None,
    num_faces: int,
) -> FaceCrop:
    """The `FaceCrop` of a frame whose landmarks are known, as every backend builds it.

    The 512 crop comes from `landmarks`; the eye attributes from 478 landmarks found
    again on that crop (`landmarks478`), as the release does.
    """
    from talkinghead.errors import NoFaceError
    from talkinghead.face.eyes import eye_attributes

    crop = crop_from_landmarks(rgb, landmarks, config)
    mesh = landmarks478(crop.image)
    if mesh is None:
        raise NoFaceError(f"no face found in the {config.dsize} crop of {what}")
    eye_open, eye_ball = eye_attributes(mesh)
    return FaceCrop(
        crop=crop.image,
        M_c2o=crop.M_c2o.astype(np.float32),
        landmarks=landmarks,
        eye_open=eye_open,
        eye_ball=eye_ball,
        box=box,
        num_faces=num_faces,
        mesh=np.asarray(mesh, np.float32).reshape(478, -1),
    )
