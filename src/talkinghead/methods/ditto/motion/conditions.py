"""Per-frame conditions of Ditto's motion model.

Every frame's condition is the concatenation, in this order, of

=========  ====  =====================================================
block      size  source
=========  ====  =====================================================
audio      1024  HuBERT features, one row per 40 ms video frame
emotion       8  softmax of 8 x multi-hot labels (or a given [N, 8])
eye open      2  left/right eye openness of the source frame
eye ball      6  left/right iris offset of the source frame
shape        63  canonical keypoints of the first source frame
landmarks  1434  the first source frame's MediaPipe face mesh (478 x 3)
=========  ====  =====================================================

1103 dims with the v0.4 defaults, which leave the landmark block out (the
release trains with it only under ``use_lmk``, and its inference never builds
it). Each block can be resized or switched off (`ConditionConfig`), e.g. for
the 1059-dim condition the release's motion model class defaults to.

Source attributes follow the output frame index: eye sequences of a video
source are looped back and forth (0 1 2 2 1 0 0 1 ...), an image source (one
frame) or ``eye_first_frame`` repeats the first frame; per-frame emotions loop
forwards (0 1 2 0 1 2 ...), as in the release. Negative frame indices (the
zero-audio prefix of streaming) use frame 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from talkinghead.face.eyes import eye_attributes_from_landmarks as eye_attributes_from_landmarks

# Eye attributes belong to the face layer; re-exported here for the condition builder's users.
from talkinghead.media.source import mirror_index

EMOTIONS: tuple[str, ...] = (
    "Angry",
    "Disgust",
    "Fear",
    "Happy",
    "Neutral",
    "Sad",
    "Surprise",
    "Contempt",
)
NEUTRAL = EMOTIONS.index("Neutral")  # 4, the release's default emotion

EmotionLabel = int | str
EmotionSpec = (
    EmotionLabel
    | Iterable[EmotionLabel]
    | Sequence[EmotionLabel | Iterable[EmotionLabel]]
    | torch.Tensor
    | np.ndarray
)


@dataclass(frozen=True)
class ConditionConfig:
    """Layout of the per-frame condition; defaults are the release's v0.4 values (1103 dims)."""

    audio_dim: int = 1024
    use_emotion: bool = True
    use_eye_open: bool = True
    use_eye_ball: bool = True
    use_shape: bool = True
    use_landmarks: bool = False  # train-motion --use-lmk (the release's use_lmk)
    emotion_dim: int = len(EMOTIONS)
    eye_open_dim: int = 2
    eye_ball_dim: int = 6
    shape_dim: int = 63
    landmarks_dim: int = 478 * 3  # normalised x, y, z of each point, flattened
    # Video sources: repeat the first frame's eye state instead of looping the video's.
    eye_first_frame: bool = False
    # Logit given to each chosen emotion label before the softmax.
    emotion_logit: float = 8.0

    @property
    def blocks(self) -> tuple[tuple[str, int], ...]:
        """(name, size) of each block in condition order."""
        out = [("audio", self.audio_dim)]
        if self.use_emotion:
            out.append(("emotion", self.emotion_dim))
        if self.use_eye_open:
            out.append(("eye_open", self.eye_open_dim))
        if self.use_eye_ball:
            out.append(("eye_ball", self.eye_ball_dim))
        if self.use_shape:
            out.append(("shape", self.shape_dim))
        if self.use_landmarks:
            out.append(("landmarks", self.landmarks_dim))
        return tuple(out)

    @property
    def dim(self) -> int:
        return sum(size for _, size in self.blocks)

    def block_slice(self, name: str) -> slice:
        offset = 0
        for block, size in self.blocks:
            if block == name:
                return slice(offset, offset + size)
            offset += size
        raise KeyError(f"condition block {name!r} is not in use")


# The release's audio2motion_cfg flag (also train-motion's option) -> ConditionConfig field.
RELEASE_CONDITION_FLAGS: dict[str, str] = {
    "use_emo": "use_emotion",
    "use_eye_open": "use_eye_open",
    "use_eye_ball": "use_eye_ball",
    "use_sc": "use_shape",
    "use_lmk": "use_landmarks",
}


def condition_layout(flags: Mapping[str, object]) -> dict[str, bool]:
    """`ConditionConfig` fields from the release's flags (``use_emo``, ``use_sc``, ...): the
    blocks a motion model was trained with. A flag left out keeps its block (the release's
    layout); unknown keys are refused, so a misspelt flag cannot drop a block unnoticed."""
    unknown = sorted(set(flags) - set(RELEASE_CONDITION_FLAGS))
    if unknown:
        raise ValueError(
            f"unknown condition flags {unknown}; expected {list(RELEASE_CONDITION_FLAGS)}"
        )
    return {RELEASE_CONDITION_FLAGS[k]: bool(v) for k, v in flags.items()}


