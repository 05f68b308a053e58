"""talkinghead: diffusion-based, audio-driven talking-head video.

``from talkinghead import DittoPipeline`` is the main entry point (see the README);
the methods live in `talkinghead.methods`, the shared layers beside it.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("talkinghead")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

# name -> the module that defines it
_LAZY = {
    "DittoPipeline": "talkinghead.methods.ditto",
    "DittoConfig": "talkinghead.methods.ditto",
    "DiTHeadPipeline": "talkinghead.methods.dithead.pipeline",
    "DiffTalkPipeline": "talkinghead.methods.difftalk.pipeline",
    "VideoClip": "talkinghead.media.clip",
}


def __getattr__(name: str) -> Any:
    # Importing a pipeline pulls in torch: done on first use, so the CLI starts fast.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DiTHeadPipeline",
    "DiffTalkPipeline",
    "DittoConfig",
    "DittoPipeline",
    "VideoClip",
    "__version__",
]
