"""The control timeline: per-frame or keyframed controls for a whole generation.

A `ControlTimeline` holds keyframes, each a frame index (or a time in seconds) and
some controls; between keyframes every numeric control is interpolated (``linear``
or ``step``), and it holds its first/last value before/after them. With
``interpolation="none"`` only the keyframes' own frames get controls: that is the
release's ``ctrl_info`` (``{frame: {control: value}}`` or a list with one dict per
frame), which `ControlTimeline.coerce` accepts as it is.

Controls (the stitcher's, with the release's names, see `motion.stitch`):
``delta_pitch``/``delta_yaw``/``delta_roll`` (degrees), ``alpha_pitch``/
``alpha_yaw``/``alpha_roll`` (angle scales), ``delta_exp`` (expression offsets:
63 values, ``[21][3]``, or ``{keypoint: [dx, dy, dz]}`` for some keypoints),
``vad_alpha``, ``fade_alpha``, ``fade_out_keys`` (held, not interpolated).
And three more that this module turns into stitcher or condition values:

* ``gaze``: ``[yaw, pitch]`` degrees of eye direction, moving the pupil keypoints
  as the stitcher's gaze fix does for that much head turn;
* ``eye_open``: the eye-openness condition ``[left, right]`` (or one value for
  both) the motion model sees instead of the source's;
* ``emotion``: a label, name, list of labels or an ``[8]`` vector; keyframes are
  interpolated in the 8-dim emotion space the motion model is conditioned on.

Files are JSON or YAML (`load_controls`)::

    {"interpolation": "linear", "keyframes": [
        {"frame": 0, "delta_yaw": 0},
        {"time": 2.0, "delta_yaw": 20, "emotion": "Happy"}]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from talkinghead.errors import SettingsError
from talkinghead.methods.ditto.motion.conditions import ConditionConfig, parse_emotion
from talkinghead.methods.ditto.motion.stitch import (
    NUM_KEYPOINTS,
    StitchControl,
    gaze_offsets,
)
from talkinghead.methods.ditto.pose_controls import POSE_CONTROLS
from talkinghead.timebase import FPS

Interpolation = Literal["linear", "step", "none"]
INTERPOLATIONS: tuple[str, ...] = ("linear", "step", "none")
SCALAR_CONTROLS: tuple[str, ...] = (*POSE_CONTROLS, "vad_alpha", "fade_alpha")
VECTOR_CONTROLS: dict[str, int] = {"delta_exp": 3 * NUM_KEYPOINTS, "gaze": 2, "eye_open": 2}
CONDITION_CONTROLS: tuple[str, ...] = ("emotion", "eye_open")
CONTROLS: tuple[str, ...] = (*SCALAR_CONTROLS, *VECTOR_CONTROLS, "emotion", "fade_out_keys")
_STITCH_NAMES = (*SCALAR_CONTROLS, "delta_exp", "fade_out_keys")


def _bad(msg: str) -> SettingsError:
    return SettingsError(f"controls: {msg}")


def _delta_exp(value: Any, where: str) -> np.ndarray:
    """63 values, [21][3], or {keypoint: [dx, dy, dz]} -> [63]."""
    if isinstance(value, Mapping):
        out = np.zeros((NUM_KEYPOINTS, 3), np.float32)
        for kp, offset in value.items():
            try:
                idx = int(kp)
            except (TypeError, ValueError):
                raise _bad(f"{where}: delta_exp keypoint {kp!r} is not an index") from None
            if not 0 <= idx < NUM_KEYPOINTS:
                raise _bad(f"{where}: delta_exp keypoint {idx} is not in 0..{NUM_KEYPOINTS - 1}")
            row = np.asarray(offset, np.float32).reshape(-1)
            if row.shape != (3,):
                raise _bad(f"{where}: delta_exp keypoint {idx} needs [dx, dy, dz]")
            out[idx] = row
        return out.reshape(-1)
    arr = np.asarray(torch.as_tensor(value).detach().cpu(), np.float32).reshape(-1)
    if arr.shape != (3 * NUM_KEYPOINTS,):
        raise _bad(f"{where}: delta_exp needs 63 values, [21][3] or {{keypoint: [dx, dy, dz]}}")
    return arr


def _frame_index(frame: Any) -> int:
    """A keyframe's frame: an int >= 0 or its decimal string (JSON object keys are strings)."""
    if isinstance(frame, str) and frame.strip().isdigit():
        return int(frame)
    if isinstance(frame, (int, np.integer)) and not isinstance(frame, bool) and frame >= 0:
        return int(frame)
    raise _bad(f"keyframe frame {frame!r} is not a frame index >= 0")


