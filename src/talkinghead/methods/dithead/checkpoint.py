"""DiT-Head's checkpoint format: file names, writing and reading the networks.

Training (`talkinghead.methods.dithead.train`) writes, and generation
(`talkinghead.methods.dithead.pipeline`) reads, one folder::

    vq_full.pt  vq_masked.pt  dit.pt   (+ optionally wav2vec2/, rife/, lpips/)

Each ``.pt`` is a ``torch.save`` dict with ``format = "talkinghead.dithead"``, its
``kind`` ("vq" or "dit"), the network's config, its weights and the data settings
it was trained with (`DataSettings`: crop, mask, audio window, audio model), so
inference preprocesses the same way; ``step`` and, for ``--resume``, ``train_state``
(optimisers, raw weights next to the EMA). The DiT checkpoint also stores
``latent_scale`` (one over the standard deviation of the full-face latents) and
``n_timestep`` (the diffusion schedule's length).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from talkinghead.errors import CheckpointError
from talkinghead.methods.dithead.config import DataSettings
from talkinghead.models.dithead_dit import DiTConfig, DiTHead
from talkinghead.models.dithead_vqgan import VQGANConfig, VQModel
from talkinghead.models.loading import read_payload, save_atomically

CHECKPOINT_FORMAT = "talkinghead.dithead"
VQ_FILES = {"full": "vq_full.pt", "masked": "vq_masked.pt"}
DIT_FILE = "dit.pt"


def save_checkpoint(
    path: Path,
    kind: str,
    model: torch.nn.Module,
    *,
    data: DataSettings,
    step: int = 0,
    state_dict: dict[str, torch.Tensor] | None = None,
    **extra: Any,
) -> Path:
    """Write a DiT-Head checkpoint atomically (``kind``: "vq" or "dit")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in (state_dict or model.state_dict()).items()},
        "data": data.to_dict(),
        "step": int(step),
        **extra,
    }
    return save_atomically(payload, path)


def read_checkpoint(path: Path, kind: str) -> dict[str, Any]:
    """The raw checkpoint dict; `CheckpointError` when missing or not a ``kind`` checkpoint."""
    path = Path(path)
    payload = read_payload(
        path,
        CHECKPOINT_FORMAT,
        missing="DiT-Head checkpoint not found",
        foreign="not a DiT-Head checkpoint",
    )
    if payload.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {payload.get('kind')!r} network, not {kind!r}")
    return payload


def load_checkpoint(
    path: Path, kind: str, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(network in eval mode, checkpoint metadata) for a "vq" or "dit" checkpoint."""
    payload = read_checkpoint(path, kind)
    if kind == "vq":
        model: torch.nn.Module = VQModel(VQGANConfig.from_dict(payload["config"]))
    else:
        model = DiTHead(DiTConfig.from_dict(payload["config"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the stored config ({e})") from None
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "train_state")}
    meta["data"] = DataSettings.from_dict(payload.get("data") or {})
    return model.to(device).eval(), meta


def load_vq_pair(
    vq_dir: Path, device: str | torch.device = "cpu"
) -> tuple[VQModel, VQModel, dict[str, Any]]:
    """(full-face VQGAN, masked-face VQGAN, the full one's metadata) from ``vq_dir``."""
    full, meta = load_checkpoint(Path(vq_dir) / VQ_FILES["full"], "vq", device)
    masked, _meta_m = load_checkpoint(Path(vq_dir) / VQ_FILES["masked"], "vq", device)
    if full.latent_shape(64, 64) != masked.latent_shape(64, 64):
        raise CheckpointError(
            f"{vq_dir}: the full-face and masked-face VQGANs have different latent shapes"
        )
    return full, masked, meta  # type: ignore[return-value]


__all__ = [
    "CHECKPOINT_FORMAT",
    "DIT_FILE",
    "VQ_FILES",
    "load_checkpoint",
    "load_vq_pair",
    "read_checkpoint",
    "save_checkpoint",
]
