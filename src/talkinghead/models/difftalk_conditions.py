"""DiffTalk's latent conditions: smooth audio features and masked-mouth landmarks.

Audio (paper Sec. 3.2, Fig. 3): each video frame has a window of 16 steps of 20 ms
character probabilities; a strided 1-D conv encoder turns a window into one vector,
and the learnable temporal filter (Neural Voice Puppetry's attention) looks at the
vectors of the 2w + 1 = 17 frames around the current one, scores each frame from its
features, softmaxes the scores over the frames and returns the weighted sum:
a in R^{D_A}, D_A = 64.

Landmarks: the face points outside the mouth region (see
`talkinghead.methods.difftalk.features.LANDMARK_POINTS`), normalised to the crop, through an
MLP: l in R^{D_L}, D_L = 64.

The UNet cross-attends to the single token [a; l] in R^128.

Layer sizes follow the reference release (sstzal/DiffTalk): conv channels 32-32-64-64,
LeakyReLU(0.02), a score network of 5 convs (-> 16, 8, 4, 2, 1 channels) reading the
first 32 of the 64 feature channels, landmark MLP 2K -> 128 -> 64 -> 64. Differences:
the release filters 8 frames (we default to the paper's 17) and reads 29 DeepSpeech
characters (we default to wav2vec2's 32 tokens, see `talkinghead.audio.ctc`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import torch
from einops import rearrange
from torch import nn

_SLOPE = 0.02


@dataclass(frozen=True)
class DiffTalkConditionConfig:
    """Sizes of the audio and landmark encoders (defaults: the paper's)."""

    audio_feature_dim: int = 32  # characters per step (wav2vec2-base-960h; DeepSpeech: 29)
    audio_window: int = 16  # 20 ms steps per frame (a power of two)
    audio_dim: int = 64  # D_A
    smooth_radius: int = 8  # w: the filter sees 2w + 1 frames
    score_channels: int = 32  # feature channels the filter's score network reads
    num_landmarks: int = 51
    landmark_hidden: int = 128
    landmark_dim: int = 64  # D_L

    @property
    def smooth_frames(self) -> int:
        return 2 * self.smooth_radius + 1

    @property
    def context_dim(self) -> int:
        return self.audio_dim + self.landmark_dim

    def to_dict(self) -> dict:
        return asdict(self)


class AudioWindowEncoder(nn.Module):
    """One frame's window [B, window, C] -> [B, D_A]: stride-2 convs down to length 1, MLP."""

    def __init__(self, feature_dim: int = 32, window: int = 16, out_dim: int = 64) -> None:
        super().__init__()
        levels = int(math.log2(window))
        if window < 2 or 2**levels != window:
            raise ValueError(f"audio_window must be a power of two >= 2, got {window}")
        widths = [32, 32, 64, 64] + [64] * max(0, levels - 4)
        widths = widths[:levels]
        layers: list[nn.Module] = []
        c_in = feature_dim
        for c_out in widths:
            layers += [nn.Conv1d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(_SLOPE)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(c_in, 64), nn.LeakyReLU(_SLOPE), nn.Linear(64, out_dim))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        h = self.convs(rearrange(window, "b t c -> b c t"))  # [B, C', 1]
        return self.mlp(h[..., 0])


class TemporalFilter(nn.Module):
    """Attention over neighbouring frames: [B, T, D] -> [B, D] (T = 2w + 1).

    A conv stack over time scores every frame from (the first `score_channels` of) its
    features; a linear layer mixes the T scores and a softmax over frames gives the
    weights of the sum. `last_weights` keeps the most recent weights for inspection.
    """

    def __init__(self, dim: int = 64, frames: int = 17, score_channels: int = 32) -> None:
        super().__init__()
        self.frames = frames
        self.score_channels = min(score_channels, dim)
        widths = [self.score_channels, 16, 8, 4, 2, 1]
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv1d(c_in, c_out, 3, padding=1), nn.LeakyReLU(_SLOPE)]
        self.score = nn.Sequential(*layers)
        self.mix = nn.Linear(frames, frames)
        self.last_weights: torch.Tensor | None = None

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.shape[1] != self.frames:
            raise ValueError(f"expected {self.frames} frames, got {feats.shape[1]}")
        scores = self.score(rearrange(feats[..., : self.score_channels], "b t d -> b d t"))
        weights = torch.softmax(self.mix(scores[:, 0]), dim=-1)  # [B, T]
        self.last_weights = weights.detach()
        return torch.einsum("bt,btd->bd", weights, feats)


class SmoothAudioEncoder(nn.Module):
    """E_A: [B, 2w + 1, window, C] neighbouring windows -> smoothed audio feature [B, D_A]."""

    def __init__(self, config: DiffTalkConditionConfig) -> None:
        super().__init__()
        self.window = AudioWindowEncoder(
            config.audio_feature_dim, config.audio_window, config.audio_dim
        )
        self.filter = TemporalFilter(config.audio_dim, config.smooth_frames, config.score_channels)

    def per_frame(self, windows: torch.Tensor) -> torch.Tensor:
        """[B, T, window, C] -> unsmoothed per-frame features [B, T, D_A]."""
        b = windows.shape[0]
        flat = self.window(rearrange(windows, "b t w c -> (b t) w c"))
        return rearrange(flat, "(b t) d -> b t d", b=b)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.filter(self.per_frame(windows))


class LandmarkEncoder(nn.Module):
    """E_L: [B, K, 2] landmarks (mouth region left out, crop-normalised) -> [B, D_L]."""

    def __init__(self, num_landmarks: int = 51, hidden: int = 128, out_dim: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_landmarks, hidden),
            nn.LeakyReLU(_SLOPE),
            nn.Linear(hidden, out_dim),
            nn.LeakyReLU(_SLOPE),
            nn.Linear(out_dim, out_dim),
        )

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        return self.mlp(landmarks.flatten(1))


class DiffTalkConditioner(nn.Module):
    """C_l = [E_A(audio); E_L(landmarks)] as one cross-attention token [B, 1, D_A + D_L]."""

    def __init__(self, config: DiffTalkConditionConfig | None = None) -> None:
        super().__init__()
        self.config = config or DiffTalkConditionConfig()
        c = self.config
        self.audio = SmoothAudioEncoder(c)
        self.landmarks = LandmarkEncoder(c.num_landmarks, c.landmark_hidden, c.landmark_dim)

    def forward(self, audio: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """audio [B, 2w + 1, window, C], landmarks [B, K, 2] -> context [B, 1, 128]."""
        a = self.audio(audio)
        lm = self.landmarks(landmarks)
        return torch.cat([a, lm], dim=-1)[:, None, :]


__all__ = [
    "AudioWindowEncoder",
    "DiffTalkConditionConfig",
    "DiffTalkConditioner",
    "LandmarkEncoder",
    "SmoothAudioEncoder",
    "TemporalFilter",
]
