"""Ditto's own checks, run before any model is loaded or downloaded.

The checks every method shares (steps, seed, face backend, device, output, source,
audio, face) are `talkinghead.validation`'s; these are Ditto's settings
(`check_ditto_config`: emotion, crop, fades, pose, batch size, source size, and the
shared option checks), the settings that depend on the release config
(`check_release_settings`: ``blink`` needs its blink clip) and the choice of the face
check's detector. The CLI runs them in this order: option values, the output, the
source, the audio, the release settings, the face. `DittoPipeline` runs the option
and output checks itself. Every failure is a `TalkingHeadError` subclass whose
one-line message names the problem and what to do.

The face check runs the detector the generation will run when that is known
without downloading anything: the release's face models if the checkpoints are on
disk (`local_checkpoints`), else mediapipe's. Its analyser can be handed to
`DittoPipeline.from_pretrained(face_analyzer=...)` so it is built only once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from talkinghead.errors import CheckpointError, SettingsError
from talkinghead.face.types import CropConfig, FaceAnalyzer
from talkinghead.validation import (
    check_face_backend,
    check_max_size,
    check_seed,
    check_steps,
    is_int,
)

if TYPE_CHECKING:
    from talkinghead.methods.ditto.checkpoints import ReleaseCheckpoints
    from talkinghead.methods.ditto.config import DittoConfig

POSE_SETTINGS = tuple(
    f"{kind}_{axis}" for kind in ("delta", "alpha") for axis in ("pitch", "yaw", "roll")
)
EMOTION_HINT = (
    "Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise, Contempt or 0-7 (a comma list mixes them)"
)


def check_emotion(emotion: Any) -> None:
    """Any emotion `talkinghead.methods.ditto.motion.conditions.parse_emotion` accepts."""
    from talkinghead.methods.ditto.motion.conditions import parse_emotion

    try:
        parse_emotion(emotion)
    except (TypeError, ValueError):
        shown = ",".join(map(str, emotion)) if isinstance(emotion, list) else emotion
        raise SettingsError(f"unknown emotion {shown!r}: use {EMOTION_HINT}") from None


def check_crop(crop: CropConfig) -> None:
    if not (math.isfinite(crop.scale) and crop.scale > 0):
        raise SettingsError(f"crop scale must be > 0 (default 2.3), got {crop.scale!r}")
    for name in ("vx_ratio", "vy_ratio"):
        value = getattr(crop, name)
        if not math.isfinite(value):
            raise SettingsError(f"crop {name} must be a finite number, got {value!r}")


def check_ditto_config(cfg: DittoConfig) -> None:
    """Every user-facing field of a `DittoConfig` (the device is checked by `resolve_device`)."""
    check_steps(cfg.steps)
    check_seed(cfg.seed)
    check_emotion(cfg.emotion)
    check_face_backend(cfg.face_backend)
    check_crop(cfg.crop)
    for name in ("fade_in", "fade_out"):
        value = getattr(cfg, name)
        if not is_int(value) or value < 0:
            raise SettingsError(f"{name} must be a number of frames >= 0, got {value!r}")
    for name in POSE_SETTINGS:
        value = getattr(cfg, name)
        if not math.isfinite(value):
            raise SettingsError(f"{name} must be a finite number, got {value!r}")
    if cfg.online_fuse is not None and (
        not is_int(cfg.online_fuse) or not 0 <= cfg.online_fuse <= cfg.online_overlap
    ):
        raise SettingsError(
            f"online_fuse must be a number of frames in [0, online_overlap="
            f"{cfg.online_overlap}] (5: low latency), got {cfg.online_fuse!r}"
        )
    if not is_int(cfg.batch_size) or cfg.batch_size < 1:
        raise SettingsError(f"batch_size must be at least 1, got {cfg.batch_size!r}")
    check_max_size(cfg.max_size)
    check_render_runtime(cfg.runtime, cfg.device)


def check_render_runtime(runtime: str, device: str = "cpu") -> None:
    """The renderer's runtime is known and can run on `device` ("auto": checked once resolved)."""
    from talkinghead.errors import TalkingHeadError
    from talkinghead.export.runtime import RUNTIMES, check_runtime

    if device == "auto":
        if runtime not in RUNTIMES:
            raise SettingsError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        return
    try:
        check_runtime(runtime, device)
    except TalkingHeadError as exc:
        raise SettingsError(str(exc)) from None


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


def check_release_settings(
    settings: Mapping[str, Any], local: ReleaseCheckpoints | None, *, final: bool = False
) -> None:
    """`settings` over the release config generation will load, checked as
    `DittoPipeline` checks them once its models are loaded (``blink`` needs the config's
    blink clip), if that config is known without downloading: the config pkl of `local`
    checkpoints (`local_checkpoints`), or, when the pkl is absent and nothing more will
    arrive (`final`: a folder the user named, or downloading off), the defaults."""
    from talkinghead.methods.ditto.checkpoints import load_release_config
    from talkinghead.methods.ditto.config import DittoConfig, config_from_release

    if local is None:
        return
    release_cfg = load_release_config(local.config) if local.config.is_file() else None
    if release_cfg is not None:
        cfg = config_from_release(release_cfg)
    elif final:
        cfg = DittoConfig()  # what from_pretrained falls back to without a config pkl
    else:
        return  # a download may still bring the config; from_pretrained checks after it
    cfg = cfg.replace(**settings)
    cfg.stitch_config()
    check_emotion_layout(cfg, motion_conditions(local, release_cfg))


def motion_conditions(
    checkpoints: ReleaseCheckpoints, release_config: Mapping[str, Any] | None = None
) -> dict[str, bool]:
    """`ConditionConfig`'s use_* fields for the checkpoints' motion model (the release's
    flags, `motion_condition_flags`)."""
    from talkinghead.methods.ditto.checkpoints import motion_condition_flags
    from talkinghead.methods.ditto.motion.conditions import condition_layout

    return condition_layout(motion_condition_flags(checkpoints, release_config))


def check_emotion_layout(cfg: DittoConfig, conditions: Mapping[str, bool]) -> None:
    """A `SettingsError` when `cfg` asks a motion model trained without the emotion block
    for an emotion other than Neutral, or its timeline sets one (it would be ignored)."""
    import torch

    from talkinghead.methods.ditto.motion.conditions import NEUTRAL, emotion_vector, parse_emotion

    if conditions.get("use_emotion", True):
        return
    controls = getattr(cfg, "controls", None)
    if controls is not None and "emotion" in getattr(controls, "controls", ()):
        raise SettingsError(
            "the controls timeline sets emotion, but the motion model was trained without the "
            "emotion condition (use_emo off): take the emotion keys out of the timeline"
        )
    try:
        rows = parse_emotion(cfg.emotion)
    except (TypeError, ValueError):
        return  # check_ditto_config reports a malformed emotion
    if not torch.allclose(rows, emotion_vector(NEUTRAL).expand_as(rows)):
        raise SettingsError(
            "the motion model was trained without the emotion condition (use_emo off), so it "
            "cannot show an emotion: leave --emotion at Neutral, or use a model trained with it"
        )


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


__all__ = [
    "EMOTION_HINT",
    "FaceCheck",
    "check_crop",
    "check_ditto_config",
    "check_emotion",
    "check_release_settings",
    "face_check_analyzer",
    "local_checkpoints",
]
