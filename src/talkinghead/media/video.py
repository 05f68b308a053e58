"""Decoding a video file frame by frame: the toolkit's one video reader (PyAV).

Every reader of videos (source portraits, the three methods' data preparation,
DiT-Head's source frames) goes through `VideoReader`, so they agree on:

* display rotation: phones store portrait video as landscape plus a display matrix;
  frames come out as they are displayed;
* the frame rate: the stream's average rate, else the guessed one (None when ffmpeg
  knows neither, and for still images read by ffmpeg's image demuxers);
* resampling to another rate (`fps=`): output frame k shows the source frame nearest
  in time to k / fps, times counted from the first frame (nearest frame, not blending);
* a damaged tail: the frames that decoded are kept (with a warning); a file where
  no frame decodes is a `MediaError`; with `strict=True` (source portraits) a decoding
  error, a frame the decoder marks corrupt or fewer frames than the header announces
  is a `MediaError` instead;
* decoded size: `max_pixels` makes the decoder itself refuse larger frames (a backstop:
  callers check `width * height` from the header before decoding);
* sizes: with `fit`, frames are shrunk by the release's rule (`media.source.fit_frame`:
  longest side <= `max_side`, both sides even); without, they are left as decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np

from talkinghead.errors import MediaError

log = logging.getLogger(__name__)


class NotAPictureError(MediaError):
    """FFmpeg cannot open the file, or it holds no picture (the message says which)."""


# ffmpeg demuxers that read text: a file only they accept has no picture to show.
TEXT_DEMUXERS = frozenset({"tty"})


def is_image_demuxer(name: str) -> bool:
    """Whether ffmpeg's demuxer `name` reads single still images (image2, png_pipe, ...)."""
    return any(part == "image2" or part.endswith("_pipe") for part in name.split(","))


def ffmpeg_reason(error: BaseException) -> str:
    """FFmpeg's own words for `error`, without the errno number and the function name."""
    return str(getattr(error, "strerror", None) or error)


def rotate_to_display(rgb: np.ndarray, degrees_ccw: float) -> np.ndarray:
    """A decoded frame turned by its display rotation (counter-clockwise, multiples of 90)."""
    k = round(degrees_ccw / 90.0) % 4
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