def _normalise(name: str, value: Any, where: str) -> Any:
    """One control value -> the array/float/tuple the timeline interpolates."""
    if name == "fade_out_keys":
        keys = (value,) if isinstance(value, str) else tuple(value)
        try:
            StitchControl(fade_out_keys=keys)
        except ValueError as exc:
            raise _bad(f"{where}: {exc}") from None
        return keys
    if name == "emotion":
        try:
            rows = parse_emotion(value)
        except (TypeError, ValueError) as exc:
            raise _bad(f"{where}: emotion: {exc}") from None
        if rows.shape[0] != 1:
            raise _bad(f"{where}: a keyframe's emotion is one label, set or [8] vector")
        return rows[0].numpy().astype(np.float32)
    if name == "delta_exp":
        return _delta_exp(value, where)
    if name in VECTOR_CONTROLS:
        arr = np.asarray(value, np.float32).reshape(-1)
        if name == "eye_open" and arr.shape == (1,):
            arr = np.repeat(arr, 2)
        if arr.shape != (VECTOR_CONTROLS[name],):
            raise _bad(f"{where}: {name} needs {VECTOR_CONTROLS[name]} values, got {arr.size}")
        return arr
    try:
        number = float(np.asarray(torch.as_tensor(value).detach().cpu()).reshape(()))
    except (TypeError, ValueError, RuntimeError):
        raise _bad(f"{where}: {name} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise _bad(f"{where}: {name} must be finite, got {number}")
    return number


@dataclass(frozen=True)
class Keyframe:
    """Controls set at one frame of the output video."""

    frame: int
    values: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class ControlTimeline:
    """Keyframed controls; see the module doc. Build with `coerce`, `from_ctrl_info` or `load`."""

    keyframes: tuple[Keyframe, ...] = ()
    interpolation: Interpolation = "linear"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise _bad(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"not {self.interpolation!r}"
            )
        frames = [k.frame for k in self.keyframes]
        if len(set(frames)) != len(frames):
            raise _bad("two keyframes share a frame")
        object.__setattr__(self, "keyframes", tuple(sorted(self.keyframes, key=lambda k: k.frame)))
        tracks: dict[str, tuple[np.ndarray, list[Any]]] = {}
        for name in CONTROLS:
            keys = [k for k in self.keyframes if name in k.values]
            if keys:
                tracks[name] = (np.array([k.frame for k in keys]), [k.values[name] for k in keys])
        object.__setattr__(self, "_tracks", tracks)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_keyframes(
        cls,
        keyframes: Sequence[Mapping[str, Any]] | Mapping[Any, Mapping[str, Any]],
        interpolation: Interpolation = "linear",
        fps: int = FPS,
    ) -> ControlTimeline:
        """Keyframes as dicts with ``frame`` (or ``time`` in seconds) and controls,
        or ``{frame: controls}``."""
        if isinstance(keyframes, Mapping):
            items = [(frame, values) for frame, values in keyframes.items()]
        else:
            items = []
            for i, key in enumerate(keyframes):
                if not isinstance(key, Mapping):
                    raise _bad(f"keyframe {i} is not a mapping of controls")
                key = dict(key)
                if ("frame" in key) == ("time" in key):
                    raise _bad(f"keyframe {i} needs exactly one of 'frame' or 'time' (seconds)")
                frame = key.pop("frame") if "frame" in key else round(float(key.pop("time")) * fps)
                items.append((frame, key))
        out = []
        for frame, values in items:
            index = _frame_index(frame)
            where = f"frame {index}"
            if not isinstance(values, Mapping):
                raise _bad(f"{where}: controls must be a mapping, got {type(values).__name__}")
            unknown = sorted(set(values) - set(CONTROLS))
            if unknown:
                raise _bad(f"{where}: unknown controls {unknown} (known: {', '.join(CONTROLS)})")
            norm = {n: _normalise(n, v, where) for n, v in values.items() if v is not None}
            out.append(Keyframe(index, norm))
        return cls(tuple(out), interpolation)

    @classmethod
    def from_ctrl_info(
        cls, ctrl_info: Mapping[Any, Mapping[str, Any]] | Sequence[Mapping[str, Any]]
    ) -> ControlTimeline:
        """The release's ``ctrl_info``: ``{frame: ctrl_kwargs}`` or one dict per frame, as is."""
        if isinstance(ctrl_info, Mapping):
            return cls.from_keyframes(ctrl_info, interpolation="none")
        return cls.from_keyframes(dict(enumerate(ctrl_info)), interpolation="none")

    @classmethod
    def coerce(cls, controls: Any) -> ControlTimeline | None:
        """A timeline from any accepted form: a timeline, a file path, a ``{"keyframes": [...]}``
        mapping, the release's ``ctrl_info`` (dict or list), or None."""
        if controls is None or isinstance(controls, cls):
            return controls
        if isinstance(controls, (str, os.PathLike)):
            return load_controls(controls)
        if isinstance(controls, Mapping) and "keyframes" in controls:
            unknown = sorted(set(controls) - {"keyframes", "interpolation", "fps"})
            if unknown:
                raise _bad(
                    f"unknown top-level keys {unknown} (known: keyframes, interpolation, fps)"
                )
            return cls.from_keyframes(
                controls["keyframes"] or [],
                interpolation=controls.get("interpolation", "linear"),
                fps=int(controls.get("fps", FPS)),
            )
        if isinstance(controls, Mapping | list | tuple):
            return cls.from_ctrl_info(controls)
        raise _bad(
            f"expected a timeline, a file, or a ctrl_info dict/list, got {type(controls).__name__}"
        )

    # ------------------------------------------------------------------ reading

    @property
    def controls(self) -> tuple[str, ...]:
        """The controls some keyframe sets."""
        return tuple(self._tracks)  # type: ignore[attr-defined]

    @property
    def last_frame(self) -> int:
        return self.keyframes[-1].frame if self.keyframes else -1

    def track(self, name: str, frames: np.ndarray) -> list[Any]:
        """``name``'s value at each of ``frames`` (None where it is not set)."""
        tracks = self._tracks  # type: ignore[attr-defined]
        if name not in tracks:
            return [None] * len(frames)
        at, values = tracks[name]
        out: list[Any] = []
        for f in frames:
            i = int(np.searchsorted(at, f, side="right")) - 1  # last keyframe <= f
            if self.interpolation == "none":
                out.append(values[i] if i >= 0 and at[i] == f else None)
            elif i < 0:
                out.append(values[0])  # held before the first keyframe
            elif (
                self.interpolation == "step"
                or i == len(at) - 1
                or name == "fade_out_keys"
                or at[i] == f
            ):
                out.append(values[i])
            else:
                w = (f - at[i]) / (at[i + 1] - at[i])
                out.append(values[i] * (1 - w) + values[i + 1] * w)
        return out

    def stitch_controls(self, start: int, count: int) -> list[StitchControl]:
        """Per-frame stitcher controls for frames ``start .. start + count - 1``."""
        frames = np.arange(start, start + count)
        columns = {name: self.track(name, frames) for name in _STITCH_NAMES}
        gaze = self.track("gaze", frames)
        out = []
        for i in range(count):
            given = {n: col[i] for n, col in columns.items() if col[i] is not None}
            if gaze[i] is not None:
                offset = gaze_offsets(torch.tensor([gaze[i][0]]), torch.tensor([gaze[i][1]]))
                exp = given.get("delta_exp", 0.0) + offset[0].numpy()
                given["delta_exp"] = exp
            if "delta_exp" in given:
                given["delta_exp"] = torch.as_tensor(np.asarray(given["delta_exp"], np.float32))
            out.append(StitchControl(**given))
        return out

    @property
    def conditions_controlled(self) -> bool:
        return any(n in self._tracks for n in CONDITION_CONTROLS)  # type: ignore[attr-defined]

    def apply_to_conditions(
        self, cond: torch.Tensor, start: int, config: ConditionConfig
    ) -> torch.Tensor:
        """Conditions ``[N, C]`` of frames ``start ..`` with the timeline's emotion and eye
        openness written into their blocks (prefix rows, start < 0, take frame 0's)."""
        if not self.conditions_controlled:
            return cond
        frames = np.arange(start, start + cond.shape[0]).clip(min=0)
        out = cond.clone()
        for name, block in (("emotion", "emotion"), ("eye_open", "eye_open")):
            values = self.track(name, frames)
            if all(v is None for v in values):
                continue
            try:
                cols = config.block_slice(block)
            except KeyError:
                raise _bad(f"{name}: the motion model is not conditioned on {block}") from None
            for i, v in enumerate(values):
                if v is not None:
                    out[i, cols] = torch.as_tensor(v, dtype=out.dtype)
        return out


def load_controls(path: str | os.PathLike[str]) -> ControlTimeline:
    """A timeline from a JSON or YAML file (``.json``, ``.yaml``, ``.yml``)."""
    path = Path(path)
    if not path.is_file():
        raise _bad(f"{path}: file not found")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise _bad(f"{path}: a controls file is .json, .yaml or .yml")
    except (json.JSONDecodeError, ValueError) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(f"{path}: not valid JSON: {exc}") from None
    except Exception as exc:  # yaml.YAMLError; yaml is imported lazily
        raise SettingsError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        timeline = ControlTimeline.coerce(data)
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from None
    if timeline is None:
        raise SettingsError(f"{path}: the file is empty; write keyframes (see docs/ditto.md)")
    return timeline


__all__ = [
    "CONTROLS",
    "ControlTimeline",
    "Keyframe",
    "load_controls",
]
