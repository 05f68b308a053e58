"""Checking a generation's settings and input files before any model is loaded or downloaded.

A typo in an option or a picture without a face should cost a second, not a 2 GB
download or minutes of motion sampling. The CLI runs these checks first, in this
order: option values (`check_ditto_config`, `resolve_device`, ...), the output
(`check_output`), the source (`check_source`: exists, decodes), the audio
(`check_audio`: exists, decodes, is not empty) and the face (`check_face`).
`DittoPipeline` runs the option and output checks itself. Every failure is a
`TalkingHeadError` subclass whose one-line message names the problem and what to do.

The face check runs the detector the generation will run when that is known
without downloading anything: the release's face models if the checkpoints are on
disk (`local_checkpoints`), else mediapipe's. Its analyser can be handed to
`DittoPipeline.from_pretrained(face_analyzer=...)` so it is built only once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from talkinghead.errors import CheckpointError, MediaError, SettingsError
from talkinghead.face.types import CropConfig, FaceAnalyzer, FaceCrop

if TYPE_CHECKING:
    from talkinghead.methods.ditto.checkpoints import ReleaseCheckpoints

# Seeds every method accepts: torch generators and numpy's default_rng both take these.
MAX_SEED = 2**63 - 1
POSE_SETTINGS = tuple(
    f"{kind}_{axis}" for kind in ("delta", "alpha") for axis in ("pitch", "yaw", "roll")
)
MIN_MAX_SIZE = 64  # longest source side, pixels; below this no face crop is meaningful
EMOTION_HINT = (
    "Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise, Contempt or 0-7 (a comma list mixes them)"
)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_steps(steps: Any) -> None:
    if not _is_int(steps) or steps < 1:
        raise SettingsError(f"steps must be a whole number of at least 1, got {steps!r}")


def check_seed(seed: Any) -> None:
    """None (a random seed) or 0..2^63-1."""
    if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
        raise SettingsError(f"seed must be between 0 and 2^63-1, got {seed!r}")


def check_emotion(emotion: Any) -> None:
    """Any emotion `talkinghead.methods.ditto.motion.conditions.parse_emotion` accepts."""
    from talkinghead.methods.ditto.motion.conditions import parse_emotion

    try:
        parse_emotion(emotion)
    except (TypeError, ValueError):
        shown = ",".join(map(str, emotion)) if isinstance(emotion, list) else emotion
        raise SettingsError(f"unknown emotion {shown!r}: use {EMOTION_HINT}") from None


def check_face_backend(backend: Any) -> None:
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


def check_crop(crop: CropConfig) -> None:
    if not (math.isfinite(crop.scale) and crop.scale > 0):
        raise SettingsError(f"crop scale must be > 0 (default 2.3), got {crop.scale!r}")
    for name in ("vx_ratio", "vy_ratio"):
        value = getattr(crop, name)
        if not math.isfinite(value):
            raise SettingsError(f"crop {name} must be a finite number, got {value!r}")


def check_ditto_config(cfg: Any) -> None:
    """Every user-facing field of a `DittoConfig` (the device is checked by `resolve_device`)."""
    check_steps(cfg.steps)
    check_seed(cfg.seed)
    check_emotion(cfg.emotion)
    check_face_backend(cfg.face_backend)
    check_crop(cfg.crop)
    for name in ("fade_in", "fade_out"):
        value = getattr(cfg, name)
        if not _is_int(value) or value < 0:
            raise SettingsError(f"{name} must be a number of frames >= 0, got {value!r}")
    for name in POSE_SETTINGS:
        value = getattr(cfg, name)
        if not math.isfinite(value):
            raise SettingsError(f"{name} must be a finite number, got {value!r}")
    if not _is_int(cfg.batch_size) or cfg.batch_size < 1:
        raise SettingsError(f"batch_size must be at least 1, got {cfg.batch_size!r}")
    if cfg.max_size is not None and (not _is_int(cfg.max_size) or cfg.max_size < MIN_MAX_SIZE):
        raise SettingsError(
            f"max_size must be at least {MIN_MAX_SIZE} pixels, got {cfg.max_size!r}"
        )


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


def check_source(source: Any, max_size: int | None = 1920) -> np.ndarray:
    """The first frame of a source file (or in-memory source), RGB uint8 resized as
    registration will resize it; raises `MediaError`."""
    from talkinghead.media.source import source_media

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise MediaError(f"{path}: source file not found")
        if path.is_dir():
            raise MediaError(f"{path}: the source is a folder; give a portrait image or a video")
    return source_media(source, max_side=max_size, max_frames=1).frames[0]


def check_audio(audio: Any) -> float:
    """Seconds of speech in `audio` (a file or an in-memory array); raises `MediaError`."""
    from talkinghead.audio.io import probe_audio

    if isinstance(audio, (str, os.PathLike)):
        path = Path(audio)
        if not path.exists():
            raise MediaError(f"{path}: audio file not found")
        if path.is_dir():
            raise MediaError(f"{path}: the audio is a folder; give a speech file (wav, mp3, ...)")
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


def local_checkpoints(
    checkpoints: str | os.PathLike[str] | None = None, **resolve_options: Any
) -> ReleaseCheckpoints | None:
    """The release checkpoints when they are on disk (the given folder or the Hub cache),
    else None; never downloads. Options go to `resolve_checkpoints` (e.g. ``revision``)."""
    from talkinghead.methods.ditto.checkpoints import resolve_checkpoints

    try:
        return resolve_checkpoints(checkpoints, download=False, strict=False, **resolve_options)
    except CheckpointError:
        return None


@dataclass
class FaceCheck:
    """The analyser the face check runs, and whether generation would build the same one."""

    analyzer: FaceAnalyzer
    same_as_generation: bool


def face_check_analyzer(
    backend: str, checkpoints: ReleaseCheckpoints | None = None, crop: CropConfig | None = None
) -> FaceCheck:
    """The face analyser for the check: `backend` with the release's face models of local
    `checkpoints` (a `ReleaseCheckpoints` or None); mediapipe when they are not on disk."""
    from talkinghead.face import create_face_analyzer
    from talkinghead.face.release_backend import has_release_files

    crop = crop or CropConfig()
    aux_dir = None if checkpoints is None else checkpoints.aux_models["hubert"].parent
    if backend == "release" and not has_release_files(aux_dir):
        # They may yet come with the download; mediapipe finds the same faces for this check.
        return FaceCheck(create_face_analyzer("mediapipe", crop=crop), False)
    # With local checkpoints, generation resolves the same folder and so the same backend.
    same = checkpoints is not None or backend == "mediapipe"
    return FaceCheck(create_face_analyzer(backend, aux_dir=aux_dir, crop=crop), same)


@dataclass
class CheckedInputs:
    """What the file checks found: the source's first frame and the audio's length."""

    frame: np.ndarray
    audio_seconds: float


def check_inputs(
    source: Any, audio: Any, output: str | os.PathLike[str], *, max_size: int | None = 1920
) -> CheckedInputs:
    """Output, source and audio, in that order; then `check_face` on the returned frame
    (the face analyser is worth building only once the files are known to be fine)."""
    check_output(output)
    frame = check_source(source, max_size)
    return CheckedInputs(frame, check_audio(audio))


__all__ = [
    "CheckedInputs",
    "FaceCheck",
    "check_audio",
    "check_crop",
    "check_ditto_config",
    "check_emotion",
    "check_face",
    "check_face_backend",
    "check_inputs",
    "check_output",
    "check_seed",
    "check_source",
    "check_steps",
    "face_check_analyzer",
    "local_checkpoints",
    "resolve_device",
]