# ---------------------------------------------------------------------------- emotion


def emotion_index(label: EmotionLabel) -> int:
    """An emotion label (index or case-insensitive name) -> index into `EMOTIONS`."""
    if isinstance(label, str):
        names = [e.lower() for e in EMOTIONS]
        if label.lower() not in names:
            raise ValueError(f"unknown emotion {label!r}; expected one of {', '.join(EMOTIONS)}")
        return names.index(label.lower())
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise TypeError(f"emotion labels are ints or names, got {label!r}")
    if not 0 <= int(label) < len(EMOTIONS):
        raise ValueError(f"emotion index {label} out of range 0..{len(EMOTIONS) - 1}")
    return int(label)


def emotion_vector(
    labels: EmotionLabel | Iterable[EmotionLabel], logit: float = 8.0
) -> torch.Tensor:
    """One label or a set of labels -> [8] soft emotion vector.

    Each chosen label gets ``logit`` (8 in the release), the rest 0, then a
    softmax: one label gives ~0.9976 on it, k labels share the mass equally.
    """
    if isinstance(labels, (str, int, np.integer)):
        labels = [labels]
    idx = sorted({emotion_index(label) for label in labels})
    if not idx:
        raise ValueError("empty emotion label set")
    logits = torch.zeros(len(EMOTIONS), dtype=torch.float64)
    logits[idx] = logit
    return torch.softmax(logits, 0).float()


def _is_label(x: object) -> bool:
    return isinstance(x, (str, int, np.integer)) and not isinstance(x, bool)


def parse_emotion(emotion: EmotionSpec, logit: float = 8.0) -> torch.Tensor:
    """Any accepted emotion spec -> [M, 8] rows (M = 1 for a constant emotion).

    * ``4`` or ``"Neutral"``: one label;
    * ``{3, 4}``, ``[3, 4]``, ``("Happy", "Neutral")``: one mixed emotion;
    * ``[[4], [3, 4], 3, ...]`` (a list whose items are lists or labels, with at
      least one list) or a 1-D integer array: one entry per frame;
    * a float array / tensor [M, 8]: used as given.

    A plain list of ints is a *set* of labels, as in the release; wrap items
    (``[[4], [3]]``) or pass an integer array for per-frame labels.
    """
    if isinstance(emotion, (torch.Tensor, np.ndarray)):
        arr = torch.as_tensor(emotion)
        if arr.ndim == 1 and not arr.is_floating_point():
            return torch.stack([emotion_vector(int(i), logit) for i in arr.tolist()])
        if arr.ndim == 2 and arr.shape[1] == len(EMOTIONS):
            return arr.float()
        if arr.ndim == 1 and arr.shape[0] == len(EMOTIONS):
            return arr.float()[None]
        raise ValueError(f"emotion arrays are [M, 8] or integer labels [M], got {tuple(arr.shape)}")
    if _is_label(emotion):
        return emotion_vector(emotion, logit)[None]
    if isinstance(emotion, (set, frozenset)):
        return emotion_vector(emotion, logit)[None]
    if isinstance(emotion, Sequence):
        items = list(emotion)
        if not items:
            raise ValueError("empty emotion list")
        if all(_is_label(i) for i in items):
            return emotion_vector(items, logit)[None]
        return torch.stack([emotion_vector(i, logit) for i in items])
    raise TypeError(f"unsupported emotion spec {type(emotion).__name__}")


# ---------------------------------------------------------------------------- indexing


def _frame_indices(start: int, n: int) -> torch.Tensor:
    # Prefix frames (negative indices) take the first frame's attributes.
    return torch.arange(start, start + n).clamp_min(0)


# ---------------------------------------------------------------------------- source attributes


