"""Source motion, frame by frame: the one implementation behind avatar registration
(`talkinghead.methods.ditto.avatar.AvatarRegistrar`) and Ditto's training data
(`talkinghead.methods.ditto.data`).

The face is tracked through the frames (each frame analysed from the previous one's
landmarks); its 512 crop, shrunk to 256 with area interpolation and scaled to [0, 1],
goes through the motion extractor (pose logits, translation, expression, scale,
canonical keypoints) and, when given, the appearance extractor (the feature volume
f_s), a batch of frames at a time. The motion is per frame, as the network gives it:
registration smooths a video's motion afterwards, the training data keeps it raw.

Training data can also crop a whole clip with one box (`clip_crop_transform`, then
`extract_motion_batches` on the crops): the release's rule, which keeps head
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
from talkinghead.face.crop import DEFAULT_CROP, crop_transform
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


def clip_crop_transform(
    landmarks: Sequence[np.ndarray], config: CropConfig = DEFAULT_CROP
) -> tuple[np.ndarray, np.ndarray]:
    """One crop for a whole clip from its per-frame landmarks [K, 2]: (M_o2c, M_c2o), 3x3.

    Each frame's box is the release's crop box (`talkinghead.face.crop.crop_transform`:
    the landmarks' square box in the face's own axes, times ``config.scale``, moved by
    ``vx_ratio`` / ``vy_ratio``) but not rotated; the clip's box has the mean centre and
    the mean side of those boxes, and is axis-aligned. Measuring each box in the face's
    axes keeps its side independent of the roll, so a tilting head does not widen it.
    """
    if len(landmarks) == 0:
        raise ValueError("clip_crop_transform needs the landmarks of at least one frame")
    half = config.dsize / 2
    centres, sides = [], []
    for pts in landmarks:
        _, m_c2o = crop_transform(
            pts,
            dsize=config.dsize,
            scale=config.scale,
            vx_ratio=config.vx_ratio,
            vy_ratio=config.vy_ratio,
            rotate=False,
        )
        centres.append(m_c2o[:2, :2] @ np.full(2, half) + m_c2o[:2, 2])
        sides.append(m_c2o[0, 0] * config.dsize)
    centre = np.mean(centres, axis=0)
    side = float(np.mean(sides))
    s = config.dsize / side
    m_o2c = np.array([[s, 0.0, half - s * centre[0]], [0.0, s, half - s * centre[1]], [0, 0, 1]])
    m_c2o = np.array([[1 / s, 0.0, centre[0] - half / s], [0.0, 1 / s, centre[1] - half / s], [0, 0, 1]])
    return m_o2c, m_c2o


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
    "NETWORK_INPUT_SIZE",
    "SourceBatch",
    "clip_crop_transform",
    "crop_to_network_input",
    "extract_motion_batches",
    "extract_source_batches",
    "track_faces",
]
