"""LivePortrait's human release, loaded unchanged into our renderer networks.

The release (KwaiVGI/LivePortrait, ``pretrained_weights/liveportrait/``) holds

    base_models/appearance_feature_extractor.pth   -> appearance_extractor
    base_models/motion_extractor.pth               -> motion_extractor
    base_models/warping_module.pth                 -> warp_network
    base_models/spade_generator.pth                -> decoder
    retargeting_models/stitching_retargeting_module.pth
        {"retarget_shoulder": ..., "retarget_mouth": ..., "retarget_eye": ...}
                                                   -> stitch_network, lip, eye MLPs

Conversion happens at load time, in `convert_state_dict`: LivePortrait's file and
entry names become our network kinds (Ditto's names), and DDP ``module.`` prefixes
are stripped. Inside the four base networks the parameter names and shapes are the
same as ours (checked against LivePortrait's module definitions), so their state
dicts pass through; `KEY_RENAMES` is where a renamed parameter would go.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from talkinghead.errors import CheckpointError
from talkinghead.models import OFFICIAL_NETWORKS
from talkinghead.models.loading import load_state_dict_strict, read_checkpoint
from talkinghead.models.retargeting import (
    RetargetingNetwork,
    eye_retargeting_network,
    lip_retargeting_network,
)

# LivePortrait's base-model file -> our network kind.
BASE_MODELS: dict[str, str] = {
    "appearance_feature_extractor.pth": "appearance_extractor",
    "motion_extractor.pth": "motion_extractor",
    "warping_module.pth": "warp_network",
    "spade_generator.pth": "decoder",
}
RETARGETING_FILE = "stitching_retargeting_module.pth"
# Entries of the stitching/retargeting file -> our name for the network.
RETARGETING_ENTRIES: dict[str, str] = {
    "retarget_shoulder": "stitch_network",
    "retarget_mouth": "lip_retargeting",
    "retarget_eye": "eye_retargeting",
}
# Per network: (LivePortrait's key prefix, ours). Empty: the names already agree.
KEY_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {}
# Optional network sizes next to the base models (tiny test releases), {kind: kwargs}.
SIZES_FILE = "talkinghead.json"


@dataclass
class LivePortraitModels:
    """The release's networks, in eval mode."""

    appearance_extractor: nn.Module
    motion_extractor: nn.Module
    warp_network: nn.Module
    decoder: nn.Module
    stitch_network: nn.Module
    eye_retargeting: RetargetingNetwork
    lip_retargeting: RetargetingNetwork

    def to(self, device: str | torch.device) -> LivePortraitModels:
        for name in self.__dataclass_fields__:
            getattr(self, name).to(device)
        return self


@dataclass(frozen=True)
class ReleaseLayout:
    base_models: Path
    retargeting: Path


def find_release(root: str | os.PathLike) -> ReleaseLayout:
    """The release's two folders under `root` (the clone, ``pretrained_weights``,
    ``liveportrait`` or a folder holding the files flat), or a CheckpointError."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"{root}: LivePortrait checkpoint folder not found")
    for base in (root, root / "liveportrait", root / "pretrained_weights" / "liveportrait"):
        if (base / "base_models").is_dir():
            layout = ReleaseLayout(base / "base_models", base / "retargeting_models")
            break
        if (base / "motion_extractor.pth").is_file():
            layout = ReleaseLayout(base, base)
            break
    else:
        raise CheckpointError(
            f"{root}: no LivePortrait release here (expected base_models/ and "
            "retargeting_models/, as in pretrained_weights/liveportrait/)"
        )
    missing = [
        layout.base_models / f for f in BASE_MODELS if not (layout.base_models / f).is_file()
    ]
    if not (layout.retargeting / RETARGETING_FILE).is_file():
        missing.append(layout.retargeting / RETARGETING_FILE)
    if missing:
        raise CheckpointError(
            "missing LivePortrait checkpoint(s): " + ", ".join(str(p) for p in missing)
        )
    return layout


def convert_state_dict(kind: str, state_dict: Mapping[str, Any], path: Any) -> OrderedDict:
    """LivePortrait's state_dict for network `kind` -> our key names (DDP prefixes stripped)."""
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise CheckpointError(f"{path}: does not hold a state_dict of tensors for {kind}")
    out = OrderedDict()
    for key, value in state_dict.items():
        key = key.replace("module.", "")
        for theirs, ours in KEY_RENAMES.get(kind, ()):
            if key.startswith(theirs):
                key = ours + key[len(theirs) :]
        out[key] = value
    return out


def read_sizes(layout: ReleaseLayout) -> dict[str, dict[str, Any]]:
    path = layout.base_models / SIZES_FILE
    if not path.is_file():
        return {}
    try:
        sizes = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(sizes, dict):
        raise CheckpointError(f"{path}: expected a JSON object of network sizes")
    return sizes


def _build(kind: str, sizes: Mapping[str, Any]) -> nn.Module:
    if kind == "eye_retargeting":
        return eye_retargeting_network(**sizes)
    if kind == "lip_retargeting":
        return lip_retargeting_network(**sizes)
    return OFFICIAL_NETWORKS[kind].factory()(**sizes)


def load_liveportrait(
    root: str | os.PathLike,
    device: str | torch.device = "cpu",
    sizes: Mapping[str, Mapping[str, Any]] | None = None,
) -> LivePortraitModels:
    """Load LivePortrait's human release from `root` (see `find_release`), strictly."""
    layout = find_release(root)
    sizes = {**read_sizes(layout), **(sizes or {})}
    nets: dict[str, nn.Module] = {}
    for file_name, kind in BASE_MODELS.items():
        path = layout.base_models / file_name
        net = _build(kind, sizes.get(kind, {}))
        load_state_dict_strict(
            net, convert_state_dict(kind, read_checkpoint(path), path), path, kind
        )
        nets[kind] = net
    path = layout.retargeting / RETARGETING_FILE
    container = read_checkpoint(path)
    if not isinstance(container, Mapping) or not set(RETARGETING_ENTRIES) <= set(container):
        found = list(container)[:8] if isinstance(container, Mapping) else type(container).__name__
        raise CheckpointError(
            f"{path}: expected entries {', '.join(RETARGETING_ENTRIES)}, found {found}"
        )
    for entry, kind in RETARGETING_ENTRIES.items():
        net = _build(kind, sizes.get(kind, {}))
        sd = convert_state_dict(kind, container[entry], path)
        load_state_dict_strict(net, sd, f"{path}[{entry}]", kind)
        nets[kind] = net
    for net in nets.values():
        net.to(device).eval()
    return LivePortraitModels(**nets)  # type: ignore[arg-type]


__all__ = [
    "BASE_MODELS",
    "KEY_RENAMES",
    "RETARGETING_ENTRIES",
    "RETARGETING_FILE",
    "LivePortraitModels",
    "ReleaseLayout",
    "convert_state_dict",
    "find_release",
    "load_liveportrait",
]
