"""A LivePortrait human release with tiny networks, in LivePortrait's own layout and key names.

`build_tiny_liveportrait` writes ``pretrained_weights/liveportrait/{base_models,
retargeting_models}`` as the release does (raw state_dicts under LivePortrait's file
names; one stitching/retargeting file with ``retarget_shoulder``, ``retarget_mouth``,
``retarget_eye`` entries, DDP ``module.`` prefixes as LivePortrait's loader expects)
and the same weights in Ditto's layout, for the conformance test.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from _tiny_release import SIZES, _randomize
from talkinghead.methods.liveportrait.checkpoints import (
    BASE_MODELS,
    RETARGETING_ENTRIES,
    RETARGETING_FILE,
    SIZES_FILE,
)
from talkinghead.models import OFFICIAL_NETWORKS, save_official
from talkinghead.models.retargeting import eye_retargeting_network, lip_retargeting_network

LP_SIZES: dict[str, dict] = {
    **{kind: SIZES[kind] for kind in BASE_MODELS.values()},
    "stitch_network": {},
    "eye_retargeting": {"hidden_sizes": [16, 16]},
    "lip_retargeting": {"hidden_sizes": [16]},
}


def tiny_networks(seed: int = 0) -> dict[str, torch.nn.Module]:
    nets: dict[str, torch.nn.Module] = {}
    for i, kind in enumerate(LP_SIZES):
        torch.manual_seed(seed + i)
        if kind == "eye_retargeting":
            net = eye_retargeting_network(**LP_SIZES[kind])
        elif kind == "lip_retargeting":
            net = lip_retargeting_network(**LP_SIZES[kind])
        else:
            net = OFFICIAL_NETWORKS[kind].factory()(**LP_SIZES[kind])
        nets[kind] = _randomize(net, seed + i).eval()
    return nets


def build_tiny_liveportrait(root: Path, seed: int = 0, ditto_root: Path | None = None) -> Path:
    """Write the release under `root/pretrained_weights/liveportrait`; returns `root`.

    With `ditto_root`, also write the same weights in Ditto's layout (`save_official`).
    """
    nets = tiny_networks(seed)
    lp = root / "pretrained_weights" / "liveportrait"
    base, retarget = lp / "base_models", lp / "retargeting_models"
    base.mkdir(parents=True, exist_ok=True)
    retarget.mkdir(parents=True, exist_ok=True)
    for file_name, kind in BASE_MODELS.items():
        torch.save(nets[kind].state_dict(), base / file_name)
    container = {
        entry: {f"module.{k}": v for k, v in nets[kind].state_dict().items()}
        for entry, kind in RETARGETING_ENTRIES.items()
    }
    torch.save(container, retarget / RETARGETING_FILE)
    (base / SIZES_FILE).write_text(json.dumps(LP_SIZES, indent=1))
    if ditto_root is not None:
        models = ditto_root / "models"
        for kind in (*BASE_MODELS.values(), "stitch_network"):
            save_official(nets[kind], kind, models / OFFICIAL_NETWORKS[kind].checkpoint_name)
    return root
