"""Video-driven portrait animation with LivePortrait's release: a portrait moves as a face in a video.

    portrait --face--> 512 crop --256--> motion extractor (x_s), appearance extractor (f_s)
    driving video --face (tracked)--> crops --256--> motion extractor, frame by frame
    relative motion (motion.py) --eye/lip sliders--> --stitching--> driving keypoints
    --warp--> --decode--> 512 crops --paste back--> frames of the portrait's size

The output has one frame per driving frame, at the driving video's frame rate.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from talkinghead.errors import MediaError, NoFaceError, SettingsError
from talkinghead.face import create_face_analyzer
from talkinghead.face.paste import PasteBack
from talkinghead.face.ratios import eye_close_ratio, lip_close_ratio
from talkinghead.face.types import FaceAnalyzer, FaceCrop
from talkinghead.media.source import SourceInput, source_media
from talkinghead.media.video import VideoReader
from talkinghead.media.writer import open_writer
from talkinghead.methods.liveportrait.checkpoints import LivePortraitModels, load_liveportrait
from talkinghead.methods.liveportrait.motion import (
    MotionInfo,
    relative_driving_keypoints,
    source_keypoints,
)
from talkinghead.models.motion_extractor import OUTPUT_KEYS
from talkinghead.models.retargeting import retarget
from talkinghead.validation import check_not_an_input, check_output, check_source

NETWORK_SIZE = 256
# The sliders' range: LivePortrait's own (0 closed ... 0.8 wide open).
RATIO_RANGE = (0.0, 0.8)

Progress = Callable[[str, int, int | None], None]


@dataclass
class AnimateSettings:
    """What `animate` takes besides its inputs (checked by `check_settings`)."""

    eye_open: float | None = None  # target eye-close ratio; None: as driven
    lip_open: float | None = None  # target lip-close ratio; None: as driven
    stitching: bool = True
    multiplier: float = 1.0  # LivePortrait's driving_multiplier: scales the motion
    crop_driving: bool = True  # False: the driving frames are face crops already
    max_size: int | None = 1920  # the portrait's longest side
    max_frames: int | None = None  # stop after this many driving frames
    batch_size: int = 8


def check_settings(settings: AnimateSettings) -> None:
    lo, hi = RATIO_RANGE
    for name in ("eye_open", "lip_open"):
        value = getattr(settings, name)
        if value is not None and not (
            isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
        ):
            raise SettingsError(f"{name} must be a number from {lo} to {hi}, got {value!r}")
    if not (isinstance(settings.multiplier, (int, float)) and 0 < settings.multiplier <= 10):
        raise SettingsError(
            f"multiplier must be above 0 and at most 10, got {settings.multiplier!r}"
        )
    if settings.batch_size < 1:
        raise SettingsError(f"batch_size must be at least 1, got {settings.batch_size!r}")
    if settings.max_frames is not None and settings.max_frames < 1:
        raise SettingsError(f"max_frames must be at least 1, got {settings.max_frames!r}")


def open_driving(driving: str | os.PathLike) -> VideoReader:
    """The driving video, opened (header read only), or a one-line MediaError."""
    path = Path(driving)
    if not path.is_file():
        raise MediaError(f"{path}: driving video not found")
    reader = VideoReader(path, kind="driving video")
    if reader.is_still:
        reader.close()
        raise MediaError(f"{path}: is a still image; the driving input must be a video")
    return reader


@dataclass
class AnimationResult:
    """frames: uint8 [N, H, W, 3] when no output was written; output: the written path."""

    num_frames: int
    fps: float
    frames: np.ndarray | None = None
    output: Path | None = None
    face_backend: str = ""


def _to_input(crops: list[np.ndarray], device: torch.device) -> torch.Tensor:
    small = [
        c
        if c.shape[:2] == (NETWORK_SIZE, NETWORK_SIZE)
        else cv2.resize(c, (NETWORK_SIZE, NETWORK_SIZE), interpolation=cv2.INTER_AREA)
        for c in crops
    ]
    x = torch.from_numpy(np.stack(small)).to(device)
    return x.permute(0, 3, 1, 2).float() / 255.0


def check_portrait(source: SourceInput, max_size: int) -> np.ndarray:
    """The portrait as RGB uint8 (longest side at most `max_size`); a video is refused:
    animate takes its motion from the driving video only."""
    portrait = check_source(source, max_size)
    if not source_media(source, max_side=max_size, max_frames=2).is_image:
        where = f"{source}: " if isinstance(source, (str, os.PathLike)) else ""
        raise MediaError(f"{where}the source is a video; animate takes a portrait image")
    return portrait


class LivePortraitAnimator:
    """LivePortrait's networks plus a face analyser; `animate` drives a portrait by a video."""

    def __init__(self, models: LivePortraitModels, face_analyzer: FaceAnalyzer) -> None:
        self.models = models
        self.face_analyzer = face_analyzer

    @classmethod
    def from_pretrained(
        cls,
        checkpoints: str | os.PathLike,
        *,
        device: str = "cpu",
        face_backend: str = "mediapipe",
        face_analyzer: FaceAnalyzer | None = None,
    ) -> LivePortraitAnimator:
        models = load_liveportrait(checkpoints, device=device)
        return cls(models, face_analyzer or create_face_analyzer(face_backend))

    @property
    def device(self) -> torch.device:
        return next(self.models.warp_network.parameters()).device

    @property
    def face_backend(self) -> str:
        return str(getattr(self.face_analyzer, "name", "unknown"))

    @torch.inference_mode()
    def _motion(self, crops: list[np.ndarray]) -> MotionInfo:
        outs = self.models.motion_extractor(_to_input(crops, self.device))
        return {k: v.float() for k, v in zip(OUTPUT_KEYS, outs, strict=True)}

    def _driving_crops(
        self, reader: VideoReader, settings: AnimateSettings
    ) -> Iterator[list[np.ndarray]]:
        previous: FaceCrop | None = None
        batch: list[np.ndarray] = []
        for index, frame in enumerate(reader.frames(fit=True, max_frames=settings.max_frames)):
            if settings.crop_driving:
                try:
                    previous = self.face_analyzer.analyze(frame, previous)
                except NoFaceError:
                    raise NoFaceError(
                        f"{reader.path}: no face in driving frame {index}; use a video where "
                        "the face stays visible, or --no-crop-driving for pre-cropped faces"
                    ) from None
                batch.append(previous.crop)
            else:
                batch.append(frame)
            if len(batch) == settings.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    @torch.inference_mode()
    def animate(
        self,
        source: SourceInput,
        driving: str | os.PathLike,
        output: str | os.PathLike | None = None,
        settings: AnimateSettings | None = None,
        progress: Progress | None = None,
        **overrides: Any,
    ) -> AnimationResult:
        """Animate `source` (a portrait) by `driving` (a video file).

        `output`: a video path, a frames folder, "-" (raw RGB on stdout) or None (frames
        returned). Settings are `AnimateSettings` fields, as an object or keywords.
        """
        settings = settings or AnimateSettings()
        if overrides:
            settings = AnimateSettings(**{**settings.__dict__, **overrides})
        check_settings(settings)
        if output is not None:
            check_output(output)
            check_not_an_input(output, {"source": source, "driving": driving})
        portrait = check_portrait(source, settings.max_size)
        reader = open_driving(driving)
        try:
            face = self.face_analyzer.analyze(portrait)
        except NoFaceError as exc:
            reader.close()
            where = source if isinstance(source, (str, os.PathLike)) else "the source"
            raise NoFaceError(
                f"{where}: {exc}; use a picture where a face is clearly visible"
            ) from None
        fps = reader.fps or 25.0
        device = self.device
        m = self.models

        x_s_info = self._motion([face.crop])
        x_s = source_keypoints(x_s_info)
        f_s = m.appearance_extractor(_to_input([face.crop], device))
        eye_ratio = torch.from_numpy(eye_close_ratio(face.landmarks))
        lip_ratio = torch.from_numpy(lip_close_ratio(face.landmarks))
        paster = PasteBack()

        writer = open_writer(output, fps=fps) if output is not None else None
        frames: list[np.ndarray] = []
        first: MotionInfo | None = None
        count = 0
        try:
            for crops in self._driving_crops(reader, settings):
                info = self._motion(crops)
                if first is None:
                    first = {k: v[:1] for k, v in info.items()}
                b = len(crops)
                x_d = relative_driving_keypoints(x_s_info, info, first)
                src = x_s.expand(b, -1, -1)
                x_d = retarget(
                    x_d,
                    src,
                    eye_network=m.eye_retargeting,
                    lip_network=m.lip_retargeting,
                    source_eye_ratio=eye_ratio,
                    source_lip_ratio=lip_ratio,
                    eye_open=settings.eye_open,
                    lip_open=settings.lip_open,
                )
                if settings.stitching:
                    x_d = m.stitch_network(src, x_d)
                x_d = src + (x_d - src) * settings.multiplier
                feature = m.warp_network(f_s.expand(b, -1, -1, -1, -1), src, x_d)
                image = m.decoder(feature)
                rendered = (image.float().clamp(0, 1) * 255).permute(0, 2, 3, 1).cpu().numpy()
                out = [paster(portrait, crop, face.M_c2o) for crop in rendered]
                if writer is not None:
                    writer.write_batch(out)
                else:
                    frames.extend(out)
                count += b
                if progress:
                    progress("animate", count, reader.frame_count or None)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        finally:
            reader.close()
        if count == 0:
            if writer is not None:
                writer.abort()
            raise MediaError(f"{driving}: the driving video has no frames")
        written = writer.close() if writer is not None else None
        return AnimationResult(
            num_frames=count,
            fps=fps,
            frames=None if writer is not None else np.stack(frames),
            output=written if written is not None else (None if output is None else Path(output)),
            face_backend=self.face_backend,
        )


__all__ = [
    "AnimateSettings",
    "AnimationResult",
    "LivePortraitAnimator",
    "check_settings",
    "open_driving",
]
