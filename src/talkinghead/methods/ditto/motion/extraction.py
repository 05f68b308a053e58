"""Source motion, frame by frame: the one implementation behind avatar registration
(`talkinghead.methods.ditto.avatar.AvatarRegistrar`) and Ditto's training data
(`talkinghead.methods.ditto.data`).

The face is tracked through the frames (each frame analysed from the previous one's
landmarks); its 512 crop, shrunk to 256 with area interpolation and scaled to [0, 1],
goes through the motion extractor (pose logits, translation, expression, scale,
canonical keypoints) and, when given, the appearance extractor (the feature volume
f_s), a batch of frames at a time. The motion is per frame, as the network gives it:
registration smooths a video's motion afterwards, the training data keeps it raw.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from talkinghead.errors import NoFaceError
from talkinghead.face.types import FaceAnalyzer, FaceCrop
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
    previous: FaceCrop | None = None
    faces: list[FaceCrop] = []
    start = 0
    for i, frame in enumerate(frames):
        try:
            face = face_analyzer.analyze(frame, previous)
        except NoFaceError as exc:
            raise NoFaceError(f"{where}{'' if is_image else f' (frame {i})'}: {exc}") from exc
        previous = face  # video frames are tracked from the previous frame's landmarks
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
    "crop_to_network_input",
    "extract_source_batches",
]
