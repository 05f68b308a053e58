"""Pure nn.Modules of the methods, and loading of the released checkpoints."""

from talkinghead.models.loading import load_official, save_official
from talkinghead.models.registry import OFFICIAL_NETWORKS, NetworkSpec

__all__ = ["OFFICIAL_NETWORKS", "NetworkSpec", "load_official", "save_official"]
