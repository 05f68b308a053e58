"""Periodic validation samples: every N steps, something to look at from a held-out clip.

A trainer keeps a few items out of training (`split_holdout`) and gives `PeriodicSamples`
a `render(step, out_path)` callback that turns the current (EMA) weights into a short
sample at ``OUT_DIR/samples/step_00001200<suffix>``: a video where the method has a
renderer, motion arrays otherwise (Ditto without a renderer writes motion only). The file
appears complete or not at all (written to a temporary name, then renamed), and a sample
that fails is logged, not fatal: a broken preview must not end a week-long run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

log = logging.getLogger(__name__)

SAMPLES_DIR = "samples"
T = TypeVar("T")

# render(step, path): write the sample to `path` (its suffix is the one asked for).
Render = Callable[[int, Path], None]


def split_holdout(items: Sequence[T], count: int, seed: int = 0) -> tuple[list[T], list[T]]:
    """(train, held out): `count` items drawn from (seed), never all of them."""
    items = list(items)
    count = max(0, min(count, len(items) - 1))
    if count == 0:
        return items, []
    picked = set(np.random.default_rng(seed).choice(len(items), count, replace=False).tolist())
    return (
        [x for i, x in enumerate(items) if i not in picked],
        [x for i, x in enumerate(items) if i in picked],
    )


class PeriodicSamples:
    """Calls `render` every `every` steps (0: never) on the main process, atomically."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        render: Render | None,
        *,
        every: int = 0,
        suffix: str = ".mp4",
        enabled: bool = True,
    ) -> None:
        self.dir = Path(out_dir) / SAMPLES_DIR
        self.render = render
        self.every = every
        self.suffix = suffix
        self.enabled = enabled and render is not None and every > 0
        self.written: list[Path] = []

    def due(self, step: int) -> bool:
        return self.enabled and step > 0 and step % self.every == 0

    def maybe(self, step: int) -> Path | None:
        """Render the sample of `step` when one is due; its path, or None."""
        if not self.due(step):
            return None
        return self.sample(step)

    def sample(self, step: int) -> Path | None:
        """Render step `step`'s sample now (main process); its path, or None if it failed."""
        if self.render is None:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:08d}{self.suffix}"
        tmp = path.with_name(f".{path.stem}.tmp{self.suffix}")
        try:
            self.render(step, tmp)
            os.replace(tmp, path)
        except Exception as exc:  # a preview must not stop training
            log.warning("step %d: validation sample failed (%s)", step, exc)
            tmp.unlink(missing_ok=True)
            return None
        self.written.append(path)
        return path


__all__ = ["SAMPLES_DIR", "PeriodicSamples", "split_holdout"]
