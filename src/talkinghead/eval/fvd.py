"""FVD: the Fréchet distance between I3D features of 16-frame clips (Unterthiner et al. 2018).

The standard I3D for FVD is the TensorFlow-Hub Kinetics-400 model of the original
FVD code; its PyTorch counterpart is the TorchScript export StyleGAN-V published
(``i3d_torchscript.pt``), which reproduces the TF features and is what the PyTorch
FVD implementations load. It carries its own code, so it is loaded with
``torch.jit.load`` rather than rebuilt here, and called as StyleGAN-V calls it:
``detector(videos, rescale=True, resize=True, return_features=True)`` on uint8-valued
float clips [N, 3, 16, H, W] (the detector rescales to [-1, 1] and resizes to
224x224 itself) -> [N, 400] logits.

Clips: non-overlapping 16-frame windows from frame 0 of each video (a shorter tail
is dropped), at the video's own frame rate; FVD is a set-level number over all
clips of all pairs, so a test set needs at least 2 clips on each side and, like
FID, many more for a stable value.
"""

from __future__ import annotations

import numpy as np
import torch

CLIP_FRAMES = 16


def clip_starts(num_frames: int, clip_frames: int = CLIP_FRAMES) -> list[int]:
    return list(range(0, num_frames - clip_frames + 1, clip_frames))


@torch.no_grad()
def i3d_features(
    detector: torch.nn.Module,
    frames: np.ndarray,
    clip_frames: int = CLIP_FRAMES,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Features [C, D] of the clips of RGB uint8 frames [T, H, W, 3]."""
    starts = clip_starts(len(frames), clip_frames)
    out = []
    for i in range(0, len(starts), batch_size):
        clips = np.stack([frames[s : s + clip_frames] for s in starts[i : i + batch_size]])
        x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float().to(device)  # [N, 3, T, H, W]
        feats = detector(x, rescale=True, resize=True, return_features=True)
        out.append(feats.double().cpu().numpy().reshape(len(clips), -1))
    return np.concatenate(out) if out else np.zeros((0, 0))
