"""A video held in memory: its frames, their rate and the audio that goes with them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class VideoClip:
    """What a pipeline gives back when asked for frames instead of a file.

    frames: uint8 [N, H, W, 3] RGB; fps: their rate; audio: float32 mono in [-1, 1] at
    ``sample_rate``. `save` writes it as `open_writer` does (a video, a folder of PNG
    frames, or "-"), through a temporary file renamed on success.
    """

    frames: np.ndarray
    fps: float
    audio: np.ndarray
    sample_rate: int

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    @property
    def seconds(self) -> float:
        return self.num_frames / float(self.fps)

    def save(self, output: str | os.PathLike[str]) -> Path:
        """Write the clip to ``output``; returns the written path ("-" for stdout)."""
        path = write_or_return(
            self.frames, output, fps=self.fps, audio=self.audio, sample_rate=self.sample_rate
        )
        assert isinstance(path, Path)
        return path


def write_or_return(
    frames: Iterable[np.ndarray],
    output: str | os.PathLike[str] | None,
    *,
    fps: float,
    audio: np.ndarray,
    sample_rate: int,
) -> Path | VideoClip:
    """A pipeline's last step: ``frames`` (read as they come) written to ``output`` with
    the audio, returning its path; ``output=None``: all of them, as a `VideoClip`."""
    from talkinghead.media.writer import open_writer

    if output is None:
        return VideoClip(np.stack(list(frames)), fps, audio, sample_rate)
    with open_writer(output, fps=fps, audio=(audio, sample_rate)) as writer:
        writer.write_batch(frames)
    path = writer.close()
    return Path(os.fspath(output)) if path is None else path


__all__ = ["VideoClip", "write_or_return"]
