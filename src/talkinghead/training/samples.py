"""Periodic validation samples: every N steps, something to look at from a held-out clip.

A trainer keeps a few clips out of training (`choose_holdout`, on `split_holdout`) and
gives `PeriodicSamples` a `render(step, out_path)` callback that turns the current (EMA)
weights into a short sample at ``OUT_DIR/samples/[<stage>/]step_00001200<suffix>``: a
video where the method has a renderer, motion arrays otherwise (Ditto without a renderer
writes motion only). The file appears complete or not at all (written to a temporary
name, then renamed), and a sample that fails is logged, not fatal: a broken preview must
not end a week-long run. Under `accelerate launch` every rank calls `maybe_on_main` at
every step: the main process renders and the others wait for it at a barrier.

Defaults (`resolve_sample_every`): off for the tiny presets (tests and smoke runs), every
`DEFAULT_SAMPLE_EVERY` steps for the others; a held-out clip by default when sampling is
on and the dataset has two clips or more.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from talkinghead.errors import SettingsError

log = logging.getLogger(__name__)

SAMPLES_DIR = "samples"
# Full presets: a sample every few thousand steps costs a minute or so in hours of training.
DEFAULT_SAMPLE_EVERY = 5000
DEFAULT_SAMPLE_SECONDS = 2.0
DEFAULT_SAMPLE_STEPS = 50  # DDIM steps of a sample: a preview, not the paper's 200-250
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


def resolve_sample_every(sample_every: int | None, preset: str) -> int:
    """`sample_every` when given, else the default: 0 (off) for the ``tiny*`` presets,
    `DEFAULT_SAMPLE_EVERY` for the others."""
    if sample_every is None:
        return 0 if preset.startswith("tiny") else DEFAULT_SAMPLE_EVERY
    if sample_every < 0:
        raise SettingsError(f"--sample-every must be >= 0 (0: no samples), not {sample_every}")
    return int(sample_every)


def check_sample_options(
    sample_every: int | None,
    holdout: int | None,
    sample_seconds: float | None,
    sample_steps: int | None,
) -> None:
    """The trainers' sample options as given on the command line (None: the default)."""
    for name, value, least in (
        ("--sample-every", sample_every, 0),
        ("--holdout", holdout, 0),
        ("--sample-steps", sample_steps, 1),
    ):
        if value is not None and value < least:
            raise SettingsError(f"{name} must be >= {least}, not {value}")
    if sample_seconds is not None and not sample_seconds > 0:
        raise SettingsError(f"--sample-seconds must be positive, not {sample_seconds}")


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "no clip"


def choose_holdout(
    names: Sequence[str],
    count: int | None,
    *,
    sampling: bool,
    seed: int = 0,
    recorded: Sequence[str] | None = None,
) -> list[str]:
    """The clips (of `names`, in their order) to keep out of training.

    `count` None: 1 when `sampling` and there are two clips or more, else 0; on a resume
    (`recorded`: the names the checkpoint was trained without) the recorded ones, so the
    training set does not change under a resumed run. An explicit `count` must agree
    with `recorded` and leave at least one clip to train on.
    """
    if count is not None and count < 0:
        raise SettingsError(f"--holdout must be >= 0, not {count}")
    if count is not None and count and count >= len(names):
        raise SettingsError(
            f"--holdout {count} leaves no clip to train on (the dataset has {len(names)}); "
            "hold out fewer"
        )
    if recorded is not None and count is None:
        missing = sorted(set(recorded) - set(names))
        if missing:
            log.warning("held-out clip(s) %s are no longer in the dataset", ", ".join(missing))
        return [n for n in names if n in set(recorded)]
    if count is None:
        count = 1 if sampling and len(names) >= 2 else 0
    held = split_holdout(names, count, seed)[1]
    if recorded is not None and set(held) != set(recorded):
        raise SettingsError(
            f"the checkpoint was trained holding out {_listed(recorded)}, this run would hold "
            f"out {_listed(held)}: resume with --holdout {len(recorded)} and the same --seed"
        )
    return held


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """[H, W1 + W2, 3]: two frames of one height next to each other (truth | model)."""
    return np.concatenate([left, right], axis=1)


def write_sample_video(path: Path, frames: Iterable[np.ndarray], fps: float) -> None:
    """An mp4 (H.264, no audio) of RGB uint8 frames, through the toolkit's writer."""
    from talkinghead.media.writer import open_writer

    with open_writer(path, fps=fps) as writer:
        for frame in frames:
            writer.write(frame)


class PeriodicSamples:
    """Calls `render` every `every` steps (0: never) on the main process, atomically.

    `subdir` keeps each stage's samples apart (``samples/<subdir>/``): stages of one
    method write into one OUT_DIR and count their steps from 1 each.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        render: Render | None,
        *,
        every: int = 0,
        suffix: str = ".mp4",
        enabled: bool = True,
        subdir: str | None = None,
    ) -> None:
        self.dir = Path(out_dir) / SAMPLES_DIR
        if subdir:
            self.dir = self.dir / subdir
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

    def maybe_on_main(self, step: int, accelerator: Any) -> Path | None:
        """`maybe` in a run of one or more processes: the main one renders, the others wait
        for it. Every rank calls this at every step (`due` is the same on all of them)."""
        if not self.due(step):
            return None
        path = self.sample(step) if accelerator.is_main_process else None
        accelerator.wait_for_everyone()
        return path

    def reset(self) -> None:
        """A fresh run (not a resume): the samples of the run it replaces go."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def sample(self, step: int) -> Path | None:
        """Render step `step`'s sample now (main process); its path, or None if it failed."""
        if self.render is None:
            return None
        path = self.dir / f"step_{step:08d}{self.suffix}"
        tmp = path.with_name(f".{path.stem}.tmp{self.suffix}")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.render(step, tmp)
            os.replace(tmp, path)
        except Exception as exc:  # a preview must not stop training
            log.warning("step %d: validation sample failed (%s)", step, exc)
            tmp.unlink(missing_ok=True)
            return None
        self.written.append(path)
        return path


__all__ = [
    "DEFAULT_SAMPLE_EVERY",
    "DEFAULT_SAMPLE_SECONDS",
    "DEFAULT_SAMPLE_STEPS",
    "SAMPLES_DIR",
    "PeriodicSamples",
    "choose_holdout",
    "resolve_sample_every",
    "side_by_side",
    "split_holdout",
    "write_sample_video",
]
