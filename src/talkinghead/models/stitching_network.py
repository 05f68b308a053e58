"""LivePortrait's stitching network: corrects driving keypoints so the animated head pastes back seamlessly.

An MLP reads the flattened source and driving keypoints and predicts a per-keypoint
offset (3 * num_kp values) plus one shared x/y shift (2 values) for the driving ones.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


class StitchingNetwork(nn.Module):
    """(kp_source, kp_driving) [B, num_kp, 3] each -> corrected kp_driving [B, num_kp, 3].

    Defaults are the release's (21 keypoints: 126 inputs, 65 outputs). Layers are
    `mlp.{0,2,4,6}` (ReLU in between), the checkpoint's names.
    """

    def __init__(
        self,
        input_size: int = 126,
        hidden_sizes: Sequence[int] = (128, 128, 64),
        output_size: int = 65,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        sizes = [input_size, *hidden_sizes]
        for d_in, d_out in itertools.pairwise(sizes):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], output_size))
        self.mlp = nn.Sequential(*layers)
        self.input_size = input_size
        self.output_size = output_size

    def delta(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """The raw MLP output [B, output_size]."""
        b = kp_source.shape[0]
        return self.mlp(torch.cat([kp_source.reshape(b, -1), kp_driving.reshape(b, -1)], dim=1))

    def forward(self, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        b, num_kp = kp_driving.shape[:2]
        n = 3 * num_kp
        if not torch.jit.is_tracing() and self.output_size < n + 2:
            raise ValueError(f"output_size {self.output_size} < 3 * num_kp + 2 = {n + 2}")
        delta = self.delta(kp_source, kp_driving)
        out = kp_driving + delta[:, :n].reshape(b, num_kp, 3)
        shift_xy = delta[:, n : n + 2].reshape(b, 1, 2)
        # Out of place: the caller's tensors stay untouched (the release clones for this).
        return torch.cat([out[..., :2] + shift_xy, out[..., 2:]], dim=-1)
