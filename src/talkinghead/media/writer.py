"""Writing generated frames: an H.264 mp4 with its audio, a folder of PNGs, or raw RGB to stdout.

Every writer takes RGB uint8 frames of one size, one at a time, and streams them
out (memory does not grow with the length of the video). Files appear only when
the writer closes successfully: the video (or the frames folder) is built under a
temporary name in the target's own directory and renamed into place, so a
failure, an ``abort()`` or an exception inside the ``with`` block leaves no
partial output and never clobbers an existing file.

The release writes the video with imageio (libx264, crf 18, yuv420p) and then
muxes the input wav in with an ffmpeg command line. Here PyAV does both in one
pass, so no ffmpeg binary is needed, and the audio is cut or padded with silence
to the video's length.

Odd frame sizes: H.264 in yuv420p stores chroma at half resolution, so libx264
only accepts even widths and heights (and the bitstream cannot crop a single
pixel). `VideoWriter` pads an odd width/height by repeating the last column/row,
so such a video is one pixel wider/taller than its frames; even sizes are kept
exactly, and so are odd ones with a pixel format without chroma subsampling
(``pix_fmt="yuv444p"``). The release sidesteps this by making sources even-sized.

Audio length: mp4/mov record the AAC encoder's delay and final padding, so the
audio track lasts exactly frames / fps; Matroska (.mkv) cannot mark the padding,
so there the audio may run up to one AAC frame (1024 samples) longer.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TextIO

import numpy as np

from talkinghead.errors import MediaError
from talkinghead.filemode import temporary_sibling

# Container chosen from the output's suffix; all hold H.264 + AAC.
VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
VIDEO_SUFFIXES = frozenset(VIDEO_FORMATS)
# libx264 first (PyAV's wheels bundle it); the others are what other ffmpeg builds may offer.
H264_ENCODERS = ("libx264", "libopenh264", "h264_videotoolbox", "h264_mf")
# Tried first when the ffmpeg build has them and they open here (NVENC needs an NVIDIA GPU
# and driver): encoding then costs the CPU next to nothing.
HARDWARE_H264_ENCODERS = ("h264_nvenc",)
AAC_SAMPLE_RATES = frozenset(
    (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
)
AAC_FALLBACK_RATE = 48000
FRAME_NAME = "{:06d}.png"
_FRAME_NAME_RE = re.compile(r"^\d{6}\.png$")

Audio = tuple[np.ndarray, int]


def _check_frame(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """An RGB uint8 [H, W, 3] frame, contiguous; the same size as the first one."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 frame [H, W, 3], got {frame.dtype} {frame.shape}")
    if size is not None and frame.shape[:2] != size:
        raise ValueError(f"frame size changed from {size} to {frame.shape[:2]} (H, W)")
    return np.ascontiguousarray(frame)