def _as_float(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()


def shape_code_from_keypoints(kp: torch.Tensor | np.ndarray, dim: int = 63) -> torch.Tensor:
    """Canonical keypoints of the source ([63], [21, 3], [1, 63] or per frame [F, ...]) -> [dim].

    The release uses the first source frame's keypoints, before any smoothing.
    """
    kp = _as_float(kp)
    if kp.numel() != dim:
        kp = kp[0]
    if kp.numel() != dim:
        raise ValueError(f"cannot read a {dim}-dim shape code from keypoints {tuple(kp.shape)}")
    return kp.reshape(dim)


# ---------------------------------------------------------------------------- builder


class ConditionBuilder:
    """Assembles ``[N, cond_dim]`` conditions from audio features and the source's attributes.

    Args:
        config: block layout (release defaults: 1103 dims).
        emotion: any `parse_emotion` spec; default Neutral.
        eye_open: [F, 2] per source frame (F = 1 for an image).
        eye_ball: [F, 6] per source frame.
        shape_code: [63] or the source keypoints (see `shape_code_from_keypoints`).
        landmarks: [478, 3] (or flattened) face mesh of the first source frame on its crop.
    """

    def __init__(
        self,
        config: ConditionConfig | None = None,
        *,
        emotion: EmotionSpec = NEUTRAL,
        eye_open: torch.Tensor | np.ndarray | None = None,
        eye_ball: torch.Tensor | np.ndarray | None = None,
        shape_code: torch.Tensor | np.ndarray | None = None,
        landmarks: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        self.config = cfg = config or ConditionConfig()
        self.emotion = self.eye_open = self.eye_ball = self.shape_code = self.landmarks = None
        if cfg.use_emotion:
            self.emotion = parse_emotion(emotion, cfg.emotion_logit)
            self._check("emotion", self.emotion, cfg.emotion_dim)
        if cfg.use_eye_open:
            self.eye_open = self._per_frame("eye_open", eye_open, cfg.eye_open_dim)
        if cfg.use_eye_ball:
            self.eye_ball = self._per_frame("eye_ball", eye_ball, cfg.eye_ball_dim)
        if cfg.use_shape:
            if shape_code is None:
                raise ValueError("the condition uses a shape code; pass shape_code")
            self.shape_code = shape_code_from_keypoints(shape_code, cfg.shape_dim)
        if cfg.use_landmarks:
            if landmarks is None:
                raise ValueError("the condition uses the source's face mesh; pass landmarks")
            mesh = _as_float(landmarks)
            if mesh.numel() != cfg.landmarks_dim:
                raise ValueError(
                    f"landmarks must have {cfg.landmarks_dim} values (478 x 3), "
                    f"got {tuple(mesh.shape)}"
                )
            self.landmarks = mesh.reshape(-1)

    @staticmethod
    def _check(name: str, value: torch.Tensor, dim: int) -> None:
        if value.ndim != 2 or value.shape[1] != dim or value.shape[0] == 0:
            raise ValueError(f"{name} must be [F>=1, {dim}], got {tuple(value.shape)}")

    def _per_frame(self, name: str, value: object, dim: int) -> torch.Tensor:
        if value is None:
            raise ValueError(f"the condition uses {name}; pass it (one row per source frame)")
        value = _as_float(value)  # type: ignore[arg-type]
        if value.ndim == 1:
            value = value[None]
        self._check(name, value, dim)
        return value

    def _source_rows(self, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.config.eye_first_frame:
            return table[torch.zeros_like(idx)]
        return table[mirror_index(torch.as_tensor(idx), table.shape[0])]

    def extras(self, start: int, n: int) -> torch.Tensor:
        """The non-audio part ``[n, cond_dim - audio_dim]`` of frames ``start .. start + n - 1``."""
        idx = _frame_indices(start, n)
        parts = []
        if self.emotion is not None:
            parts.append(self.emotion[idx % self.emotion.shape[0]])
        if self.eye_open is not None:
            parts.append(self._source_rows(self.eye_open, idx))
        if self.eye_ball is not None:
            parts.append(self._source_rows(self.eye_ball, idx))
        if self.shape_code is not None:
            parts.append(self.shape_code.expand(n, -1))
        if self.landmarks is not None:
            parts.append(self.landmarks.expand(n, -1))
        if not parts:
            return torch.zeros(n, 0)
        return torch.cat(parts, -1)

    def __call__(self, audio: torch.Tensor | np.ndarray, start: int = 0) -> torch.Tensor:
        """Audio features ``[N, audio_dim]`` of frames ``start ..`` -> conditions ``[N, cond_dim]``.

        ``start`` is the index of the first row in the output video; streaming
        passes its running frame count, and a negative start marks prefix rows.
        """
        audio_t = audio if isinstance(audio, torch.Tensor) else torch.from_numpy(np.asarray(audio))
        if audio_t.ndim != 2 or audio_t.shape[1] != self.config.audio_dim:
            raise ValueError(
                f"audio features must be [N, {self.config.audio_dim}], got {tuple(audio_t.shape)}"
            )
        dtype = audio_t.dtype if audio_t.is_floating_point() else torch.float32
        extras = self.extras(start, audio_t.shape[0]).to(device=audio_t.device, dtype=dtype)
        return torch.cat([audio_t.to(dtype), extras], -1)
