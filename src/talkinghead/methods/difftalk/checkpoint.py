"""DiffTalk's checkpoint format: writing it (training) and loading it (inference).

A checkpoint directory (written by `talkinghead train-difftalk`) holds::

    difftalk.json      {"format", "resolution", "autoencoder", "ldm", "data": {...}}
    autoencoder.pt     {"format", "kind": "autoencoder", "config", "state_dict", ...}
    ldm.pt             {"format", "kind": "ldm", "config", "state_dict", ...}
    wav2vec2/          optional: the CTC model the audio features come from

``--checkpoints`` may name such a directory or a parent holding ``difftalk_256/`` and/or
``difftalk_512/`` (chosen by ``resolution``). ``train`` writes with `save_component` and
`write_manifest`, ``pipeline`` reads with `load_difftalk`; neither imports the other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from talkinghead.errors import CheckpointError
from talkinghead.filemode import write_text_atomically
from talkinghead.models.difftalk_autoencoder import DiffTalkAutoencoder, DiffTalkAutoencoderConfig
from talkinghead.models.difftalk_unet import DiffTalkLDM, DiffTalkLDMConfig
from talkinghead.models.loading import read_payload, save_atomically

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "talkinghead-difftalk"
CHECKPOINT_VERSION = 1
MANIFEST_NAME = "difftalk.json"
AUTOENCODER_FILE = "autoencoder.pt"
LDM_FILE = "ldm.pt"
RESOLUTIONS = (256, 512)


def save_component(
    path: Path, kind: str, module: nn.Module, config: Mapping[str, Any], **extra: Any
) -> Path:
    """Write one network (`kind` "autoencoder" or "ldm") atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": kind,
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        **extra,
    }
    return save_atomically(payload, path)


def read_component(path: Path, kind: str) -> dict[str, Any]:
    """The payload `save_component` wrote, checked to be a DiffTalk `kind`."""
    path = Path(path)
    payload = read_payload(
        path,
        CHECKPOINT_FORMAT,
        missing=f"DiffTalk {kind} checkpoint not found",
        foreign="not a talkinghead DiffTalk checkpoint",
    )
    if payload.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a DiffTalk {payload.get('kind')!r}, not the {kind}")
    return payload


def _load_state(module: nn.Module, payload: dict[str, Any], path: Path) -> None:
    try:
        module.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not fit the stored config ({e})") from None


def load_autoencoder(path: Path, device: str | torch.device = "cpu") -> DiffTalkAutoencoder:
    payload = read_component(path, "autoencoder")
    model = DiffTalkAutoencoder(DiffTalkAutoencoderConfig.from_dict(payload["config"]))
    _load_state(model, payload, Path(path))
    return model.to(device).eval()


def load_ldm(path: Path, device: str | torch.device = "cpu") -> tuple[DiffTalkLDM, dict[str, Any]]:
    """The denoiser with its condition encoders, and the checkpoint's other fields."""
    payload = read_component(path, "ldm")
    model = DiffTalkLDM(DiffTalkLDMConfig.from_dict(payload["config"]))
    _load_state(model, payload, Path(path))
    extra = {k: v for k, v in payload.items() if k not in ("state_dict", "config")}
    return model.to(device).eval(), extra


def write_manifest(directory: Path, resolution: int, data: Mapping[str, Any]) -> Path:
    """`difftalk.json`: what inference needs besides the weights."""
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "resolution": int(resolution),
        "autoencoder": AUTOENCODER_FILE,
        "ldm": LDM_FILE,
        "data": dict(data),
    }
    return write_text_atomically(Path(directory) / MANIFEST_NAME, json.dumps(manifest, indent=1))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a DiffTalk checkpoint manifest")
    return data


def resolve_checkpoint_dir(checkpoints: Path, resolution: int | None = None) -> Path:
    """The directory holding `difftalk.json` for `resolution` (see the module docstring)."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        raise CheckpointError(f"{checkpoints}: checkpoint directory not found")
    candidates = [checkpoints]
    for res in [resolution] if resolution else RESOLUTIONS:
        candidates += [checkpoints / f"difftalk_{res}", checkpoints / "difftalk" / str(res)]
    for d in candidates:
        path = d / MANIFEST_NAME
        if not path.is_file():
            continue
        manifest = _read_json(path)
        if resolution is not None and int(manifest.get("resolution", 0)) != int(resolution):
            if d == checkpoints:
                continue  # a parent may still hold difftalk_<resolution>/
            raise CheckpointError(
                f"{path}: a {manifest.get('resolution')} px model, not {resolution}"
            )
        return d
    want = f" for {resolution} px" if resolution else ""
    raise CheckpointError(
        f"{checkpoints}: no DiffTalk checkpoint{want} ({MANIFEST_NAME}, or difftalk_256/ / difftalk_512/)"
    )


@dataclass
class DiffTalkModels:
    """A loaded checkpoint directory: both networks and the data settings they were trained on."""

    autoencoder: DiffTalkAutoencoder
    ldm: DiffTalkLDM
    resolution: int
    data: dict[str, Any]  # the data settings it was trained on (crop, audio, ...)
    directory: Path

    @property
    def latent_size(self) -> int:
        return self.autoencoder.config.latent_size


def load_difftalk(
    checkpoints: Path, resolution: int | None = None, device: str | torch.device = "cpu"
) -> DiffTalkModels:
    """Both networks of the checkpoint directory for `resolution` (`resolve_checkpoint_dir`)."""
    directory = resolve_checkpoint_dir(checkpoints, resolution)
    manifest = _read_json(directory / MANIFEST_NAME)
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{directory / MANIFEST_NAME}: not a DiffTalk checkpoint manifest")
    ae = load_autoencoder(directory / manifest.get("autoencoder", AUTOENCODER_FILE), device)
    ldm, _ = load_ldm(directory / manifest.get("ldm", LDM_FILE), device)
    res = int(manifest["resolution"])
    if ae.config.resolution != res:
        raise CheckpointError(
            f"{directory}: the autoencoder is for {ae.config.resolution} px, not {res}"
        )
    if ae.config.latent_size != ldm.config.unet.sample_size:
        log.info(
            "latent %d differs from the UNet's nominal %d",
            ae.config.latent_size,
            ldm.config.unet.sample_size,
        )
    return DiffTalkModels(ae, ldm, res, dict(manifest.get("data", {})), directory)


__all__ = [
    "AUTOENCODER_FILE",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "LDM_FILE",
    "MANIFEST_NAME",
    "RESOLUTIONS",
    "DiffTalkModels",
    "load_autoencoder",
    "load_difftalk",
    "load_ldm",
    "read_component",
    "resolve_checkpoint_dir",
    "save_component",
    "write_manifest",
]
