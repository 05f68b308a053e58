"""Deprecated path of `talkinghead.methods.ditto.pipeline` (and `.config`), kept for one release."""

from talkinghead.methods.ditto.config import DittoConfig, config_from_release
from talkinghead.methods.ditto.pipeline import DittoPipeline, DittoStream, GenerationResult

__all__ = ["DittoConfig", "DittoPipeline", "DittoStream", "GenerationResult", "config_from_release"]
