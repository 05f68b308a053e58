"""Inputs of an evaluation: pairing files, decoding, and the frame sampling every metric shares.

Pairing: two files are one pair; two directories are paired by file stem
(``a.mp4`` with ``a.mov``), and every video on either side must have a partner.

Frames: decoded at their stored size as RGB uint8 (`talkinghead.media.source`;
odd sizes are floored to even). The pair is cut to the shorter length (and to
``max_frames``). When the sizes differ the *prediction* is resized to the
reference's size: ``cv2.INTER_AREA`` when shrinking, ``cv2.INTER_CUBIC`` when
enlarging. Per-frame metrics then use frames ``0, stride, 2 * stride, ...``.

Frame rate: SyncNet works at 25 fps; a video at another rate is resampled by
taking, for each 25 fps instant ``k / 25``, the frame shown at that time (what
ffmpeg's ``-r 25`` does by dropping/duplicating).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from talkinghead.errors import MediaError

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus"})
SYNC_FPS = 25.0


@dataclass(frozen=True)
class VideoPair:
    """One prediction and its reference (and, optionally, driving audio and identity image)."""

    name: str
    pred: Path
    ref: Path
    audio: Path | None = None
    source: Path | None = None


@dataclass
class Video:
    """Decoded frames [T, H, W, 3] RGB uint8 and the frame rate (None for a still image)."""

    frames: np.ndarray
    fps: float | None
    path: Path

    def __len__(self) -> int:
        return len(self.frames)


def _media_files(directory: Path, suffixes: frozenset[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
            if p.stem in files:
                raise MediaError(
                    f"{directory}: two files are named {p.stem!r} ({files[p.stem].name}, {p.name})"
                )
            files[p.stem] = p
    return files


def _exists(path: Path, what: str) -> Path:
    if not path.exists():
        raise MediaError(f"{path}: {what} not found")
    return path


def pair_inputs(
    pred: str | os.PathLike[str],
    ref: str | os.PathLike[str],
    audio: str | os.PathLike[str] | None = None,
    source: str | os.PathLike[str] | None = None,
) -> list[VideoPair]:
    """The pairs to evaluate; raises MediaError for a missing file or an unpaired video."""
    pred, ref = _exists(Path(pred), "prediction"), _exists(Path(ref), "reference")
    audio = _exists(Path(audio), "audio") if audio is not None else None
    source = _exists(Path(source), "source image") if source is not None else None
    if pred.is_dir() != ref.is_dir():
        raise MediaError(f"{pred} and {ref}: give two files or two directories")
    if not pred.is_dir():
        for p, what in ((audio, "audio"), (source, "source image")):
            if p is not None and p.is_dir():
                raise MediaError(f"{p}: a directory of {what}, but the prediction is one file")
        return [VideoPair(pred.stem, pred, ref, audio, source)]

    media = VIDEO_SUFFIXES | IMAGE_SUFFIXES
    preds, refs = _media_files(pred, media), _media_files(ref, media)
    if not preds:
        raise MediaError(f"{pred}: no videos in the directory")
    for a, b, side in ((preds, refs, ref), (refs, preds, pred)):
        unpaired = sorted(set(a) - set(b))
        if unpaired:
            raise MediaError(
                f"{side}: no file named {unpaired[0]!r} (+{len(unpaired) - 1} more unpaired)"
                if len(unpaired) > 1
                else f"{side}: no file named {unpaired[0]!r}"
            )
    audios = _side_files(audio, AUDIO_SUFFIXES | VIDEO_SUFFIXES, preds, "audio")
    sources = _side_files(source, IMAGE_SUFFIXES | VIDEO_SUFFIXES, preds, "source image")
    return [
        VideoPair(name, preds[name], refs[name], audios.get(name, audio), sources.get(name, source))
        for name in sorted(preds)
    ]


def _side_files(
    path: Path | None, suffixes: frozenset[str], preds: dict[str, Path], what: str
) -> dict[str, Path]:
    """A directory of per-video files paired by stem; a single file is shared by all."""
    if path is None or not path.is_dir():
        return {}
    files = _media_files(path, suffixes)
    missing = sorted(set(preds) - set(files))
    if missing:
        raise MediaError(f"{path}: no {what} named {missing[0]!r}")
    return files


def read_video(path: str | os.PathLike[str], max_frames: int | None = None) -> Video:
    """Decode a video (or an image, as one frame) at its stored size."""
    from talkinghead.media.source import load_source

    src = load_source(path, max_side=None, max_frames=max_frames)
    return Video(np.stack(src.frames), src.fps, Path(path))


def resize_to(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frames [T, H, W, 3] resized to (H, W): area filter to shrink, bicubic to enlarge."""
    h, w = frames.shape[1:3]
    if (h, w) == tuple(size):
        return frames
    interp = cv2.INTER_AREA if size[0] * size[1] < h * w else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=interp) for f in frames])


def align_pair(
    pred: Video, ref: Video, max_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(pred, ref) frames of equal count and size: cut to the shorter, pred resized to ref."""
    n = min(len(pred), len(ref))
    if max_frames is not None:
        n = min(n, max_frames)
    return resize_to(pred.frames[:n], ref.frames.shape[1:3]), ref.frames[:n]


def sample_indices(n: int, stride: int = 1) -> np.ndarray:
    """The frames per-frame metrics use: 0, stride, 2 * stride, ... < n."""
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
    return np.arange(0, n, stride)


def resample_indices(n: int, fps: float | None, target: float = SYNC_FPS) -> np.ndarray:
    """Indices of `n` frames at `fps` that give `target` fps: for each k / target, the frame then."""
    if fps is None or abs(fps - target) < 1e-3 or n == 0:
        return np.arange(n)
    count = max(int(np.floor(n / fps * target + 1e-6)), 1)
    return np.minimum(np.floor(np.arange(count) * fps / target + 1e-6).astype(int), n - 1)
