"""Ditto's motion layer: the 265-dim motion format, the per-frame condition builder and
clip-wise (windowed) generation of arbitrarily long motion sequences, offline or streaming."""

from talkinghead.motion.clipwise import (
    ClipwiseConfig,
    ClipwiseGenerator,
    WindowSampler,
    clip_motion,
    cross_fade,
    fuse_weights,
    moving_average,
)
from talkinghead.motion.conditions import (
    EMOTIONS,
    NEUTRAL,
    ConditionBuilder,
    ConditionConfig,
    emotion_index,
    emotion_vector,
    eye_attributes_from_landmarks,
    mirror_index,
    parse_emotion,
    shape_code_from_keypoints,
)
from talkinghead.motion.format import (
    MOTION_DIM,
    MOTION_LAYOUT,
    MOTION_LAYOUT_WITH_KP,
    POSE_DIMS,
    MotionField,
    MotionLayout,
    dict_to_motion,
    motion_frames,
    motion_to_dict,
)

__all__ = [
    "EMOTIONS",
    "MOTION_DIM",
    "MOTION_LAYOUT",
    "MOTION_LAYOUT_WITH_KP",
    "NEUTRAL",
    "POSE_DIMS",
    "ClipwiseConfig",
    "ClipwiseGenerator",
    "ConditionBuilder",
    "ConditionConfig",
    "MotionField",
    "MotionLayout",
    "WindowSampler",
    "clip_motion",
    "cross_fade",
    "dict_to_motion",
    "emotion_index",
    "emotion_vector",
    "eye_attributes_from_landmarks",
    "fuse_weights",
    "mirror_index",
    "motion_frames",
    "motion_to_dict",
    "moving_average",
    "parse_emotion",
    "shape_code_from_keypoints",
]
