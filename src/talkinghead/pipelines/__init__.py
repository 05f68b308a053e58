"""Deprecated home of the Ditto pipeline, kept for one release: use `talkinghead.methods.ditto`
(or ``from talkinghead import DittoPipeline``)."""

import warnings

from talkinghead.methods.ditto.avatar import (
    Avatar,
    AvatarCache,
    AvatarRegistrar,
    checkpoint_identity,
    default_cache_dir,
    mirror_index,
    smooth_motion,
)

warnings.warn(
    "talkinghead.pipelines is deprecated; use talkinghead.methods.ditto",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "Avatar",
    "AvatarCache",
    "AvatarRegistrar",
    "checkpoint_identity",
    "default_cache_dir",
    "mirror_index",
    "smooth_motion",
]