class FrameWriter:
    """Shared interface: ``write``/``write_batch`` frames, then ``close()`` or ``abort()``.

    Used as a context manager, a clean exit closes (publishes the output) and an
    exception aborts (discards it) and propagates.
    """

    def __init__(self) -> None:
        self.frames_written = 0
        self.frame_size: tuple[int, int] | None = None  # (H, W) of the first frame
        self._finished = False
        self._published: Path | None = None

    def write(self, frame: np.ndarray) -> None:
        if self._finished:
            raise RuntimeError(f"{type(self).__name__} is already closed")
        frame = _check_frame(frame, self.frame_size)
        if self.frame_size is None:
            self.frame_size = (frame.shape[0], frame.shape[1])
        try:
            self._write(frame)
        except BaseException:
            # The encoder/output state is unknown now: nothing half-written may be published.
            self.abort()
            raise
        self.frames_written += 1

    def write_batch(self, frames: Iterable[np.ndarray] | np.ndarray) -> None:
        """Write [N, H, W, 3] frames (an array or any iterable of frames) in order."""
        for frame in frames:
            self.write(frame)

    def close(self) -> Path | None:
        """Finish and publish the output; returns its path (None for stdout)."""
        if self._finished:
            return self._published
        self._finished = True
        try:
            self._published = self._close()
        except BaseException:
            self._abort()
            raise
        return self._published

    def abort(self) -> None:
        """Discard everything written so far; the target is left as it was."""
        if self._finished:
            return
        self._finished = True
        self._abort()

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def accepts_yuv420(self) -> bool:
        """Whether `write_yuv420` takes frames already converted (see media/yuv.py)."""
        return False

    def write_yuv420(self, planes: np.ndarray, size: tuple[int, int]) -> None:
        """Write one frame given as I420 planes [H' * 3 // 2, W'] (`rgb_to_yuv420`'s
        layout, H' x W' the even size of `size`), `size` (H, W) the RGB frame's."""
        if not self.accepts_yuv420:
            raise TypeError(f"{type(self).__name__} takes RGB frames, not YUV 4:2:0")
        if self._finished:
            raise RuntimeError(f"{type(self).__name__} is already closed")
        size = (int(size[0]), int(size[1]))
        if self.frame_size is not None and size != self.frame_size:
            raise ValueError(f"frame size changed from {self.frame_size} to {size} (H, W)")
        self.frame_size = size
        try:
            self._write_yuv420(np.ascontiguousarray(planes), size)
        except BaseException:
            self.abort()
            raise
        self.frames_written += 1

    # -- subclass hooks --
    def _write(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def _write_yuv420(self, planes: np.ndarray, size: tuple[int, int]) -> None:
        raise NotImplementedError

    def _close(self) -> Path | None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError


def _as_mono_audio(audio: Audio) -> tuple[np.ndarray, int]:
    samples, rate = audio
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2 and samples.shape[1] == 1:
        samples = samples[:, 0]
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio samples [N] or [N, 1], got shape {samples.shape}")
    rate = int(rate)
    if rate <= 0:
        raise ValueError(f"audio sample rate must be positive, got {rate}")
    if rate not in AAC_SAMPLE_RATES:
        import soxr

        samples = soxr.resample(samples, rate, AAC_FALLBACK_RATE).astype(np.float32)
        rate = AAC_FALLBACK_RATE
    return np.ascontiguousarray(samples), rate


@functools.cache
def hardware_encoder_works(name: str) -> bool:
    """Whether `name` is in PyAV's ffmpeg build and opens here (probed once, on a tiny frame)."""
    import av

    if name not in av.codecs_available:
        return False
    try:
        ctx = av.codec.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.open()
        ctx.close()
    except Exception:  # no device, no driver, or a build without it: x264 then
        return False
    return True


def _pick_h264_encoder(hardware: bool = True) -> str:
    import av

    if hardware:
        for name in HARDWARE_H264_ENCODERS:
            if hardware_encoder_works(name):
                return name
    for name in H264_ENCODERS:
        if name in av.codecs_available:
            return name
    raise MediaError("PyAV's ffmpeg build has no H.264 encoder (libx264 expected in PyAV's wheels)")


def _chroma_alignment(pix_fmt: str) -> tuple[int, int]:
    """(x, y) multiples the frame size must have for `pix_fmt`'s chroma subsampling."""
    import av

    chroma = av.VideoFormat(pix_fmt, 4, 4).components[-1]
    return (4 // chroma.width if chroma.width else 1, 4 // chroma.height if chroma.height else 1)


class VideoWriter(FrameWriter):
    """H.264 (yuv420p) video with optional AAC audio, written with PyAV.

    `audio` is ``(samples, sample_rate)``, mono float32 in [-1, 1]. It is encoded
    alongside the frames (the streams interleave in the file) and, on close, cut
    or padded with silence to the video's duration, frames / fps. Rates AAC does
    not support are resampled to 48 kHz. Colours are converted with the BT.709
    matrix in limited range and the stream is tagged so, which is what players
    assume for untagged HD video anyway.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float = 25,
        audio: Audio | None = None,
        crf: int = 18,
        pix_fmt: str = "yuv420p",
        *,
        preset: str = "medium",
        audio_bitrate: int = 128_000,
        hardware: bool = True,
    ) -> None:
        super().__init__()
        self.hardware = hardware  # NVENC when it works here (`HARDWARE_H264_ENCODERS`)
        self.encoder: str | None = None  # the encoder chosen, once the first frame arrives
        self.encode_seconds = 0.0  # wall time spent converting and encoding frames
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_FORMATS:
            raise MediaError(
                f"{self.path}: unsupported video suffix (expected one of {', '.join(sorted(VIDEO_SUFFIXES))})"
            )
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.crf = crf
        self.pix_fmt = pix_fmt
        self.preset = preset
        self.audio_bitrate = audio_bitrate
        self._format = VIDEO_FORMATS[suffix]
        self._audio = None if audio is None else _as_mono_audio(audio)
        self._audio_pos = 0  # samples encoded so far
        self._container = None
        self._video = None
        self._audio_stream = None
        self._tmp: Path | None = None
        self._padded_size: tuple[int, int] | None = None

    def _open(self, height: int, width: int) -> None:
        import av.error

        align_x, align_y = _chroma_alignment(self.pix_fmt)
        padded = (-(-height // align_y) * align_y, -(-width // align_x) * align_x)
        self._padded_size = padded

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = temporary_sibling(self.path, self.path.suffix)
            # faststart moves the index to the front so players can start before the end arrives.
            options = {"movflags": "+faststart"} if self._format in ("mp4", "mov") else {}
            self._container = av.open(str(self._tmp), "w", format=self._format, options=options)
        except (OSError, av.error.FFmpegError) as e:
            self._discard_tmp()
            raise MediaError(f"{self.path}: cannot create the video ({e})") from e

        encoder = _pick_h264_encoder(self.hardware)
        self.encoder = encoder
        video = self._container.add_stream(encoder, rate=self.fps)
        video.width, video.height = padded[1], padded[0]
        video.pix_fmt = self.pix_fmt
        video.time_base = 1 / self.fps
        ctx = video.codec_context
        ctx.time_base = 1 / self.fps
        if encoder == "libx264":
            ctx.options = {"crf": str(self.crf), "preset": self.preset}
        elif encoder == "h264_nvenc":
            # Constant quality, NVENC's counterpart of crf.
            ctx.options = {"rc": "vbr", "cq": str(self.crf), "preset": "p4", "b": "0"}
        else:
            # Rough crf-18-like quality for encoders without crf.
            ctx.bit_rate = int(padded[0] * padded[1] * float(self.fps) * 0.2)
        self._tag_bt709(ctx)
        self._video = video

        if self._audio is not None:
            _, rate = self._audio
            stream = self._container.add_stream("aac", rate=rate)
            stream.codec_context.layout = "mono"
            stream.codec_context.format = "fltp"
            stream.codec_context.bit_rate = self.audio_bitrate
            stream.time_base = Fraction(1, rate)
            self._audio_stream = stream

    @staticmethod
    def _tag_bt709(ctx: object) -> None:
        # Older PyAV lacks these attributes; the pixels are BT.709 either way.
        for attr, value in (
            ("colorspace", 1),  # AVCOL_SPC_BT709
            ("color_primaries", 1),  # AVCOL_PRI_BT709
            ("color_trc", 1),  # AVCOL_TRC_BT709
            ("color_range", 1),  # AVCOL_RANGE_MPEG (limited)
        ):
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                setattr(ctx, attr, value)

    def _write(self, frame: np.ndarray) -> None:
        import av
        from av.video.reformatter import ColorRange, Colorspace

        if self._container is None:
            self._open(*frame.shape[:2])
        began = time.perf_counter()
        height, width = frame.shape[:2]
        ph, pw = self._padded_size
        if (ph, pw) != (height, width):
            frame = np.pad(frame, ((0, ph - height), (0, pw - width), (0, 0)), mode="edge")
        rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
        yuv = rgb.reformat(
            format=self.pix_fmt, dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
        )
        self._encode_frame(yuv, began)

    def _encode_frame(self, yuv: Any, began: float) -> None:
        yuv.pts = self.frames_written
        # Not the stream's time base: the muxer changes that when it writes the header.
        yuv.time_base = 1 / self.fps
        self._mux(self._video.encode(yuv))
        self.encode_seconds += time.perf_counter() - began
        # Keep the audio level with the video so the muxer can interleave as it goes.
        self._encode_audio_until(self.frames_written + 1)

    @property
    def accepts_yuv420(self) -> bool:
        return self.pix_fmt == "yuv420p"

    def _write_yuv420(self, planes: np.ndarray, size: tuple[int, int]) -> None:
        import av

        if self._container is None:
            self._open(*size)
        began = time.perf_counter()
        ph, pw = self._padded_size
        if planes.dtype != np.uint8 or planes.shape != (ph * 3 // 2, pw):
            raise ValueError(
                f"expected uint8 I420 planes {(ph * 3 // 2, pw)} for {size} frames, "
                f"got {planes.dtype} {planes.shape}"
            )
        yuv = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        self._encode_frame(yuv, began)

    def _encode_audio_until(self, n_frames: int, *, final: bool = False) -> None:
        if self._audio_stream is None:
            return
        import av

        samples, rate = self._audio
        end = round(n_frames * rate / self.fps)
        chunk = self._audio_stream.codec_context.frame_size or 1024
        while self._audio_pos < end and (final or end - self._audio_pos >= chunk):
            stop = min(self._audio_pos + chunk, end)
            piece = samples[self._audio_pos : stop]
            if len(piece) < stop - self._audio_pos:  # past the input's end: silence
                piece = np.pad(piece, (0, stop - self._audio_pos - len(piece)))
            aframe = av.AudioFrame.from_ndarray(piece[None, :], format="fltp", layout="mono")
            aframe.sample_rate = rate
            aframe.pts = self._audio_pos
            aframe.time_base = Fraction(1, rate)
            self._mux(self._audio_stream.encode(aframe))
            self._audio_pos = stop

    def _mux(self, packets: list) -> None:
        for packet in packets:
            self._container.mux(packet)

    def _close(self) -> Path:
        import av

        if self._container is None:
            raise MediaError(f"{self.path}: no frames were written")
        try:
            self._encode_audio_until(self.frames_written, final=True)
            self._mux(self._video.encode(None))
            if self._audio_stream is not None:
                self._mux(self._audio_stream.encode(None))
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
        except (OSError, av.error.FFmpegError) as e:
            raise MediaError(f"{self.path}: writing the video failed ({e})") from e
        self._tmp = None
        return self.path

    def _abort(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        self._discard_tmp()

    def _discard_tmp(self) -> None:
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
            self._tmp = None


class FramesDirWriter(FrameWriter):
    """One PNG per frame, ``000000.png``, ``000001.png``, ... in a directory.

    Frames go to a hidden temporary directory beside the target, renamed into
    place on close. An existing target is replaced only if it is empty or holds
    nothing but frame files from an earlier run, so pointing this at a folder
    with other files fails (before anything is written) instead of deleting them.
    Audio, if given, is ignored: PNGs have nowhere to put it.
    """

    def __init__(self, directory: str | os.PathLike[str], compress_level: int = 1) -> None:
        super().__init__()
        self.path = Path(directory)
        self.compress_level = compress_level  # zlib level: 1 is fast and still lossless
        self._check_target()
        self._tmp: Path | None = None

    def _check_target(self) -> None:
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise MediaError(f"{self.path}: exists and is not a directory")
        others = [p.name for p in self.path.iterdir() if not _FRAME_NAME_RE.match(p.name)]
        if others:
            raise MediaError(
                f"{self.path}: directory holds files other than frames (e.g. {others[0]!r}); "
                "choose a new or empty directory"
            )

    def _write(self, frame: np.ndarray) -> None:
        import cv2

        if self._tmp is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._tmp = temporary_sibling(self.path, ".tmp", directory=True)
            except OSError as e:
                raise MediaError(f"{self.path}: cannot create the frames directory ({e})") from e
        name = self._tmp / FRAME_NAME.format(self.frames_written)
        ok = cv2.imwrite(
            str(name),
            np.ascontiguousarray(frame[..., ::-1]),
            [cv2.IMWRITE_PNG_COMPRESSION, self.compress_level],
        )
        if not ok:
            raise MediaError(f"{name}: cannot write the frame")

    def _close(self) -> Path:
        if self._tmp is None:
            raise MediaError(f"{self.path}: no frames were written")
        self._check_target()  # something may have appeared there meanwhile
        old = None
        try:
            if self.path.exists():
                # Directories cannot be swapped atomically: move the old one aside first.
                old = temporary_sibling(self.path, ".old", directory=True)
                os.replace(self.path, old)
            os.replace(self._tmp, self.path)
        except OSError as e:
            if old is not None and not self.path.exists():
                os.replace(old, self.path)
                old = None
            raise MediaError(f"{self.path}: cannot publish the frames ({e})") from e
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        self._tmp = None
        return self.path

    def _abort(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class RawStdoutWriter(FrameWriter):
    """Raw rgb24 frames, back to back, to stdout (``--output -``), for piping into ffmpeg.

    The frame size is announced once on stderr, as the ffmpeg input options
    that read the stream back. Audio cannot travel in raw video and is ignored.
    Nothing can be taken back once written, so ``abort()`` only stops.
    """

    def __init__(
        self,
        fps: float = 25,
        stream: BinaryIO | None = None,
        log: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.fps = fps
        # Looked up now, not at import, so redirected/captured streams are honoured.
        self._stream = stream if stream is not None else sys.stdout.buffer
        self._log = log if log is not None else sys.stderr

    def _write(self, frame: np.ndarray) -> None:
        if self.frames_written == 0:
            height, width = frame.shape[:2]
            print(
                f"raw video: -f rawvideo -pix_fmt rgb24 -s {width}x{height} -r {self.fps}",
                file=self._log,
                flush=True,
            )
        try:
            self._stream.write(frame.tobytes())
        except BrokenPipeError as e:
            raise MediaError("stdout: the reading end of the pipe was closed") from e

    def _close(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError as e:
            raise MediaError("stdout: the reading end of the pipe was closed") from e
        return None

    def _abort(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()


def open_writer(
    output: str | os.PathLike[str],
    fps: float = 25,
    audio: Audio | None = None,
    **video_options: object,
) -> FrameWriter:
    """The writer for an output argument.

    ``"-"`` -> raw RGB to stdout; a path with a video suffix (.mp4, .m4v, .mov,
    .mkv) -> `VideoWriter` (extra keyword options go to it); an existing
    directory or a path ending in a separator -> `FramesDirWriter`.
    """
    text = os.fspath(output)
    if text == "-":
        return RawStdoutWriter(fps=fps)
    path = Path(text)
    if path.suffix.lower() in VIDEO_SUFFIXES and not path.is_dir():
        return VideoWriter(path, fps=fps, audio=audio, **video_options)
    if text.endswith(("/", os.sep)) or path.is_dir():
        return FramesDirWriter(path)
    raise MediaError(
        f"{text}: cannot tell what to write (use a {'/'.join(sorted(VIDEO_SUFFIXES))} file, "
        "a directory ending in '/', or '-' for raw frames on stdout)"
    )