class VideoReader:
    """One pass over the frames of a video file (RGB uint8, display rotation applied).

    Opening reads only the header: `fps` (None if unknown or a still image),
    `is_still` (an image read by ffmpeg), `container_format`, `width` and `height` (0
    when the header does not say) and `frame_count` (the header's, 0 if unknown).
    `frames()` decodes one frame at a time and closes the file when it ends; the
    reader is single-use. `kind` names the expected content in error messages
    ("video", "image or video"). `max_pixels`: the decoder refuses larger frames.
    """

    def __init__(
        self, path: str | Path, *, kind: str = "video", max_pixels: int | None = None
    ) -> None:
        import av

        self.path = Path(path)
        self._av = av
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise NotAPictureError(
                f"{self.path}: not a readable {kind} ({ffmpeg_reason(e)})"
            ) from None
        self.container_format: str = self._container.format.name
        streams = self._container.streams.video
        if self.container_format in TEXT_DEMUXERS or not streams:
            self._container.close()
            raise NotAPictureError(
                f"{self.path}: not {'an' if kind[:1] in 'aeiou' else 'a'} {kind} "
                f"(no picture in a {self.container_format!r} file)"
            )
        self._stream = streams[0]
        self.is_still = is_image_demuxer(self.container_format)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps: float | None = float(rate) if rate and not self.is_still else None
        codec = self._stream.codec_context
        self.width, self.height = int(codec.width or 0), int(codec.height or 0)
        self.frame_count = int(self._stream.frames or 0)
        if max_pixels is not None:
            # FFmpeg's own limit, checked when the decoder opens and per frame.
            codec.options = {**codec.options, "max_pixels": str(int(max_pixels))}

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decoded(
        self, fit: bool, max_side: int | None, strict: bool = False
    ) -> Iterator[tuple[float | None, np.ndarray]]:
        """(presentation time or None, frame) per decoded frame; one for a still image."""
        from talkinghead.media.source import fit_frame  # not at import: source imports us

        av = self._av
        packets = self._container.decode(self._stream)
        what = "image" if self.is_still else "video"
        decoded = 0
        while True:
            try:
                frame = next(packets)
                if strict and frame.is_corrupt:
                    raise MediaError(
                        f"{self.path}: the {what} is damaged (frame {decoded} does not decode "
                        "cleanly); re-export or re-download it"
                    )
                rgb = rotate_to_display(frame.to_ndarray(format="rgb24"), frame.rotation or 0)
            except StopIteration:
                break
            except (av.FFmpegError, OSError, ValueError) as e:
                if not decoded:
                    raise MediaError(
                        f"{self.path}: cannot decode the {what}: it is damaged, truncated or "
                        f"not {'an image' if self.is_still else 'a video'} ({ffmpeg_reason(e)})"
                    ) from None
                if strict:
                    raise MediaError(
                        f"{self.path}: the {what} is damaged or truncated: decoding failed "
                        f"after {decoded} frames ({ffmpeg_reason(e)}); re-export or "
                        "re-download it"
                    ) from None
                log.warning("%s: decoding stopped after %d frames (%s)", self.path, decoded, e)
                break
            decoded += 1
            if fit:
                rgb = fit_frame(rgb, max_side)
            yield (None if frame.time is None else float(frame.time)), rgb
            if self.is_still:
                return
        if not decoded:
            raise MediaError(f"{self.path}: the {what} has no decodable frames")
        if strict and decoded < self.frame_count:
            raise MediaError(
                f"{self.path}: the video is truncated: {decoded} of the {self.frame_count} "
                "frames its header lists are there; re-export or re-download it"
            )

    def frames(
        self,
        *,
        fps: float | None = None,
        fit: bool = False,
        max_side: int | None = 1920,
        max_frames: int | None = None,
        strict: bool = False,
    ) -> Iterator[np.ndarray]:
        """The frames, optionally resampled to `fps`, at most `max_frames`.

        fit: shrink each frame by the release's rule (longest side <= `max_side`, None:
        no limit; both sides even). A still image gives its one frame, whatever `fps`.
        strict: a damaged or truncated file is a `MediaError` (among the frames read:
        with `max_frames`, what lies beyond them is not looked at), not a warning.
        """
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        return self._frames(fps, fit, max_side, max_frames, strict)

    def _frames(
        self,
        fps: float | None,
        fit: bool,
        max_side: int | None,
        max_frames: int | None,
        strict: bool = False,
    ) -> Iterator[np.ndarray]:
        with self:
            decoded = self._decoded(fit, max_side, strict)
            if fps is None or self.is_still:
                out: Iterator[np.ndarray] = (rgb for _, rgb in decoded)
            else:
                out = self._resampled(decoded, fps)
            yield from islice(out, max_frames)

    def _resampled(
        self, decoded: Iterator[tuple[float | None, np.ndarray]], fps: float
    ) -> Iterator[np.ndarray]:
        """Nearest frame in time: output k (at k / fps) shows the source frame whose time is
        nearest; exact midpoints go to the later frame."""
        rate = self.fps or fps  # spacing of frames without a timestamp
        k = 0
        start: float | None = None
        prev: tuple[float, np.ndarray] | None = None
        for i, (time, rgb) in enumerate(decoded):
            t = i / rate if time is None else time
            start = t if start is None else start
            t -= start
            if prev is not None:
                mid = (prev[0] + t) / 2
                while k / fps < mid:
                    yield prev[1]
                    k += 1
            prev = (t, rgb)
        if prev is None:
            return
        end = prev[0] + 1.0 / rate  # the last frame lasts one source frame
        while k / fps < end - 1e-9 or k == 0:
            yield prev[1]
            k += 1


def iter_video_frames(
    path: str | Path,
    *,
    fps: float | None = None,
    fit: bool = False,
    max_side: int | None = 1920,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """The frames of a video file, decoded one at a time (see `VideoReader.frames`)."""
    return VideoReader(path).frames(fps=fps, fit=fit, max_side=max_side, max_frames=max_frames)


__all__ = [
    "TEXT_DEMUXERS",
    "VideoReader",
    "ffmpeg_reason",
    "is_image_demuxer",
    "iter_video_frames",
    "rotate_to_display",
]
