"""DiT-Head settings: the face crop, the lower-face mask and the audio window.

`DataSettings` is everything about the data that training and inference must agree
on. Data preparation records it in ``dataset.json``, training copies it into every
checkpoint (`talkinghead.methods.dithead.checkpoint`), and generation reads it back
from there, so a trained model is always fed the way it was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from talkinghead.errors import CheckpointError
from talkinghead.face.crop import crop_transform

# The paper's audio model: a wav2vec2 CTC fine-tune with 33 output tokens.
DEFAULT_AUDIO_MODEL = "jonatasgrosman/wav2vec2-large-xlsr-53-english"


@dataclass(frozen=True)
class CropSettings:
    """The face crop: rotation-aligned square around the landmarks, ``size`` pixels."""

    size: int = 256
    scale: float = 1.6  # crop side / the landmarks' box side
    vy_ratio: float = 0.0  # centre offset along the eyes->mouth axis, in crop sides

    def transform(self, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M_o2c, M_c2o) 3x3 for landmarks in frame pixels."""
        return crop_transform(
            landmarks, dsize=self.size, scale=self.scale, vx_ratio=0.0, vy_ratio=self.vy_ratio
        )


@dataclass(frozen=True)
class MaskSettings:
    """The lower-face mask; lengths are fractions of the crop side so they scale with it."""

    cut: float = 0.7  # top edge: this far from the eyes to the mouth (nose tip ~0.75)
    chin_extend: float = 0.2  # points below the mouth also pushed down by this x eyes-mouth
    dilate: float = 0.02  # grow the hull by this x size
    blur: float = 0.06  # Gaussian kernel width x size (made odd)
    sigma: float = 0.02  # Gaussian sigma x size
    max_shift: float = 0.015  # training augmentation: random shift up to this x size

    def kernel(self, size: int) -> tuple[int, float]:
        k = max(1, round(self.blur * size))
        return k + 1 - k % 2, max(self.sigma * size, 0.1)


@dataclass(frozen=True)
class AudioSettings:
    window: int = 11  # frames t - 5 ... t + 5
    vocab_size: int = 33  # CTC tokens of the audio model, read from it when preparing

    @property
    def dim(self) -> int:
        return self.window * self.vocab_size


@dataclass(frozen=True)
class DataSettings:
    """Everything about the data that training and inference must agree on."""

    crop: CropSettings = field(default_factory=CropSettings)
    mask: MaskSettings = field(default_factory=MaskSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    min_ref_distance: int = 60  # frames between target and reference
    audio_model: str = DEFAULT_AUDIO_MODEL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSettings:
        def sub(klass, value):
            names = {f.name for f in fields(klass)}
            return klass(**{k: v for k, v in (value or {}).items() if k in names})

        return cls(
            crop=sub(CropSettings, d.get("crop")),
            mask=sub(MaskSettings, d.get("mask")),
            audio=sub(AudioSettings, d.get("audio")),
            min_ref_distance=int(d.get("min_ref_distance", 60)),
            audio_model=str(d.get("audio_model", DEFAULT_AUDIO_MODEL)),
        )


def check_audio_dim(settings: DataSettings, audio_dim: int) -> None:
    """`CheckpointError` unless the settings' audio windows are ``audio_dim`` wide."""
    if settings.audio.dim != audio_dim:
        raise CheckpointError(
            f"the data's audio windows have {settings.audio.window} x "
            f"{settings.audio.vocab_size} = {settings.audio.dim} values but the model "
            f"expects {audio_dim}"
        )


__all__ = [
    "DEFAULT_AUDIO_MODEL",
    "AudioSettings",
    "CropSettings",
    "DataSettings",
    "MaskSettings",
    "check_audio_dim",
]
