"""Ditto: motion-space diffusion (LMDM on HuBERT features) rendered by LivePortrait networks.

- `config`: `DittoConfig` with the release's defaults, and the release config import
- `checkpoints`: the release's layout, download, safe config reading and the size sidecar
- `avatar`: source registration (shared by inference and data preparation) and its cache
- `motion/`: motion format, conditions, clip-wise sampling, stitching, per-frame extraction
- `pipeline`: `DittoPipeline` (offline, streaming) and the ``generate_video`` entry point
- `data`, `train`: data preparation in the release's layout and motion-model training
- `validation`: Ditto's checks run before any model loads (the shared ones are
  `talkinghead.validation`'s); `commands`: ``train-motion``
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "DittoConfig": "config",
    "DittoPipeline": "pipeline",
    "DittoStream": "pipeline",
    "GenerationResult": "pipeline",
}


def __getattr__(name: str) -> Any:
    # The pipeline and the config pull in torch and the networks: imported on first use only.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
