"""Reading the source portrait: one image, or the frames of a video, as RGB uint8 arrays.

The kind of file is decided by its content, never its extension (the release's own
example portrait is a JPEG named `.png`): Pillow gets the first try, PyAV the second.
Frames larger than `max_side` are scaled down and both sides are made even, following
the release's rule (scale the longest side to `max_side`, round the other, then floor
both to a multiple of 2) so that video encoders that need even sizes accept the output.

`source_media` also takes in-memory sources under the same rules: a PIL image, an
HxWx3 (or HxW grey) array, uint8 or float in [0, 1], or a video as an [F, H, W, 3]
array or a list of such frames (or PIL images).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

from talkinghead.errors import MediaError
from talkinghead.media.video import VideoReader


@dataclass
class SourceMedia:
    """Decoded source: `frames` are HxWx3 RGB uint8, all the same size; `fps` is None for images."""

    frames: list[np.ndarray]
    is_image: bool
    fps: float | None
    path: Path | None  # None for an in-memory source

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of every frame."""
        h, w = self.frames[0].shape[:2]
        return h, w


def target_size(h: int, w: int, max_side: int | None = 1920) -> tuple[int, int]:
    """The release's output size: longest side <= max_side (other side rounded), both even."""
    if max_side is not None and max_side > 0 and max(h, w) > max_side:
        if h > w:
            h, w = max_side, round(w * max_side / h)
        else:
            h, w = round(h * max_side / w), max_side
    h, w = h - h % 2, w - w % 2
    if h < 2 or w < 2:
        raise ValueError(f"a {h}x{w} frame is too small")
    return h, w


def fit_frame(rgb: np.ndarray, max_side: int | None = 1920) -> np.ndarray:
    """Resize to `target_size` (area filter: only ever shrinks); unchanged if already fitting."""
    h, w = rgb.shape[:2]
    new_h, new_w = target_size(h, w, max_side)
    if (new_h, new_w) == (h, w):
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)


def _to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8; transparency is flattened onto white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's own convert("RGB") clips these to 0..255 instead of rescaling.
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0
        elif im.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def _read_image(path: Path) -> np.ndarray | None:
    """The first frame as RGB uint8 if Pillow can decode the file, else None."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb_uint8(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _read_video(
    path: Path, max_side: int | None, max_frames: int | None
) -> tuple[list[np.ndarray], float | None, bool]:
    """(frames, fps, is_still_image) decoded with PyAV; raises MediaError."""
    reader = VideoReader(path, kind="image or video")
    frames = list(reader.frames(fit=True, max_side=max_side, max_frames=max_frames))
    return frames, reader.fps, reader.is_still


def load_source(
    path: str | Path, max_side: int | None = 1920, max_frames: int | None = None
) -> SourceMedia:
    """Decode a source image or video.

    max_side:   longest side after resizing (None or <= 0: no limit); sides are always even.
    max_frames: decode at most this many video frames (None: all; every frame is kept
                in memory, so cap long videos).
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if not path.is_file():
        raise MediaError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")

    try:
        rgb = _read_image(path)
        if rgb is not None:
            return SourceMedia([fit_frame(rgb, max_side)], is_image=True, fps=None, path=path)
        frames, fps, still = _read_video(path, max_side, max_frames)
    except ValueError as e:  # a degenerate size from target_size
        raise MediaError(f"{path}: {e}") from None
    return SourceMedia(frames, is_image=still, fps=fps, path=path)


# A source portrait or video: a file, or one of the in-memory forms `source_media` takes.
SourceInput = str | os.PathLike | Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray]
_IN_MEMORY = "source array"  # how messages name an in-memory source


def frame_to_rgb_uint8(frame: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image (EXIF orientation applied, as for files) or an HxWx3 / HxW array, uint8 or
    float in [0, 1] -> HxWx3 RGB uint8."""
    if isinstance(frame, Image.Image):
        return _to_rgb_uint8(ImageOps.exif_transpose(frame))
    a = np.asarray(frame)
    if a.ndim == 2:
        a = a[..., None].repeat(3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise MediaError(f"{_IN_MEMORY}: a frame must be HxWx3 RGB (or HxW grey), got {a.shape}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise MediaError(f"{_IN_MEMORY}: pixels must be uint8 or float in [0, 1], got {a.dtype}")
    if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
        raise MediaError(f"{_IN_MEMORY}: float pixels must lie in [0, 1]")
    return np.rint(a * 255.0).astype(np.uint8)


def source_media(
    source: SourceInput,
    max_side: int | None = 1920,
    max_frames: int | None = None,
    fps: float | None = None,
) -> SourceMedia:
    """`load_source` for a file; in-memory sources are converted under the same rules.

    A PIL image, an HxWx3 / HxW array, a one-frame list and an [1, H, W, 3] array are
    images; more frames are a video (`fps` is recorded, not used for timing).
    """
    if isinstance(source, (str, os.PathLike)):
        return load_source(source, max_side=max_side, max_frames=max_frames)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if isinstance(source, Image.Image) or (isinstance(source, np.ndarray) and source.ndim <= 3):
        frames = [source]
    elif isinstance(source, (np.ndarray, Sequence)):
        frames = list(source[:max_frames] if max_frames is not None else source)
    else:
        raise MediaError(
            f"unsupported source {type(source).__name__}: pass a file path, a PIL image, "
            "a numpy array or a list of frames"
        )
    if not frames:
        raise MediaError(f"{_IN_MEMORY}: no frames")
    try:
        rgb = [fit_frame(frame_to_rgb_uint8(f), max_side) for f in frames]
    except ValueError as e:  # a degenerate size from target_size
        raise MediaError(f"{_IN_MEMORY}: {e}") from None
    if any(f.shape != rgb[0].shape for f in rgb):
        raise MediaError(f"{_IN_MEMORY}: all frames of a video must have the same size")
    is_image = len(rgb) == 1 and fps is None
    return SourceMedia(rgb, is_image=is_image, fps=None if is_image else fps, path=None)


def mirror_index(index: Any, num_frames: int) -> Any:
    """Source frame shown at output frame `index` when a source video plays forwards,
    backwards, forwards, ... (an int, or elementwise for a numpy array or torch tensor)."""
    if num_frames < 1:
        raise ValueError(f"need num_frames >= 1, got {num_frames}")
    if isinstance(index, (int, np.integer)):
        if index < 0:
            raise ValueError(f"need index >= 0, got {index}")
        turn, pos = divmod(int(index), num_frames)
        return pos if turn % 2 == 0 else num_frames - 1 - pos
    turn, pos = index // num_frames, index % num_frames
    if isinstance(index, np.ndarray):
        return np.where(turn % 2 == 0, pos, num_frames - 1 - pos)
    import torch  # only when called with a tensor: the media layer does not need torch

    return torch.where(turn % 2 == 0, pos, num_frames - 1 - pos)
