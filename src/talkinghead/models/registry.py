"""Where each released network lives: class, checkpoint container and file name.

The table is the one place that ties a `kind` (the name used in the release's
`ditto_pytorch/models/` directory) to our module and to the container the
release wraps its state_dict in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class NetworkSpec:
    """How one released network is built and stored."""

    kind: str
    target: str  # "module.path:ClassName", built with its defaults (the release's values)
    checkpoint_name: str  # file name inside ditto_pytorch/models/
    container: str  # "raw_state_dict" | "retarget_shoulder" | "model_state_dict"
    load_into: str | None = None  # attribute that receives the state_dict (LMDM -> "model")

    def factory(self) -> Callable[..., nn.Module]:
        module_name, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


OFFICIAL_NETWORKS: dict[str, NetworkSpec] = {
    spec.kind: spec
    for spec in (
        NetworkSpec(
            "appearance_extractor",
            "talkinghead.models.appearance_extractor:AppearanceFeatureExtractor",
            "appearance_extractor.pth",
            "raw_state_dict",
        ),
        NetworkSpec(
            "motion_extractor",
            "talkinghead.models.motion_extractor:MotionExtractor",
            "motion_extractor.pth",
            "raw_state_dict",
        ),
        NetworkSpec(
            "warp_network",
            "talkinghead.models.warping_network:WarpingNetwork",
            "warp_network.pth",
            "raw_state_dict",
        ),
        NetworkSpec(
            "decoder",
            "talkinghead.models.spade_decoder:SPADEDecoder",
            "decoder.pth",
            "raw_state_dict",
        ),
        NetworkSpec(
            "stitch_network",
            "talkinghead.models.stitching_network:StitchingNetwork",
            "stitch_network.pth",
            "retarget_shoulder",
        ),
        NetworkSpec(
            "lmdm",
            "talkinghead.models.lmdm:LMDM",
            "lmdm_v0.4_hubert.pth",
            "model_state_dict",
            load_into="model",
        ),
    )
}
