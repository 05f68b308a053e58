"""LivePortrait: video-driven portrait animation and eye/lip retargeting with its own release.

Loads KwaiVGI/LivePortrait's human release unchanged (`checkpoints`), drives a portrait
from a driving video by relative motion (`motion`, `pipeline`) and offers eye-open and
lip-open sliders (`talkinghead.models.retargeting`). Its command is
``talkinghead animate`` (`commands`); it has no audio-driven ``generate``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnimateSettings", "LivePortraitAnimator", "load_liveportrait"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (the registry does) must not import torch.
    if name in ("AnimateSettings", "LivePortraitAnimator"):
        from talkinghead.methods.liveportrait import pipeline

        return getattr(pipeline, name)
    if name == "load_liveportrait":
        from talkinghead.methods.liveportrait.checkpoints import load_liveportrait

        return load_liveportrait
    raise AttributeError(name)
