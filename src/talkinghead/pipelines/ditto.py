"""Deprecated path of `talkinghead.methods.ditto.pipeline`, kept for one release."""

from talkinghead.methods.ditto.pipeline import (
    DittoConfig,
    DittoPipeline,
    DittoStream,
    GenerationResult,
    config_from_release,
)

__all__ = ["DittoConfig", "DittoPipeline", "DittoStream", "GenerationResult", "config_from_release"]
