"""Source motion, frame by frame: the one implementation behind avatar registration
(`talkinghead.methods.ditto.avatar.AvatarRegistrar`) and Ditto's training data
(`talkinghead.methods.ditto.data`).

The face is tracked through the frames (each frame analysed from the previous one's
landmarks); its 512 crop, shrunk to 256 with area interpolation and scaled to [0, 1],
goes through the motion extractor (pose logits, translation, expression, scale,
canonical keypoints) and, when given, the appearance extractor (the feature volume
f_s), a batch of frames at a time. The motion is per frame, as the network gives it:
registration smooths a video's motion afterwards, the training data keeps it raw.

Training data can also crop a whole clip with one box (`clip_crop_box`, `crop_clip_box`,
then `extract_motion_batches` on the crops): the release's rule, which keeps head
translation, scale and roll in the motion instead of cancelling them per frame.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from talkinghead.errors import NoFaceError
from talkinghead.face.crop import crop_transform
from talkinghead.face.types import CropConfig, FaceAnalyzer, FaceCrop
from talkinghead.models.motion_extractor import OUTPUT_KEYS

NETWORK_INPUT_SIZE = 256


def crop_to_network_input(crop: np.ndarray) -> np.ndarray:
    """512 face crop -> 256x256 uint8 with area interpolation (the networks' input size)."""
    if crop.shape[:2] == (NETWORK_INPUT_SIZE, NETWORK_INPUT_SIZE):
        return crop
    return cv2.resize(crop, (NETWORK_INPUT_SIZE, NETWORK_INPUT_SIZE), interpolation=cv2.INTER_AREA)


@dataclass(eq=False)
class SourceBatch:
    """Consecutive frames ``start .. start + len(faces) - 1`` of a source, analysed.

    faces:  the face analyser's result per frame (512 crop, crop -> frame matrix, eyes)
    motion: the motion extractor's outputs, {`OUTPUT_KEYS` key: [B, size] float32}
    f_s:    [B, 32, 16, 64, 64] float32 appearance features, or None without that network
    """

    start: int
    faces: list[FaceCrop]
    motion: dict[str, np.ndarray]
    f_s: np.ndarray | None

    @property
    def stop(self) -> int:
        return self.start + len(self.faces)

    @property
    def M_c2o(self) -> np.ndarray:
        """[B, 3, 3] float32, crop (512) pixels -> frame pixels."""
        return np.stack([np.asarray(f.M_c2o, np.float32) for f in self.faces])

    @property
    def eye_open(self) -> np.ndarray:
        """[B, 2] float32."""
        return np.stack([np.asarray(f.eye_open, np.float32).reshape(2) for f in self.faces])

    @property
    def eye_ball(self) -> np.ndarray:
        """[B, 6] float32."""
        return np.stack([np.asarray(f.eye_ball, np.float32).reshape(6) for f in self.faces])


def _run_networks(
    crops256: np.ndarray,
    motion_extractor: nn.Module,
    appearance_extractor: nn.Module | None,
    device: torch.device,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    with torch.inference_mode():
        x = torch.from_numpy(crops256).to(device).permute(0, 3, 1, 2).float() / 255.0
        outs = motion_extractor(x)
        motion = {
            k: o.float().reshape(o.shape[0], -1).cpu().numpy()
            for k, o in zip(OUTPUT_KEYS, outs, strict=True)
        }
        if appearance_extractor is None:
            return motion, None
        return motion, appearance_extractor(x).float().cpu().numpy()


def track_faces(
    frames: Iterable[np.ndarray],
    face_analyzer: FaceAnalyzer,
    *,
    where: str = "source",
    is_image: bool = False,
) -> Iterator[tuple[np.ndarray, FaceCrop]]:
    """(frame, its face) for each of `frames`, each frame analysed from the previous one's
    landmarks. A frame without a face raises `NoFaceError` naming `where` and the frame."""
    previous: FaceCrop | None = None
    for i, frame in enumerate(frames):
        try:
            face = face_analyzer.analyze(frame, previous)
        except NoFaceError as exc:
            raise NoFaceError(f"{where}{'' if is_image else f' (frame {i})'}: {exc}") from exc
        previous = face  # video frames are tracked from the previous frame's landmarks
        yield frame, face


# The release's training crop (its prepare_data crop script): LivePortrait's settings for
# cropping driving videos, scale 2.2 / vy -0.1, not the source crop's 2.3 / -0.125.
CLIP_CROP = CropConfig(dsize=512, scale=2.2, vx_ratio=0.0, vy_ratio=-0.1, rotate=False)


def clip_crop_box(
    landmarks: Sequence[np.ndarray], config: CropConfig = CLIP_CROP
) -> tuple[int, int, int, int]:
    """One square box ``(x0, y0, x1, y1)`` in whole pixels for a whole clip, from its
    per-frame landmarks [K, 2], as the release's training data preparation computes it:

    1. per frame, the crop box of `talkinghead.face.crop.crop_transform` (the landmarks'
       square box in the face's own axes, times ``config.scale``, its centre moved by
       ``vx_ratio`` / ``vy_ratio`` of the side along those axes), kept axis-aligned;
    2. the mean of those boxes' corners, and no other smoothing;
    3. made whole pixels: the rounded centre plus and minus the rounded half side
       (Python's round, halves to even, as there).

    Measuring each box in the face's axes keeps its side independent of the roll, so a
    tilting head does not widen it.
    """
    if len(landmarks) == 0:
        raise ValueError("clip_crop_box needs the landmarks of at least one frame")
    corners = []
    for pts in landmarks:
        _, m_c2o = crop_transform(
            pts,
            dsize=config.dsize,
            scale=config.scale,
            vx_ratio=config.vx_ratio,
            vy_ratio=config.vy_ratio,
            rotate=False,
        )
        side = m_c2o[0, 0] * config.dsize
        left, top = m_c2o[0, 2], m_c2o[1, 2]  # where crop pixel (0, 0) lies in the frame
        corners.append((left, top, left + side, top + side))
    x0, y0, x1, y1 = (float(v) for v in np.mean(corners, axis=0))
    cx, cy = round((x0 + x1) / 2), round((y0 + y1) / 2)
    half = max(round((x1 - x0) / 2), 1)
    return cx - half, cy - half, cx + half, cy + half


def clip_box_transform(
    box: tuple[int, int, int, int], dsize: int = CLIP_CROP.dsize
) -> tuple[np.ndarray, np.ndarray]:
    """(M_o2c, M_c2o), 3x3, of `crop_clip_box`: crop pixel u shows frame pixel
    ``x0 + (u + 0.5) * side / dsize - 0.5`` (pixel centres, as resizing maps them)."""
    x0, y0, x1, _ = box
    k = (x1 - x0) / dsize
    ox, oy = x0 + 0.5 * k - 0.5, y0 + 0.5 * k - 0.5
    m_c2o = np.array([[k, 0.0, ox], [0.0, k, oy], [0.0, 0.0, 1.0]])
    m_o2c = np.array([[1 / k, 0.0, -ox / k], [0.0, 1 / k, -oy / k], [0.0, 0.0, 1.0]])
    return m_o2c, m_c2o


def crop_clip_box(
    frame: np.ndarray, box: tuple[int, int, int, int], dsize: int = CLIP_CROP.dsize
) -> np.ndarray:
    """The frame inside `box`, black where the box leaves it, resized to dsize x dsize.

    The release crops, pads and scales with ffmpeg (bicubic); here area interpolation
    shrinks (filtered, as ffmpeg's scaler is) and bicubic enlarges.
    """
    x0, y0, x1, y1 = box
    h, w = frame.shape[:2]
    canvas = np.zeros((y1 - y0, x1 - x0, *frame.shape[2:]), frame.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    interpolation = cv2.INTER_AREA if x1 - x0 > dsize else cv2.INTER_CUBIC
    return cv2.resize(canvas, (dsize, dsize), interpolation=interpolation)


def extract_motion_batches(
    crops: Iterable[np.ndarray],
    motion_extractor: nn.Module,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
) -> Iterator[dict[str, np.ndarray]]:
    """Face crops (RGB uint8, any square size, consumed lazily) -> the motion extractor's
    outputs a batch at a time, {`OUTPUT_KEYS` key: [B, size] float32}."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    batch: list[np.ndarray] = []
    for crop in crops:
        batch.append(crop_to_network_input(crop))
        if len(batch) == batch_size:
            yield _run_networks(np.stack(batch), motion_extractor, None, device)[0]
            batch = []
    if batch:
        yield _run_networks(np.stack(batch), motion_extractor, None, device)[0]


def extract_source_batches(
    frames: Iterable[np.ndarray],
    face_analyzer: FaceAnalyzer,
    motion_extractor: nn.Module,
    appearance_extractor: nn.Module | None = None,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    where: str = "source",
    is_image: bool = False,
) -> Iterator[SourceBatch]:
    """Track the face through `frames` (RGB uint8, consumed lazily) and run the networks.

    The networks must already be on `device` and in eval mode. A frame without a face
    raises `NoFaceError` naming `where` and, for a video, the frame.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    faces: list[FaceCrop] = []
    start = 0
    for _, face in track_faces(frames, face_analyzer, where=where, is_image=is_image):
        faces.append(face)
        if len(faces) == batch_size:
            yield _batch(start, faces, motion_extractor, appearance_extractor, device)
            start, faces = start + len(faces), []
    if faces:
        yield _batch(start, faces, motion_extractor, appearance_extractor, device)


def _batch(
    start: int,
    faces: list[FaceCrop],
    motion_extractor: nn.Module,
    appearance_extractor: nn.Module | None,
    device: torch.device,
) -> SourceBatch:
    crops = np.stack([crop_to_network_input(f.crop) for f in faces])
    motion, f_s = _run_networks(crops, motion_extractor, appearance_extractor, device)
    return SourceBatch(start, faces, motion, f_s)


__all__ = [
    "CLIP_CROP",
    "NETWORK_INPUT_SIZE",
    "SourceBatch",
    "clip_box_transform",
    "clip_crop_box",
    "crop_clip_box",
    "crop_to_network_input",
    "extract_motion_batches",
    "extract_source_batches",
    "track_faces",
]
