"""Checks every method's generation runs before any model is loaded or downloaded.

A typo in an option or a picture without a face should cost a second, not a 2 GB
download or minutes of sampling. These are the checks shared by all methods: the
option values every ``generate`` takes (`check_steps`, `check_seed`,
`check_face_backend`, `resolve_device`), the output (`check_output`; `check_not_an_input`:
it is none of the inputs), the source (`check_source`: exists, decodes), the audio
(`check_audio`: exists, decodes, is not empty) and the face (`check_face`); `check_inputs`
runs the file checks in that order.
A method's own settings are checked in its folder (Ditto's:
`talkinghead.methods.ditto.validation`). Every failure is a `TalkingHeadError`
subclass whose one-line message names the problem and what to do.

A shared layer: it imports media, audio, face and errors, never a method.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talkinghead.errors import MediaError, SettingsError
from talkinghead.face.types import FaceAnalyzer, FaceCrop

# Seeds every method accepts: torch generators and numpy's default_rng both take these.
MAX_SEED = 2**63 - 1


def is_int(value: Any) -> bool:
    """A whole number (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# DDIM takes at most one step per timestep of the training schedule: 1000 for Ditto's,
# DiT-Head's and DiffTalk's models (a DiT-Head trained on another length is checked
# against its checkpoint's).
MAX_STEPS = 1000


def check_steps(steps: Any, most: int = MAX_STEPS) -> None:
    if not is_int(steps) or not 1 <= steps <= most:
        raise SettingsError(
            f"steps must be a whole number from 1 to {most} (the diffusion schedule's "
            f"length), got {steps!r}"
        )


def check_seed(seed: Any) -> None:
    """None (a random seed) or 0..2^63-1."""
    if seed is not None and (not is_int(seed) or not 0 <= seed <= MAX_SEED):
        raise SettingsError(f"seed must be between 0 and 2^63-1, got {seed!r}")


# The longest source side, pixels, a run may scale to; below this no face crop is meaningful.
MIN_MAX_SIZE = 64


def check_max_size(max_size: Any) -> None:
    """None (the source as it is) or a whole number of pixels >= `MIN_MAX_SIZE`."""
    if max_size is not None and (not is_int(max_size) or max_size < MIN_MAX_SIZE):
        raise SettingsError(f"max_size must be at least {MIN_MAX_SIZE} pixels, got {max_size!r}")


def check_face_backend(backend: Any) -> None:
    """One of `talkinghead.face.BACKENDS` (the CLI's ``--face-backend`` is every method's)."""
    from talkinghead.face import BACKENDS

    if backend not in BACKENDS:
        raise SettingsError(f"unknown face backend {backend!r}: use {', '.join(BACKENDS)}")


def resolve_device(device: str) -> str:
    """The torch device to run on: ``auto`` picks CUDA when available; CUDA must be usable."""
    import torch

    name = str(device).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise SettingsError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch has no CUDA support" if torch.version.cuda is None else "no GPU"
            raise SettingsError(
                f"device {device!r}: CUDA is not available here ({why}); run on the CPU "
                "(--device cpu) or install a CUDA build of PyTorch"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise SettingsError(
                f"device {device!r}: there are {count} CUDA device(s), cuda:0..cuda:{count - 1}"
            )
    return name


def check_output(output: str | os.PathLike[str]) -> None:
    """The output can be written: a known video suffix in an existing folder, a frames
    folder, or "-". Creates nothing."""
    from talkinghead.media.writer import FramesDirWriter, open_writer

    text = os.fspath(output)
    if text == "-":
        return
    writer = open_writer(text)  # refuses unknown suffixes and unsafe frame folders; lazy
    writer.abort()
    path = Path(text).expanduser().resolve()
    if isinstance(writer, FramesDirWriter):
        folder = path  # created with its parents on demand: the nearest existing one counts
        while not folder.exists():
            folder = folder.parent
    else:
        folder = path.parent
        if not folder.is_dir():
            raise MediaError(f"{text}: the output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise MediaError(f"{text}: cannot write to {folder}; choose another output")


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def check_not_an_input(
    output: str | os.PathLike[str] | None,
    inputs: Mapping[str, Any],
    *,
    output_is_folder: bool | None = None,
) -> None:
    """Refuse an output that would overwrite or replace one of `inputs`, before any work.

    `inputs` maps what the user called each input ("--source", "VIDEOS_DIR") to its
    path; None and in-memory inputs (arrays, images) are skipped. The output is an
    input when both resolve to the same path (symlinks followed) or are one file under
    two names (hard links: the same inode). With `output_is_folder` (a frames folder,
    replaced as a whole on publishing; None: a path ending in a separator or an existing
    folder, as `open_writer` decides) no input may lie inside the output either.
    """
    if output is None or os.fspath(output) == "-":
        return
    target = _resolved(output)
    if output_is_folder is None:
        output_is_folder = os.fspath(output).endswith(("/", os.sep)) or target.is_dir()
    for name, value in inputs.items():
        if not isinstance(value, (str, os.PathLike)) or os.fspath(value) in ("", "-"):
            continue
        given = _resolved(value)
        same = given == target
        if not same and target.exists() and given.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(given, target)
        if same:
            raise MediaError(
                f"{output}: the output is the {name} input ({value}); writing it would destroy "
                "your input: choose another output"
            )
        if output_is_folder and given.is_relative_to(target):
            raise MediaError(
                f"{output}: the output folder holds the {name} input ({value}); writing it "
                "would replace your input: choose another output folder"
            )


def check_input_file(path: str | os.PathLike[str], what: str, hint: str) -> None:
    """`path` is an existing file, not a folder: the "source", "audio"... named in the
    message, with `hint` saying what to give instead."""
    path = Path(path)
    if path.is_dir():
        raise MediaError(f"{path}: the {what} is a folder, not a file; {hint}")
    if not path.exists():
        raise MediaError(f"{path}: {what} file not found")


def check_source(source: Any, max_size: int | None = 1920) -> np.ndarray:
    """The first frame of a source file (or in-memory source), RGB uint8 resized as
    registration will resize it; raises `MediaError`."""
    from talkinghead.media.source import source_media

    if isinstance(source, (str, os.PathLike)):
        check_input_file(source, "source", "give a portrait image or a video")
    return source_media(source, max_side=max_size, max_frames=1).frames[0]


def check_audio(audio: Any) -> float:
    """Seconds of speech in `audio` (a file or an in-memory array); raises `MediaError`."""
    from talkinghead.audio.io import probe_audio

    if isinstance(audio, (str, os.PathLike)):
        check_input_file(audio, "audio", "give a speech file (wav, mp3, ...)")
    return probe_audio(audio)


def check_face(frame: np.ndarray, analyzer: FaceAnalyzer, source: Any = "the source") -> FaceCrop:
    """The face of the source's first frame, as registration will find it, or `NoFaceError`."""
    from talkinghead.errors import NoFaceError

    try:
        return analyzer.analyze(frame)
    except NoFaceError as exc:
        where = source if isinstance(source, (str, os.PathLike)) else "the source"
        raise NoFaceError(
            f"{where}: {exc}; use a picture where a face is clearly visible"
        ) from None


@dataclass
class CheckedInputs:
    """What the file checks found: the source's first frame and the audio's length."""

    frame: np.ndarray
    audio_seconds: float


def check_inputs(
    source: Any, audio: Any, output: str | os.PathLike[str], *, max_size: int | None = 1920
) -> CheckedInputs:
    """Output (none of the inputs, writable), source and audio, in that order; then
    `check_face` on the returned frame (the face analyser is worth building only once the
    files are known to be fine)."""
    check_not_an_input(output, {"--source": source, "--audio": audio})  # the plainest message
    check_output(output)
    frame = check_source(source, max_size)
    return CheckedInputs(frame, check_audio(audio))


__all__ = [
    "MAX_SEED",
    "MAX_STEPS",
    "MIN_MAX_SIZE",
    "CheckedInputs",
    "check_audio",
    "check_face",
    "check_face_backend",
    "check_input_file",
    "check_inputs",
    "check_max_size",
    "check_not_an_input",
    "check_output",
    "check_seed",
    "check_source",
    "check_steps",
    "is_int",
    "resolve_device",
]
