"""LSE-D and LSE-C: lip-sync error measured with SyncNet, as Wav2Lip's evaluation scripts do.

Per video (``SyncNetInstance.evaluate`` of syncnet_python / Wav2Lip's
``SyncNetInstance_calc_scores.py``):

1. frames at 25 fps, 224x224 face crops in BGR, raw 0..255 values; audio at 16 kHz,
   MFCC [13, T_a] at 100 Hz (`talkinghead.eval.mfcc`), 4 MFCC frames per video frame;
2. ``n = min(frames, floor(samples / 640)) - 5`` windows: window ``i`` is frames
   ``i .. i+4`` and MFCC frames ``4i .. 4i+19``;
3. each video embedding is compared (``pairwise_distance``, L2 with eps 1e-6)
   with the audio embeddings 15 windows before to 15 after (zero vectors past
   either end); the distances are averaged over the video per shift;
4. LSE-D = the minimum of those 31 means, LSE-C = their median minus that minimum,
   offset = 15 - the argmin (positive: the audio comes early).

The test-set figure is the mean over videos of the per-video LSE-D and LSE-C.
Steps we skip: the reference re-encodes the crops (XVID, then JPEG) before
reading them back; we feed the crops as decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from talkinghead.eval.mfcc import syncnet_mfcc
from talkinghead.timebase import SAMPLES_PER_FRAME

VSHIFT = 15
WINDOW = 5  # video frames per window
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps
MFCC_WINDOW = 20


class SyncEmbedder(Protocol):
    """What LSE needs from SyncNet (`talkinghead.models.syncnet.SyncNet` is one)."""

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor: ...  # [N, 3, 5, H, W]

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor: ...  # [N, 1, 13, 20]


@dataclass(frozen=True)
class SyncScore:
    lse_d: float
    lse_c: float
    offset: int
    mean_dists: np.ndarray  # [2 * vshift + 1] mean distance per shift, shift -vshift first


def offset_distances(
    video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT
) -> torch.Tensor:
    """[N, 2 * vshift + 1]: distance of video window i to audio window i + k - vshift."""
    padded = F.pad(audio, (0, 0, vshift, vshift))
    span = 2 * vshift + 1
    # windows[i, k] = padded[i + k]
    idx = torch.arange(len(video))[:, None] + torch.arange(span)[None, :]
    return F.pairwise_distance(video[:, None, :].expand(-1, span, -1), padded[idx], eps=1e-6)


def score_from_embeddings(
    video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT
) -> SyncScore:
    mdist = offset_distances(video.float(), audio.float(), vshift).mean(dim=0)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return SyncScore(float(minval), float(conf), vshift - int(minidx), mdist.numpy())


def sync_windows(num_frames: int, num_samples: int) -> int:
    """How many 5-frame windows the reference scores (its range stops one short)."""
    return min(num_frames, math.floor(num_samples / SAMPLES_PER_FRAME)) - WINDOW


@torch.no_grad()
def lse(
    model: SyncEmbedder,
    crops_rgb: np.ndarray,
    audio_16k: np.ndarray,
    batch_size: int = 20,
    vshift: int = VSHIFT,
    device: str | torch.device = "cpu",
) -> SyncScore:
    """LSE of one video: 224x224 RGB face crops [T, H, W, 3] at 25 fps and its 16 kHz audio."""
    n = sync_windows(len(crops_rgb), len(audio_16k))
    if n < 1:
        raise ValueError(
            f"LSE needs at least {WINDOW + 1} frames of video and audio (0.24 s), "
            f"got {len(crops_rgb)} frames and {len(audio_16k) / 16000:.2f} s"
        )
    mfcc = torch.from_numpy(syncnet_mfcc(audio_16k)).float()  # [13, T_a]
    # BGR, as the reference reads its crops with OpenCV; [3, T, H, W], raw 0..255.
    video = torch.from_numpy(np.ascontiguousarray(crops_rgb[..., ::-1])).permute(3, 0, 1, 2)
    vfeats, afeats = [], []
    for start in range(0, n, batch_size):
        ids = range(start, min(n, start + batch_size))
        lips = torch.stack([video[:, i : i + WINDOW] for i in ids]).float().to(device)
        cc = torch.stack(
            [mfcc[None, :, i * MFCC_PER_FRAME : i * MFCC_PER_FRAME + MFCC_WINDOW] for i in ids]
        ).to(device)
        vfeats.append(model.forward_lip(lips).cpu())
        afeats.append(model.forward_aud(cc).cpu())
    return score_from_embeddings(torch.cat(vfeats), torch.cat(afeats), vshift)
