"""Loading transformers audio models (HuBERT, wav2vec2) without their console noise.

transformers 5 draws a "Loading weights" tqdm bar for every `from_pretrained`, which lands
between our own progress lines. For a local directory there is nothing to download, so the
bar says nothing; for a hub id the download bars stay, since they show real progress.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def looks_local(name: str | Path) -> bool:
    """A filesystem path rather than a hub id ("org/model"), so no download is attempted."""
    s = str(name)
    return isinstance(name, Path) or s.startswith((".", "/", "~")) or "\\" in s


@contextlib.contextmanager
def _progress_bars_off() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def from_pretrained_quietly(cls: Any, name: str | Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained(name)``; a local directory loads without transformers' bars."""
    if not (looks_local(name) or Path(str(name)).expanduser().is_dir()):
        return cls.from_pretrained(str(name), **kwargs)
    with _progress_bars_off():
        return cls.from_pretrained(str(name), **kwargs)
