"""Reading the source portrait: one image, or the frames of a video, as RGB uint8 arrays.

The kind of file is decided by its content, never its extension (the release's own
example portrait is a JPEG named `.png`): Pillow gets the first try, PyAV the second.
Frames larger than `max_side` are scaled down and both sides are made even, following
the release's rule (scale the longest side to `max_side`, round the other, then floor
both to a multiple of 2) so that video encoders that need even sizes accept the output.

Broken files are refused, never patched up: a truncated or damaged image (Pillow
says so) is not handed to FFmpeg, whose decoders would fill the missing part in, and
videos are decoded strictly (`VideoReader(strict=True)`). A picture of more than
`max_pixels` is refused from its header, before any pixel is decoded (a small
compressed file can hold a huge image), whichever decoder reads it.

`source_media` also takes in-memory sources under the same rules: a PIL image, an
HxWx3 (or HxW grey) array, uint8 or float in [0, 1], or a video as an [F, H, W, 3]
array or a list of such frames (or PIL images).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from talkinghead.errors import MediaError
from talkinghead.media.video import VideoReader

# Decoded pixels a source may have: 100 Mpx, three times 8K UHD (7680x4320, 33 Mpx).
# Decoding one costs about 3 bytes a pixel, several times over while it is converted.
DEFAULT_MAX_PIXELS = 100_000_000


class PixelLimitError(MediaError):
    """A source picture has more pixels than the decoding limit (checked from its header)."""


def check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    """Raise `PixelLimitError` when a `width` x `height` picture exceeds `max_pixels`."""
    if max_pixels is not None and width * height > max_pixels:
        raise PixelLimitError(
            f"{path}: the picture is {width}x{height} pixels ({width * height / 1e6:.1f} Mpx), "
            f"more than the limit of {max_pixels / 1e6:g} Mpx; shrink it first"
        )


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
    original = (h, w)
    scaled = max_side is not None and max_side > 0 and max(h, w) > max_side
    if scaled:
        if h > w:
            h, w = max_side, round(w * max_side / h)
        else:
            h, w = round(h * max_side / w), max_side
    h, w = h - h % 2, w - w % 2
    if h < 2 or w < 2:
        # The size the user knows (width x height), not the one after rounding.
        oh, ow = original
        how = f" to fit {max_side} pixels" if scaled else ""
        raise ValueError(
            f"the picture is {ow}x{oh} pixels, too small{how}: a source needs at least 2x2"
        )
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


# Pillow's words when it lacks a codec for a format it recognises (FFmpeg may have one);
# any other failure to load a recognised image means the file itself is broken.
_MISSING_CODEC = ("not available", "not supported", "unsupported")


class _PillowRefused(Exception):
    """Internal: Pillow recognised the format but could not open it (the reason)."""


def _read_image(path: Path, max_pixels: int | None) -> np.ndarray | None:
    """The first frame as RGB uint8 if Pillow can decode the file, None if the format is
    not Pillow's (or Pillow lacks its codec). A truncated or damaged image, or one over
    `max_pixels`, is a `MediaError`: FFmpeg must not get the chance to fill it in."""
    try:
        with warnings.catch_warnings():
            # Our own limit, checked below, replaces Pillow's warning at 89 Mpx.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError:
        # Pillow refuses over 179 Mpx before we see the size.
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise PixelLimitError(
            f"{path}: the picture has more than {limit / 1e6:.0f} Mpx, more than the limit "
            f"of {(max_pixels or limit) / 1e6:g} Mpx; shrink it first"
        ) from None
    except UnidentifiedImageError:
        return None
    except (OSError, ValueError, SyntaxError) as e:
        raise _PillowRefused(str(e)) from None  # a format Pillow knows, broken
    with im:
        check_pixels(path, im.width, im.height, max_pixels)
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as e:
            if any(words in str(e) for words in _MISSING_CODEC):
                return None
            raise MediaError(
                f"{path}: the image is truncated or damaged ({e}); re-export or re-download it"
            ) from None
        return _to_rgb_uint8(ImageOps.exif_transpose(im))


def _read_video(
    path: Path, max_side: int | None, max_frames: int | None, max_pixels: int | None
) -> tuple[list[np.ndarray], float | None, bool]:
    """(frames, fps, is_still_image) decoded strictly with PyAV; raises MediaError."""
    reader = VideoReader(path, kind="image or video", max_pixels=max_pixels)
    try:
        check_pixels(path, reader.width, reader.height, max_pixels)
    except PixelLimitError:
        reader.close()
        raise
    frames = reader.frames(fit=True, max_side=max_side, max_frames=max_frames, strict=True)
    return list(frames), reader.fps, reader.is_still


def load_source(
    path: str | Path,
    max_side: int | None = 1920,
    max_frames: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> SourceMedia:
    """Decode a source image or video.

    max_side:   longest side after resizing (None or <= 0: no limit); sides are always even.
    max_frames: decode at most this many video frames (None: all; every frame is kept
                in memory, so cap long videos).
    max_pixels: refuse a picture (or video frame) of more pixels, from its header, before
                decoding (`PixelLimitError`; None: no limit).
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if path.is_dir():
        raise MediaError(f"{path}: is a folder; give an image or a video file")
    if not path.is_file():
        raise MediaError(f"{path}: not a regular file; give an image or a video file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")

    try:
        try:
            rgb = _read_image(path, max_pixels)
        except _PillowRefused as refused:
            rgb, pillow_error = None, str(refused)
        else:
            pillow_error = None
        if rgb is not None:
            return SourceMedia([fit_frame(rgb, max_side)], is_image=True, fps=None, path=path)
        try:
            frames, fps, still = _read_video(path, max_side, max_frames, max_pixels)
        except PixelLimitError:
            raise
        except MediaError:
            if pillow_error is None:
                raise
            # Pillow knew the format and FFmpeg could not read it either: Pillow's reason.
            raise MediaError(
                f"{path}: the image is truncated or damaged ({pillow_error}); re-export or "
                "re-download it"
            ) from None
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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> SourceMedia:
    """`load_source` for a file; in-memory sources are converted under the same rules.

    A PIL image, an HxWx3 / HxW array, a one-frame list and an [1, H, W, 3] array are
    images; more frames are a video (`fps` is recorded, not used for timing).
    `max_pixels` applies to files (in-memory pictures are decoded already).
    """
    if isinstance(source, (str, os.PathLike)):
        return load_source(source, max_side=max_side, max_frames=max_frames, max_pixels=max_pixels)
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
