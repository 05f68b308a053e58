"""Reading the source portrait: one image, or the frames of a video, as RGB uint8 arrays.

The kind of file is decided by its content, never its extension (the release's own
example portrait is a JPEG named `.png`): Pillow gets the first try, PyAV the second.
Frames larger than `max_side` are scaled down and both sides are made even, following
the release's rule (scale the longest side to `max_side`, round the other, then floor
both to a multiple of 2) so that video encoders that need even sizes accept the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from talkinghead.errors import MediaError

# ffmpeg demuxers that read single still images (or text); a file that only they accept
# is an image Pillow could not decode, not a video.
_TEXT_DEMUXERS = frozenset({"tty"})


def _is_image_demuxer(name: str) -> bool:
    return any(part == "image2" or part.endswith("_pipe") for part in name.split(","))


@dataclass
class SourceMedia:
    """Decoded source: `frames` are HxWx3 RGB uint8, all the same size; `fps` is None for images."""

    frames: list[np.ndarray]
    is_image: bool
    fps: float | None
    path: Path

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


def _rotate(rgb: np.ndarray, degrees_ccw: float) -> np.ndarray:
    k = round(degrees_ccw / 90.0) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def _read_video(
    path: Path, max_side: int | None, max_frames: int | None
) -> tuple[list[np.ndarray], float | None, bool]:
    """(frames, fps, is_still_image) decoded with PyAV; raises MediaError."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"{path}: not a readable image or video ({e})") from None
    with container:
        fmt = container.format.name
        if fmt in _TEXT_DEMUXERS or not container.streams.video:
            raise MediaError(f"{path}: not an image or video (no picture in a {fmt!r} file)")
        stream = container.streams.video[0]
        still = _is_image_demuxer(fmt)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate and not still else None
        limit = 1 if still else max_frames
        frames: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                if limit is not None and len(frames) >= limit:
                    break
                # Phones store portrait video as landscape plus a display matrix.
                rgb = _rotate(frame.to_ndarray(format="rgb24"), frame.rotation or 0)
                frames.append(fit_frame(rgb, max_side))
        except (av.FFmpegError, OSError, ValueError) as e:
            if not frames:
                raise MediaError(f"{path}: cannot decode ({e})") from None
            # A damaged tail: keep the frames that decoded.
    if not frames:
        raise MediaError(f"{path}: the video has no decodable frames")
    return frames, fps, still


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
