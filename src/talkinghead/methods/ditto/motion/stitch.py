"""Motion stitching: generated motion + source motion -> the keypoints that drive the warp network.

For each generated frame (a batch of frames at once) the stitcher

1. mixes the generated motion ``x_d_info`` into the source motion ``x_s_info``:
   the driven keys (`StitchConfig.use_d_keys`; image sources: expression, pose,
   translation; video sources: expression only) become, with relative driving,
   ``source + (generated - d0)`` where ``d0`` is the first generated frame (or
   the one given to `MotionStitcher.setup`); every other key stays the source's;
2. keeps the source's expression everywhere except on the lip keypoints
   (`LIP_KEYPOINTS`) and, when the eyes are driven, the eye keypoints
   (`EYE_KEYPOINTS`); with a blink clip (`StitchConfig.delta_eye_arr`) the eyes
   are instead the source's plus the clip frame due at that frame;
3. applies the per-frame / overall controls (`StitchControl`): ``vad_alpha``,
   pose offsets and scales, ``delta_exp``, then ``fade_alpha``;
4. shifts the pupils against the change of head pose (gaze fix, on with driven eyes);
5. poses the canonical keypoints, ``x = scale * (kp @ R + exp) + t``, for the
   source and the driving motion, and corrects the driving keypoints with the
   stitching network.

The release's behaviour is kept except for these deliberate departures (each tested):

* **``alpha_pitch``/``alpha_yaw``/``alpha_roll`` scale the angle in degrees.** The
  release multiplies the raw 66-bin logits (a softmax temperature, which pulls the
  angle towards the bins' centre rather than scaling it) unless a ``delta_*`` of
  the same angle is given in the same frame, in which case it scales degrees.
  Here the angle is always ``(degrees + delta) * alpha``, which is also what the
  release computes whenever a delta is present. ``StitchConfig(pose_alpha="logits")``
  restores the release's rule exactly.
* **``fade_alpha`` needs a fade target.** The release silently ignores it unless
  ``fade_type`` is ``"d0"`` or ``"s"`` (its default is ``""``, so fade-in/out does
  nothing by default). Here a ``fade_alpha`` with ``fade_type=""`` raises ValueError.
* **Faded pose keys blend degrees.** (Only when ``fade_out_keys`` names a pose key;
  the default fades ``exp`` only.) The release blends logits, or a degree value
  with logits when a pose delta is given in that frame.
* **The gaze fix of a video source measures the head turn against the frame being
  animated**, not against the first source frame as the release does (which shifts
  the pupils of a source video that turns its own head; only with
  ``drive_eye=True``, off by default for video). Image sources are unchanged.
* Inputs are never modified in place (the release scales the caller's arrays when
  ``use_d_keys`` is a dict and relative driving is off), and unknown control names
  raise instead of being ignored.

Kept on purpose: relative driving adds pose *logits* (``source + generated - d0``),
``scale`` is never driven by default, ``vad_alpha < 1`` blends the whole expression
towards the source's (only lips and eyes differ by then), ``delta_exp`` offsets all
63 expression values, and the "d0" fade target is the first frame after its controls.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from talkinghead.methods.ditto.motion.format import MOTION_KEYS, motion_to_dict
from talkinghead.models.keypoints import bin66_to_degree, transform_keypoints

LIP_KEYPOINTS: tuple[int, ...] = (6, 12, 14, 17, 19, 20)
EYE_KEYPOINTS: tuple[int, ...] = (11, 13, 15, 16, 18)
NUM_KEYPOINTS = 21
POSE_KEYS: tuple[str, ...] = ("pitch", "yaw", "roll")
IMAGE_D_KEYS: tuple[str, ...] = ("exp", "pitch", "yaw", "roll", "t")
VIDEO_D_KEYS: tuple[str, ...] = ("exp",)

# Blink insertion: open-eye gaps drawn from [60, 100] frames when not fixed.
BLINK_OPEN_RANGE = (60, 100)
# Without a known length the release plans blinks for this many frames and loops.
DEFAULT_BLINK_FRAMES = 3000

# Gaze fix: pupil shift (exp units) per degree of head turn. Pupil keypoints 11 and 15;
# the nearer/further pupil moves by different amounts depending on the turn's direction.
_GAZE_X_RATIO, _GAZE_Y_RATIO = 0.26, 0.28
_PUPIL_A, _PUPIL_B = 11, 15

ControlValue = float | torch.Tensor | np.ndarray
FadeType = Literal["", "d0", "s"]


@dataclass(frozen=True)
class StitchControl:
    """Controls for one frame, for a batch of frames, or for all frames (`StitchConfig.overall`).

    ``None`` means "not given": a frame's given values override the overall ones
    (the release's ``ctrl_info`` / ``overall_ctrl_info``). Values are scalars, or
    per-frame tensors ``[B]`` (``delta_exp``: ``[63]`` or ``[B, 63]``) when one
    control covers a batch. Mappings with the release's kwarg names are accepted
    wherever a `StitchControl` is.
    """

    delta_pitch: ControlValue | None = None  # degrees added to the angle
    delta_yaw: ControlValue | None = None
    delta_roll: ControlValue | None = None
    alpha_pitch: ControlValue | None = None  # angle scale (degrees; see module doc)
    alpha_yaw: ControlValue | None = None
    alpha_roll: ControlValue | None = None
    delta_exp: ControlValue | None = None  # added to all 63 expression values
    fade_alpha: ControlValue | None = None  # 1 = motion, 0 = the fade target
    fade_out_keys: tuple[str, ...] | None = None  # overrides StitchConfig.fade_out_keys
    vad_alpha: ControlValue | None = None  # < 1 blends the expression towards the source's

    def __post_init__(self) -> None:
        if self.fade_out_keys is not None:
            keys = (
                (self.fade_out_keys,) if isinstance(self.fade_out_keys, str) else self.fade_out_keys
            )
            object.__setattr__(self, "fade_out_keys", _check_keys(tuple(keys), "fade_out_keys"))

    @classmethod
    def coerce(cls, ctrl: StitchControl | Mapping[str, Any] | None) -> StitchControl:
        if ctrl is None:
            return cls()
        if isinstance(ctrl, cls):
            return ctrl
        if isinstance(ctrl, Mapping):
            unknown = set(ctrl) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"unknown stitch controls {sorted(unknown)}")
            return cls(**ctrl)
        raise TypeError(f"a control is a StitchControl or a mapping, got {type(ctrl).__name__}")

    def over(self, base: StitchControl) -> StitchControl:
        """These controls where given, ``base``'s elsewhere."""
        given = {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}
        return replace(base, **given)


ControlSpec = StitchControl | Mapping[str, Any] | None


@dataclass(frozen=True)
class StitchConfig:
    """Stitching settings; defaults are the release's ``MotionStitch.setup`` defaults."""

    # Driven keys: a tuple, or {key: weight} (weights scale the relative motion, or the
    # absolute motion without relative driving). None: by source type (IMAGE/VIDEO_D_KEYS).
    use_d_keys: tuple[str, ...] | Mapping[str, float] | None = None
    relative_d: bool = True
    drive_eye: bool | None = None  # None: drive the eyes for image sources only
    # One blink as expression offsets [n, 63], inserted between open-eye gaps (only with
    # driven eyes). delta_eye_open_n: -1 no blinks, 0 random gaps, > 0 fixed gap, or a
    # sequence of gaps used in turn.
    delta_eye_arr: torch.Tensor | np.ndarray | None = field(default=None, compare=False)
    delta_eye_open_n: int | tuple[int, ...] = -1
    blink_seed: int | None = 0  # seeds the random gaps (None: fresh randomness)
    fade_out_keys: tuple[str, ...] = ("exp",)
    fade_type: FadeType = ""  # "d0": fade to the first frame, "s": to the source
    flag_stitching: bool = True
    fix_gaze: bool | None = None  # None: with driven eyes (the release)
    pose_alpha: Literal["degrees", "logits"] = "degrees"  # "logits": the release's alpha_*
    overall: StitchControl = field(default_factory=StitchControl)

    def __post_init__(self) -> None:
        if self.fade_type not in ("", "d0", "s"):
            raise ValueError(f"fade_type must be '', 'd0' or 's', got {self.fade_type!r}")
        if self.pose_alpha not in ("degrees", "logits"):
            raise ValueError(f"pose_alpha must be 'degrees' or 'logits', got {self.pose_alpha!r}")
        object.__setattr__(self, "fade_out_keys", _check_keys(self.fade_out_keys, "fade_out_keys"))
        object.__setattr__(self, "overall", StitchControl.coerce(self.overall))
        if self.use_d_keys is not None:
            _check_keys(tuple(self.use_d_keys), "use_d_keys")
        if self.fade_type == "" and self.overall.fade_alpha is not None:
            raise ValueError(_FADE_WITHOUT_TARGET)
        if isinstance(self.delta_eye_open_n, Sequence):
            object.__setattr__(self, "delta_eye_open_n", tuple(self.delta_eye_open_n))


_FADE_WITHOUT_TARGET = (
    "fade_alpha has no target with fade_type '' (the release ignores it silently); "
    "set fade_type to 'd0' or 's'"
)


def _check_keys(keys: tuple[str, ...], what: str) -> tuple[str, ...]:
    unknown = [k for k in keys if k not in MOTION_KEYS]
    if unknown:
        raise ValueError(f"{what}: unknown motion keys {unknown} (known: {MOTION_KEYS})")
    return keys


def blink_schedule(
    num_frames: int,
    blink_frames: int,
    open_n: int | Sequence[int] = -1,
    rng: random.Random | None = None,
) -> list[int]:
    """Per frame, the blink-clip frame to show (0 = eyes as in clip frame 0, i.e. open).

    Blinks of ``blink_frames`` frames are separated by open gaps; the first blink
    starts after the first gap, and the last ``max(last gap, blink_frames)`` frames
    get no new blink so the video ends with open eyes. ``open_n``: -1 no blinks,
    0 gaps drawn from `BLINK_OPEN_RANGE` with ``rng``, > 0 a fixed gap, a sequence:
    gaps in turn (its first is the lead-in, its last the tail). The draw order is the
    release's, so a seeded ``rng`` reproduces its schedule.
    """
    if blink_frames < 1:
        raise ValueError(f"a blink needs at least one frame, got {blink_frames}")
    idx = [0] * num_frames
    if isinstance(open_n, bool) or not isinstance(open_n, int | Sequence):
        raise ValueError(f"open_n must be an int or a sequence of ints, got {open_n!r}")
    if isinstance(open_n, int):
        if open_n < 0:
            return idx
        gaps = [open_n] if open_n > 0 else []
    else:
        gaps = list(open_n)
    rng = rng if rng is not None else random.Random()

    def draw() -> int:
        return rng.randint(*BLINK_OPEN_RANGE)

    start = gaps[0] if gaps else draw()
    tail = gaps[-1] if gaps else draw()
    stop = num_frames - max(tail, blink_frames)
    cur, k = start, 1
    while cur < stop:
        idx[cur : cur + blink_frames] = range(blink_frames)
        if gaps:
            gap = gaps[k % len(gaps)]
            k += 1
        else:
            gap = draw()
        cur += blink_frames + gap
    return idx


Info = Mapping[str, Any] | torch.Tensor | np.ndarray


def as_motion_info(info: Info) -> dict[str, torch.Tensor]:
    """Motion dict with every value ``[B, size]``; a 265/328-dim vector is split first."""
    if not isinstance(info, Mapping):
        vec = torch.as_tensor(info)
        info = motion_to_dict(vec.reshape(1, -1) if vec.ndim == 1 else vec)
    out = {}
    for k, v in info.items():
        v = torch.as_tensor(v)
        if v.ndim == 0 or (v.ndim == 1 and k == "scale"):
            v = v.reshape(-1, 1)
        elif v.ndim == 1:
            v = v.reshape(1, -1)
        out[k] = v.reshape(v.shape[0], -1)
    return out


def _degrees(pose: torch.Tensor) -> torch.Tensor:
    """Logits [B, 66] or degrees [B] / [B, 1] -> degrees [B]."""
    deg = bin66_to_degree(pose)
    return deg.reshape(deg.shape[0], -1)[:, 0] if deg.ndim else deg.reshape(1)


def _with_degrees(info: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: _degrees(v) if k in POSE_KEYS else v for k, v in info.items()}


def _batch(info: dict[str, torch.Tensor], b: int) -> dict[str, torch.Tensor]:
    return {k: v.expand(b, *v.shape[1:]) for k, v in info.items()}


def _first(info: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v[:1].clone() for k, v in info.items()}


def _keypoint_mask(keypoints: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(NUM_KEYPOINTS, 3, dtype=like.dtype, device=like.device)
    mask[list(keypoints)] = 1
    return mask.reshape(-1)


@dataclass
class _Controls:
    """Controls resolved for a batch: one tensor per control, one row per frame."""

    delta: dict[str, torch.Tensor]  # pose key -> [B] degrees
    has_delta: dict[str, torch.Tensor]  # pose key -> [B] bool
    alpha: dict[str, torch.Tensor]  # pose key -> [B]
    delta_exp: torch.Tensor  # [B, 63]
    vad_alpha: torch.Tensor  # [B]
    fade: dict[str, torch.Tensor]  # motion key -> [B] (1 where not faded)
    any_fade: bool


def _resolve_controls(
    ctrl: ControlSpec | Sequence[ControlSpec],
    config: StitchConfig,
    b: int,
    like: torch.Tensor,
) -> _Controls:
    if ctrl is None or isinstance(ctrl, StitchControl | Mapping):
        frames = None
        single = StitchControl.coerce(ctrl).over(config.overall)
    else:
        frames = [StitchControl.coerce(c).over(config.overall) for c in ctrl]
        if len(frames) != b:
            raise ValueError(f"{len(frames)} per-frame controls for {b} frames")
    kw = {"dtype": like.dtype, "device": like.device}

    def column(name: str, default: float, width: int | None = None):
        shape = (b,) if width is None else (b, width)
        if frames is None:
            v = getattr(single, name)
            given = torch.full((b,), v is not None, device=like.device)
            t = torch.as_tensor(default if v is None else v, **kw)
            return t.expand(shape).clone(), given
        vals = [getattr(c, name) for c in frames]
        given = torch.tensor([v is not None for v in vals], device=like.device)
        tail = shape[1:]
        rows = [torch.as_tensor(default if v is None else v, **kw).expand(tail) for v in vals]
        return torch.stack(rows), given

    delta, has_delta, alpha = {}, {}, {}
    for k in POSE_KEYS:
        delta[k], has_delta[k] = column(f"delta_{k}", 0.0)
        alpha[k], _ = column(f"alpha_{k}", 1.0)
    delta_exp, _ = column("delta_exp", 0.0, 3 * NUM_KEYPOINTS)
    vad_alpha, _ = column("vad_alpha", 1.0)
    fade_alpha, fade_given = column("fade_alpha", 1.0)
    any_fade = bool(fade_given.any())
    if any_fade and config.fade_type == "":
        raise ValueError(_FADE_WITHOUT_TARGET)

    fade = {}
    if any_fade:
        per_frame_keys = [
            config.fade_out_keys if c.fade_out_keys is None else c.fade_out_keys
            for c in (frames or [single] * b)
        ]
        for k in MOTION_KEYS:
            if k == "kp":  # the canonical keypoints are the source's identity, never faded
                continue
            applies = torch.tensor([k in keys for keys in per_frame_keys], device=like.device)
            if bool((applies & fade_given).any()):
                fade[k] = torch.where(applies & fade_given, fade_alpha, torch.ones_like(fade_alpha))
    return _Controls(delta, has_delta, alpha, delta_exp, vad_alpha, fade, any_fade)


class MotionStitcher:
    """Turns generated motion into warp-network keypoints; see the module doc.

    Usage: ``setup(x_s_info, is_image, ...)`` once per source, then
    ``x_s, x_d = stitcher(x_s_info, x_d_info, frame_index, ctrl)`` for batches of
    generated frames in order. The first frame of the first call supplies ``d0``
    (unless given to `setup`) and the "d0" fade target, exactly as the release's
    first per-frame call does, so one big batch and frame-by-frame calls agree.
    """

    def __init__(self, stitch_network: nn.Module | None, config: StitchConfig | None = None):
        self.config = config or StitchConfig()
        if self.config.flag_stitching and stitch_network is None:
            raise ValueError("flag_stitching needs a stitch network")
        self.stitch_network = stitch_network
        self._ready = False

    # ------------------------------------------------------------------ setup

    def setup(
        self,
        x_s_info: Info,
        is_image: bool,
        num_frames: int | None = None,
        d0: Info | None = None,
        rng: random.Random | None = None,
    ) -> MotionStitcher:
        """Prepare for one source.

        ``x_s_info``: the (first) source frame's motion, with ``kp``. ``num_frames``:
        the length of the generated video when known (blinks are planned to leave
        its end open-eyed; unknown: `DEFAULT_BLINK_FRAMES`, looped). ``d0``: the
        reference generated frame for relative driving (the streaming pipeline
        passes the first frame of its first window; None: the first frame stitched).
        ``rng``: the blink-gap generator (default ``random.Random(config.blink_seed)``).
        """
        cfg = self.config
        self.is_image = is_image
        d_keys = cfg.use_d_keys
        if d_keys is None:
            d_keys = IMAGE_D_KEYS if is_image else VIDEO_D_KEYS
        self.d_weights: dict[str, float] | None = (
            dict(d_keys) if isinstance(d_keys, Mapping) else None
        )
        self.d_keys = tuple(d_keys)
        self.drive_eye = is_image if cfg.drive_eye is None else cfg.drive_eye
        self.fix_gaze = self.drive_eye if cfg.fix_gaze is None else cfg.fix_gaze

        x_s = as_motion_info(x_s_info)
        if "kp" not in x_s:
            raise ValueError("x_s_info needs the canonical keypoints 'kp'")
        like = x_s["exp"]
        lip, eye = _keypoint_mask(LIP_KEYPOINTS, like), _keypoint_mask(EYE_KEYPOINTS, like)
        self.blink_arr: torch.Tensor | None = None
        if self.drive_eye and cfg.delta_eye_arr is not None:
            arr = torch.as_tensor(cfg.delta_eye_arr, dtype=like.dtype, device=like.device)
            self.blink_arr = arr.reshape(-1, 3 * NUM_KEYPOINTS)
            # Lips driven; eyes = source + blink clip; the rest the source's.
            self._exp_d, self._exp_s, self._exp_blink = lip, 1 - lip, eye
        else:
            driven = lip + eye if self.drive_eye else lip
            self._exp_d, self._exp_s, self._exp_blink = driven, 1 - driven, None
        self._rng = rng if rng is not None else random.Random(cfg.blink_seed)
        self.num_frames = None
        self.set_num_frames(num_frames)

        # An image source is the same every frame: pose it once.
        self._x_s_kp = None
        self._pose_s = None
        if is_image:
            self._x_s_kp = self._transform(x_s)
            self._pose_s = (_degrees(x_s["yaw"]), _degrees(x_s["pitch"]))
        self.d0 = None if d0 is None else _first(as_motion_info(d0))
        self._fade_dst: dict[str, torch.Tensor] | None = None
        if cfg.fade_type == "s" and is_image:
            self._fade_dst = _with_degrees(_first(x_s))
        self._ready = True
        return self

    def set_num_frames(self, num_frames: int | None) -> None:
        """(Re)plan the blinks for a video of ``num_frames`` (the release's ``set_Nd``)."""
        if num_frames == self.num_frames and self.num_frames is not None:
            return
        self.num_frames = num_frames
        self.blink_index: torch.Tensor | None = None
        if self.blink_arr is not None:
            n = DEFAULT_BLINK_FRAMES if num_frames is None or num_frames < 0 else num_frames
            sched = blink_schedule(n, len(self.blink_arr), self.config.delta_eye_open_n, self._rng)
            self.blink_index = torch.tensor(sched, dtype=torch.long, device=self.blink_arr.device)

    # ------------------------------------------------------------------ per batch

    def __call__(
        self,
        x_s_info: Info,
        x_d_info: Info,
        frame_index: int | Sequence[int] | torch.Tensor,
        ctrl: ControlSpec | Sequence[ControlSpec] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints ``(x_s, x_d)``, each ``[B, 21, 3]``, for ``B`` generated frames.

        ``x_d_info``: generated motion (dict of ``[B, size]`` or vectors ``[B, 265]``).
        ``x_s_info``: the source motion, ``[1, ...]`` or per frame ``[B, ...]`` (video
        sources: the source frame shown at each generated frame). ``frame_index``: the
        first frame's index in the generated video, or one index per frame (picks the
        blink frame). ``ctrl``: one control for all B frames, or one per frame.
        """
        info, x_s = self.driving_info(x_s_info, x_d_info, frame_index, ctrl)
        b = info["exp"].shape[0]
        if self._x_s_kp is not None:
            kp_s = self._x_s_kp.expand(b, -1, -1)
        else:
            kp_s = self._transform(_batch(x_s, b))
        kp_d = self._transform(info)
        if self.config.flag_stitching:
            kp_d = self.stitch_network(kp_s, kp_d)
        return kp_s, kp_d

    def driving_info(
        self,
        x_s_info: Info,
        x_d_info: Info,
        frame_index: int | Sequence[int] | torch.Tensor,
        ctrl: ControlSpec | Sequence[ControlSpec] = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The driving motion before posing (pose in degrees, ``[B]``), and the source info."""
        if not self._ready:
            raise RuntimeError("MotionStitcher.setup() must run before stitching")
        cfg = self.config
        x_d = as_motion_info(x_d_info)
        x_s = as_motion_info(x_s_info)
        b = max(v.shape[0] for v in x_d.values())
        frames = self._frame_indices(frame_index, b)
        c = _resolve_controls(ctrl, cfg, b, x_d["exp"])

        if cfg.relative_d and self.d0 is None:
            self.d0 = _first(x_d)
        info = self._mix(x_s, x_d, b)

        exp_s = x_s["exp"]
        exp = info["exp"] * self._exp_d + exp_s * self._exp_s
        if self._exp_blink is not None:
            blink = self.blink_arr[self.blink_index[frames % len(self.blink_index)]]
            exp = exp + blink * self._exp_blink
        # vad_alpha < 1 pulls the (driven) expression back to the source's.
        vad = c.vad_alpha[:, None]
        exp = torch.where(vad < 1, exp * vad + exp_s * (1 - vad), exp)
        info["exp"] = exp + c.delta_exp

        for k in POSE_KEYS:
            deg = _degrees(info[k])
            controlled = (deg + c.delta[k]) * c.alpha[k]
            if cfg.pose_alpha == "logits" and info[k].shape[-1] == 66:
                # The release: without a delta in the frame, alpha multiplies the logits.
                via_logits = _degrees(info[k] * c.alpha[k][:, None])
                controlled = torch.where(c.has_delta[k], controlled, via_logits)
            info[k] = controlled

        if cfg.fade_type == "d0" and self._fade_dst is None:
            self._fade_dst = _first(info)
        if c.any_fade:
            dst = self._fade_dst if self._fade_dst is not None else _with_degrees(x_s)
            for k, a in c.fade.items():
                a = a.reshape(-1, *([1] * (info[k].ndim - 1)))
                info[k] = info[k] * a + dst[k] * (1 - a)

        if self.fix_gaze:
            if self._pose_s is not None:
                yaw_s, pitch_s = self._pose_s
            else:  # video: against the source frame being animated
                yaw_s, pitch_s = _degrees(x_s["yaw"]), _degrees(x_s["pitch"])
            info["exp"] = _gaze_shift(
                info["exp"],
                (info["yaw"] - yaw_s) * _GAZE_X_RATIO,
                (info["pitch"] - pitch_s) * _GAZE_Y_RATIO,
            )
        return _batch(info, b), x_s

    # ------------------------------------------------------------------ helpers

    def _mix(self, x_s: dict, x_d: dict, b: int) -> dict[str, torch.Tensor]:
        w = self.d_weights
        out = {}
        for k, s in x_s.items():
            if k not in self.d_keys or k not in x_d:
                out[k] = s
            elif self.d0 is not None:
                out[k] = s + (x_d[k] - self.d0[k]) * (w[k] if w else 1)
            else:
                out[k] = x_d[k] * w[k] if w else x_d[k]
        for k, d in x_d.items():  # generated keys the source lacks (none in practice)
            out.setdefault(k, d)
        return _batch(out, b)

    def _frame_indices(self, frame_index, b: int) -> torch.Tensor:
        device = self.blink_index.device if self.blink_index is not None else None
        if isinstance(frame_index, int):
            return torch.arange(frame_index, frame_index + b, device=device)
        idx = torch.as_tensor(frame_index, dtype=torch.long, device=device).reshape(-1)
        if idx.numel() != b:
            raise ValueError(f"{idx.numel()} frame indices for {b} frames")
        return idx

    @staticmethod
    def _transform(info: dict[str, torch.Tensor]) -> torch.Tensor:
        return transform_keypoints(
            info["kp"],
            info["pitch"],
            info["yaw"],
            info["roll"],
            info["t"],
            info["exp"],
            info["scale"],
        )


def gaze_offsets(yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
    """Expression offsets ``[B, 63]`` moving the pupils as the gaze fix does for a head turn
    of ``yaw``/``pitch`` degrees ``[B]`` (the control timeline's ``gaze``)."""
    zeros = torch.zeros(yaw.shape[0], 3 * NUM_KEYPOINTS, dtype=torch.float32)
    return _gaze_shift(zeros, yaw.float() * _GAZE_X_RATIO, pitch.float() * _GAZE_Y_RATIO)


def _gaze_shift(exp: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Move the pupil keypoints by ``dx``/``dy`` (per frame); a turn moves one pupil more."""
    exp = exp.clone()
    ax, bx = 3 * _PUPIL_A, 3 * _PUPIL_B
    right = dx > 0
    exp[:, ax] += dx * torch.where(right, 0.0007, 0.001)
    exp[:, bx] += dx * torch.where(right, 0.001, 0.0007)
    exp[:, ax + 1] -= dy * 0.001
    exp[:, bx + 1] -= dy * 0.001
    return exp
