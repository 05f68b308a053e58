"""Pipelines that tie the models together: avatar registration (source -> Avatar) and its cache."""

from talkinghead.pipelines.avatar import (
    Avatar,
    AvatarCache,
    AvatarRegistrar,
    checkpoint_identity,
    default_cache_dir,
    mirror_index,
    smooth_motion,
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
