"""Ditto's settings: `DittoConfig` (the release's defaults) and the release config import.

`DittoConfig` holds every setting of a generation; `config_from_release` maps the
``default_kwargs`` of the release's ``ditto_cfg/*.pkl`` (read by
`talkinghead.methods.ditto.checkpoints.load_release_config`) onto it. Inference reads
it, and so do the checks run before any model loads (`validation`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from talkinghead.errors import SettingsError, TalkingHeadError
from talkinghead.face.types import CropConfig
from talkinghead.methods.ditto.controls import ControlTimeline
from talkinghead.methods.ditto.motion.clipwise import ClipwiseConfig
from talkinghead.methods.ditto.motion.stitch import (
    IMAGE_D_KEYS,
    VIDEO_D_KEYS,
    StitchConfig,
    StitchControl,
)

log = logging.getLogger(__name__)

_SOURCE_INFO_KEYS = ("x_s_info_lst", "sc", "eye_open_lst", "eye_ball_lst")
_MOTION_SHAPES = {"pitch": 66, "yaw": 66, "roll": 66, "t": 3, "exp": 63, "scale": 1, "kp": 63}


@dataclass(frozen=True)
class ConditionSource:
    """Another source's registration that drives the conditions (the release's ``ch_info``).

    What the release takes from it: the motion model's conditioning frame (``x_s_info``,
    its first frame, {key: [1, size]}), the eye-openness / eye-ball / shape-code condition
    blocks (``eye_open`` [F, 2], ``eye_ball`` [F, 6], ``sc`` [63]), and its ``scale``,
    whose ratio to the animated source's scales the driven expression and head angles.
    Built by `coerce` from an `Avatar`, or from the release's source-info dict. ``mesh``
    (frame 0's face mesh, [478, 3]) feeds a use_lmk motion model's landmark block; the
    release's dict has none (the animated source's is used then).
    """

    x_s_info: dict[str, np.ndarray]
    eye_open: np.ndarray
    eye_ball: np.ndarray
    sc: np.ndarray
    mesh: np.ndarray | None = None

    @property
    def scale(self) -> float:
        return float(self.x_s_info["scale"].reshape(-1)[0])

    @classmethod
    def coerce(cls, value: Any) -> ConditionSource | str | os.PathLike[str] | None:
        """An `Avatar`-like object or the release's ``ch_info`` dict -> `ConditionSource`;
        a file path is kept as it is (the pipeline registers it); None stays None."""
        if value is None or isinstance(value, ConditionSource | str | os.PathLike):
            return value
        if hasattr(value, "x_s_info_at") and hasattr(value, "eye_open"):  # an Avatar
            mesh = getattr(value, "mesh", None)
            return cls(
                {k: np.asarray(v, np.float32) for k, v in value.x_s_info_at(0).items()},
                np.asarray(value.eye_open, np.float32).reshape(-1, 2),
                np.asarray(value.eye_ball, np.float32).reshape(-1, 6),
                np.asarray(value.sc, np.float32).reshape(-1),
                None if mesh is None else np.asarray(mesh, np.float32),
            )
        if not isinstance(value, Mapping):
            raise SettingsError(
                f"condition_source (the release's ch_info) must be a source file, an Avatar "
                f"or the release's source-info dict, not {type(value).__name__}"
            )
        missing = [k for k in _SOURCE_INFO_KEYS if k not in value]
        if missing or not value["x_s_info_lst"]:
            raise SettingsError(
                f"condition_source (the release's ch_info) lacks {', '.join(missing) or 'frames'}; "
                f"it needs {', '.join(_SOURCE_INFO_KEYS)} as the release's avatar registration makes"
            )
        first = value["x_s_info_lst"][0]
        info = {}
        for key, size in _MOTION_SHAPES.items():
            arr = np.asarray(first.get(key) if isinstance(first, Mapping) else None, np.float32)
            if arr.size != size:
                raise SettingsError(
                    f"condition_source (ch_info): x_s_info_lst[0][{key!r}] must hold {size} "
                    f"values, got shape {arr.shape}"
                )
            info[key] = arr.reshape(1, size)
        return cls(
            info,
            np.concatenate(
                [np.asarray(e, np.float32).reshape(-1, 2) for e in value["eye_open_lst"]]
            ),
            np.concatenate(
                [np.asarray(e, np.float32).reshape(-1, 6) for e in value["eye_ball_lst"]]
            ),
            np.asarray(value["sc"], np.float32).reshape(-1),
        )


@dataclass(frozen=True)
class DittoConfig:
    """Every setting of a generation; defaults are the release's (v0.4 HuBERT, offline).

    Source: ``max_size`` (longest side), ``max_source_frames`` (video sources; None:
    as many as output frames, as the release), ``crop``, ``face_backend``
    ("auto" | "mediapipe" | "release"), ``source_smooth_k`` (moving average over a
    video source's motion, frames; release: smo_k_s).
    Motion: ``steps`` (DDIM), ``overlap`` (offline windows), ``online_overlap``
    (streaming windows, the authors' 70), ``online_fuse`` (streaming cross-fade frames;
    None: the release's 10; 5 is the low-latency setting, first frame after 0.4 s of speech
    instead of 0.8 s, see `ClipwiseConfig.low_latency`), ``smooth_k``, ``fix_kp_cond`` (reset the
    conditioning frame to the source's every n windows), ``fix_kp_cond_dim`` ((start,
    end) dims that still follow the motion at a reset), ``emotion``
    (label, name, list, or [N, 8]), ``eye_f0_mode``.
    Stitching: ``stitch`` (a `StitchConfig`), pose offsets (degrees) and scales,
    ``fade_in``/``fade_out`` (frames; they fade from/to the source motion), ``blink``
    (insert blinks from the release's blink clip; None: as ``stitch`` says), ``controls``
    (a `ControlTimeline`, a JSON/YAML file, or the release's ``ctrl_info``; per frame).
    Runtime: ``seed``, ``device``, ``fp16`` (autocast the renderer on CUDA), ``runtime``
    (how warp and decoder run: "auto" (each on its fastest runtime within 1e-3 of fp32:
    on CPU the decoder on ONNX Runtime when installed, both in their polyphase inference
    forms), "torch" (the release's arithmetic exactly), "compile", "onnx", "tensorrt"; see
    `talkinghead.export.runtime`), ``device_paste`` (paste-back in torch on the device;
    None: on CUDA, where it keeps frames on the GPU, and cv2 on the CPU, where it is faster),
    ``batch_size`` (frames per warp/decode batch), ``online`` (use the streaming
    motion settings offline too), ``cache`` (reuse registered avatars).
    Release fields: ``condition_source`` (release: ch_info; another source whose
    registration conditions the motion model and whose scale, over the source's, scales
    the driven expression and angles; a file, an `Avatar` or the release's dict) and
    ``driving_frames`` (release: N_d; the planned clip length: it limits a video
    source's registered frames and, when streaming, the blink plan; offline the audio's
    length plans the blinks, as the release's inference does).
    Retargeting (LivePortrait's eye/lip MLPs on Ditto output): ``retargeting`` (path of
    a ``stitching_retargeting_module.pth``), ``eye_open_retarget`` / ``lip_open_retarget``
    (target close ratios, about 0 closed to 0.4 (eyes) / 0.8 (lips) wide open; None:
    as generated).
    """

    max_size: int = 1920
    max_source_frames: int | None = None
    crop: CropConfig = field(default_factory=CropConfig)
    face_backend: str = "auto"
    source_smooth_k: int = 13
    steps: int = 50
    overlap: int = 10
    online_overlap: int = 70
    online_fuse: int | None = None
    smooth_k: int = 3
    fix_kp_cond: int = 0
    fix_kp_cond_dim: tuple[int, int] | None = None
    motion_clip: Any = (
        None  # [2, 265] per-dim (min, max) of the motion (release: v_min_max_for_clip)
    )
    emotion: Any = 4
    eye_f0_mode: bool = False
    stitch: StitchConfig = field(default_factory=StitchConfig)
    delta_pitch: float = 0.0
    delta_yaw: float = 0.0
    delta_roll: float = 0.0
    alpha_pitch: float = 1.0
    alpha_yaw: float = 1.0
    alpha_roll: float = 1.0
    fade_in: int = 0
    fade_out: int = 0
    blink: bool | None = None
    controls: ControlTimeline | None = field(default=None, compare=False)
    seed: int | None = None
    device: str = "cpu"
    fp16: bool = False
    batch_size: int = 4
    runtime: str = "auto"
    device_paste: bool | None = None
    online: bool = False
    cache: bool = True
    condition_source: Any = field(default=None, compare=False)
    driving_frames: int | None = None
    retargeting: str | os.PathLike[str] | None = None
    eye_open_retarget: float | None = None
    lip_open_retarget: float | None = None

    def __post_init__(self) -> None:
        # Files and the release's ctrl_info dicts become a timeline once, here.
        object.__setattr__(self, "controls", ControlTimeline.coerce(self.controls))
        object.__setattr__(self, "condition_source", ConditionSource.coerce(self.condition_source))
        if self.driving_frames is not None and (
            isinstance(self.driving_frames, bool)
            or not isinstance(self.driving_frames, int | np.integer)
            or self.driving_frames < 1
        ):
            raise SettingsError(
                f"driving_frames (the release's N_d) must be a frame count >= 1 or None "
                f"(unknown), not {self.driving_frames!r}"
            )
        self._check_retargeting()
        if self.fix_kp_cond_dim is not None:
            dims = tuple(self.fix_kp_cond_dim)
            if (
                len(dims) != 2
                or not all(isinstance(d, int) for d in dims)
                or not (0 <= dims[0] < dims[1])
            ):
                raise TalkingHeadError(
                    f"fix_kp_cond_dim must be a (start, end) pair of motion dims, "
                    f"start < end, not {self.fix_kp_cond_dim!r}"
                )
            object.__setattr__(self, "fix_kp_cond_dim", (int(dims[0]), int(dims[1])))
        if not isinstance(self.source_smooth_k, int) or self.source_smooth_k < 0:
            raise TalkingHeadError(
                f"source_smooth_k must be a frame count >= 0 (<= 1: no smoothing), "
                f"not {self.source_smooth_k!r}"
            )

    def _check_retargeting(self) -> None:
        for name in ("eye_open_retarget", "lip_open_retarget"):
            value = getattr(self, name)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (0.0 <= float(value) <= 1.5)
            ):
                raise SettingsError(
                    f"{name} must be a close ratio between 0 (closed) and 1.5, not {value!r}"
                )
            if self.retargeting is None:
                raise SettingsError(
                    f"{name} needs LivePortrait's retargeting MLPs: pass retargeting= "
                    f"(--retargeting PATH) with its stitching_retargeting_module.pth"
                )
        if self.retargeting is not None and not Path(self.retargeting).is_file():
            raise SettingsError(
                f"{self.retargeting}: retargeting file not found; give the path of "
                f"LivePortrait's stitching_retargeting_module.pth"
            )

    @property
    def retargets(self) -> bool:
        """Whether an eye-open or lip-open slider is set."""
        return self.eye_open_retarget is not None or self.lip_open_retarget is not None

    def replace(self, **changes: Any) -> DittoConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown Ditto settings: {', '.join(unknown)}")
        return replace(self, **changes)

    def clipwise(self, streaming: bool, seq_frames: int = 80) -> ClipwiseConfig:
        common = {
            "seq_frames": seq_frames,
            "smooth_kernel": self.smooth_k,
            "fix_cond_every": self.fix_kp_cond,
            "fix_cond_keep": self.fix_kp_cond_dim,
        }
        if streaming or self.online:
            return ClipwiseConfig.release_online(
                overlap=self.online_overlap, fuse_frames=self.online_fuse, **common
            )
        return ClipwiseConfig(overlap=self.overlap, **common)

    def stitch_config(
        self, source_scale: float | None = None, is_image: bool = True
    ) -> StitchConfig:
        """The stitcher's settings; with ``source_scale`` (the animated source's first-frame
        scale) and a registered `condition_source`, the driven expression and angles are
        weighted by condition scale / source scale, as the release does with ch_info."""
        cfg = self._stitch_config()
        cond = self.condition_source
        if source_scale is None or not isinstance(cond, ConditionSource):
            return cfg
        ratio = cond.scale / float(source_scale)
        if ratio == 1:
            return cfg
        keys = cfg.use_d_keys
        if keys is None:
            keys = IMAGE_D_KEYS if is_image else VIDEO_D_KEYS
        weights = dict(keys) if isinstance(keys, Mapping) else dict.fromkeys(keys, 1.0)
        scaled = {
            k: w * ratio if k in ("exp", "pitch", "yaw", "roll") else w for k, w in weights.items()
        }
        return replace(cfg, use_d_keys=scaled)

    def _stitch_config(self) -> StitchConfig:
        overall = StitchControl(
            **{
                name: value
                for name, value, neutral in (
                    ("delta_pitch", self.delta_pitch, 0.0),
                    ("delta_yaw", self.delta_yaw, 0.0),
                    ("delta_roll", self.delta_roll, 0.0),
                    ("alpha_pitch", self.alpha_pitch, 1.0),
                    ("alpha_yaw", self.alpha_yaw, 1.0),
                    ("alpha_roll", self.alpha_roll, 1.0),
                )
                if value != neutral
            }
        )
        cfg = replace(self.stitch, overall=overall.over(self.stitch.overall))
        if self.blink is not None:
            if self.blink and cfg.delta_eye_arr is None:
                raise TalkingHeadError(
                    "blink needs a blink clip (delta_eye_arr), which comes with the release's "
                    "ditto_cfg/v0.4_hubert_cfg_pytorch.pkl; none was found"
                )
            # 0: random open-eye gaps of 60-100 frames between blinks (the release's default).
            cfg = replace(cfg, delta_eye_open_n=0 if self.blink else -1)
        if (self.fade_in > 0 or self.fade_out > 0) and cfg.fade_type == "":
            # The release's fades silently do nothing with its default fade_type "";
            # fading from/to the source's own motion is what a fade-in/out means.
            cfg = replace(cfg, fade_type="s")
        return cfg


# The release's default_kwargs (ditto_cfg/*.pkl) -> our settings.
_RELEASE_KEYS = {
    "max_size": "max_size",
    "emo": "emotion",
    "eye_f0_mode": "eye_f0_mode",
    "overlap_v2": "overlap",
    "fix_kp_cond": "fix_kp_cond",
    "sampling_timesteps": "steps",
    "smo_k_d": "smooth_k",
    "v_min_max_for_clip": "motion_clip",
}
_RELEASE_STITCH_KEYS = (
    "use_d_keys",
    "relative_d",
    "drive_eye",
    "delta_eye_arr",
    "delta_eye_open_n",
    "fade_type",
    "fade_out_keys",
    "flag_stitching",
)


def config_from_release(cfg: Mapping[str, Any], base: DittoConfig | None = None) -> DittoConfig:
    """Our settings from a release config (the dict `load_release_config` returns).

    Keys of its ``default_kwargs`` that have no counterpart here are logged and ignored.
    """
    base = base or DittoConfig()
    kwargs = dict(cfg.get("default_kwargs") or {})
    changes: dict[str, Any] = {}
    stitch: dict[str, Any] = {}
    crop: dict[str, Any] = {}
    for key, value in kwargs.items():
        if value is None and key not in ("drive_eye", "use_d_keys", "delta_eye_arr"):
            continue
        if key == "fix_kp_cond_dim":
            changes["fix_kp_cond_dim"] = tuple(int(d) for d in value)
        elif key == "smo_k_s":
            changes["source_smooth_k"] = int(value)
        elif key in _RELEASE_KEYS:
            changes[_RELEASE_KEYS[key]] = value
        elif key in _RELEASE_STITCH_KEYS:
            stitch[key] = tuple(value) if key == "fade_out_keys" else value
        elif key == "online_mode":
            changes["online"] = bool(value)
        elif key == "template_n_frames":
            changes["max_source_frames"] = int(value) if int(value) > 0 else None
        elif key in ("crop_scale", "crop_vx_ratio", "crop_vy_ratio", "crop_flag_do_rot"):
            crop[{"crop_flag_do_rot": "rotate"}.get(key, key.removeprefix("crop_"))] = value
        elif key == "overall_ctrl_info":
            stitch["overall"] = StitchControl.coerce(value or None)
        elif key == "ctrl_info":
            changes["controls"] = ControlTimeline.from_ctrl_info(value) if value else None
        elif key == "ch_info":
            changes["condition_source"] = value
        elif key == "N_d":
            changes["driving_frames"] = int(value) if int(value) > 0 else None
        else:
            log.info("release setting %s=%r has no counterpart here; ignored", key, value)
    if changes.get("online") and "overlap" in changes:
        changes["online_overlap"] = changes.pop("overlap")
    if crop:
        changes["crop"] = replace(base.crop, **crop)
    if stitch:
        changes["stitch"] = replace(base.stitch, **stitch)
    return base.replace(**changes)


__all__ = ["ConditionSource", "DittoConfig", "config_from_release"]
