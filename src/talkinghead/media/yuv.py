"""RGB -> YUV 4:2:0 in torch, so the conversion runs where the frames were rendered.

On a GPU the pasted frames are already on the device: converting there means half the
bytes cross to the host (1.5 per pixel instead of 3) and the encoder skips libswscale.
The matrix is the writer's: BT.709 in limited range (Y 16-235, Cb/Cr 16-240); chroma is
the mean of each 2x2 block (centre-sited). Hand-written because no library converts
torch tensors on the device; it is a 3x3 matrix and a 2x2 mean.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

KR, KB = 0.2126, 0.0722  # BT.709 luma weights of red and blue
KG = 1.0 - KR - KB


@functools.lru_cache(maxsize=8)
def _matrix(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(3x3, offset) taking RGB in 0-255 to limited-range Y, Cb, Cr; made once per device,
    not uploaded again for every batch."""
    y = torch.tensor([KR, KG, KB], dtype=torch.float64)
    cb = (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - y) / (2 * (1 - KB))
    cr = (torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) - y) / (2 * (1 - KR))
    m = torch.stack([y * 219 / 255, cb * 224 / 255, cr * 224 / 255])
    offset = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64)
    return m.to(device, torch.float32), offset.to(device, torch.float32)


def even_size(height: int, width: int) -> tuple[int, int]:
    """The frame size 4:2:0 needs: odd sides grow by one (edge pixels repeated)."""
    return height + height % 2, width + width % 2


def rgb_to_yuv420(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, H, W, 3] -> uint8 I420 [B, H' * 3 // 2, W'] on the same device.

    Each output is one frame's planes in a row: Y (H' x W'), then Cb and Cr
    (H'/2 x W'/2 each), the layout of PyAV's ``VideoFrame.from_ndarray(.., "yuv420p")``.
    H' and W' are `even_size` (H, W): an odd side is padded by repeating its edge.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 RGB frames [B, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    b, h, w, _ = frames.shape
    eh, ew = even_size(h, w)
    m, offset = _matrix(frames.device)
    rgb = frames.float()
    if (eh, ew) != (h, w):
        rgb = F.pad(rgb.permute(0, 3, 1, 2), (0, ew - w, 0, eh - h), mode="replicate")
        rgb = rgb.permute(0, 2, 3, 1)
    ycc = torch.matmul(rgb, m.T).add_(offset)  # [B, H', W', 3]
    luma = ycc[..., 0]
    # The matrix is linear: the mean of 2x2 converted pixels is the converted 2x2 mean.
    chroma = ycc[..., 1:].reshape(b, eh // 2, 2, ew // 2, 2, 2).mean(dim=(2, 4))
    out = torch.empty((b, eh * ew * 3 // 2), dtype=torch.uint8, device=frames.device)
    quarter = eh * ew // 4
    out[:, : eh * ew] = _to_uint8(luma).reshape(b, -1)
    out[:, eh * ew : eh * ew + quarter] = _to_uint8(chroma[..., 0]).reshape(b, -1)
    out[:, eh * ew + quarter :] = _to_uint8(chroma[..., 1]).reshape(b, -1)
    return out.reshape(b, eh * 3 // 2, ew)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    # Round half up, as the rest of the frame path rounds.
    return x.add(0.5).clamp_(0, 255).to(torch.uint8)
