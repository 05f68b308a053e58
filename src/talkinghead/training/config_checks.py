"""The checks every trainer's config runs on the fields they share.

Each train config (Ditto's motion model, DiT-Head's VQGANs and DiT, DiffTalk's
autoencoder and LDM) calls `check_train_fields` from ``__post_init__``, so a bad value
is one `SettingsError` naming the field before any data or model is read, from the CLI
and from Python alike, instead of a traceback from the optimiser or the seeding deep in
a run (``--lr -1``: "Invalid learning rate"; ``--seed -1``: numpy's "Seed must be
between 0 and 2**32 - 1").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from talkinghead.errors import SettingsError
from talkinghead.training.distributed import MIXED_PRECISIONS
from talkinghead.validation import MAX_STEPS, is_int

# accelerate's set_seed seeds numpy's legacy generator, which takes 32 bits.
MAX_TRAIN_SEED = 2**32 - 1

# Whole-number fields and the least value each takes (absent fields are skipped).
AT_LEAST = {
    "steps": 1,
    "epochs": 1,
    "batch_size": 1,
    "eval_batch": 1,
    "save_every": 1,
    "save_ckpt_freq": 1,
    "save_every_steps": 0,
    "max_steps": 0,
    "log_every": 1,
    "seq_frames": 1,
    "motion_feat_dim": 1,
    "num_workers": 0,
    "disc_start": 0,
    "n_timestep": 1,
}
# Real-valued fields that must be >= 0 (weights of loss terms, clipping, decay).
NON_NEGATIVE = (
    "weight_decay",
    "grad_clip",
    "codebook_weight",
    "perceptual_weight",
    "disc_weight",
    "velocity_weight",
    "acceleration_weight",
    "last_frame_weight",
)


def _fail(name: str, wanted: str, value: Any) -> None:
    raise SettingsError(f"{name} must be {wanted}, got {value!r}")


def check_train_fields(cfg: Any, *, zero_is_off: Iterable[str] = ()) -> None:
    """Raise a one-line `SettingsError` for the first bad shared field of `cfg`.

    `zero_is_off`: whole-number fields where 0 switches the feature off (DiT-Head's
    ``log_every`` and ``save_every``), so 0 is allowed below their usual least value.
    """
    off = set(zero_is_off)
    for name, least in AT_LEAST.items():
        value = getattr(cfg, name, None)
        if value is None:
            continue
        least = 0 if name in off else least
        if not is_int(value) or value < least:
            _fail(name, f"a whole number >= {least}" + (" (0: off)" if name in off else ""), value)
    lr = getattr(cfg, "lr", None)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        _fail("lr", "a positive number", lr)
    for name in NON_NEGATIVE:
        value = getattr(cfg, name, None)
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value < math.inf):
            _fail(name, "a number >= 0", value)
    decay = getattr(cfg, "ema_decay", None)
    if decay is not None and not (isinstance(decay, (int, float)) and 0 <= decay < 1):
        _fail("ema_decay", "in [0, 1) (0: no EMA)", decay)
    seed = getattr(cfg, "seed", None)
    if seed is not None and not (is_int(seed) and 0 <= seed <= MAX_TRAIN_SEED):
        _fail("seed", "a whole number from 0 to 2^32-1", seed)
    precision = getattr(cfg, "mixed_precision", None)
    if precision is not None and precision not in MIXED_PRECISIONS:
        _fail("mixed_precision", f"one of {', '.join(MIXED_PRECISIONS)}", precision)
    steps = getattr(cfg, "sample_steps", None)
    most = getattr(cfg, "n_timestep", None) or MAX_STEPS
    if steps is not None and not (is_int(steps) and 1 <= steps <= most):
        _fail("sample_steps", f"a whole number from 1 to {most}", steps)
    seconds = getattr(cfg, "sample_seconds", None)
    if seconds is not None and not (isinstance(seconds, (int, float)) and 0 < seconds < math.inf):
        _fail("sample_seconds", "a positive number of seconds", seconds)
    for name in ("sample_every", "holdout"):
        value = getattr(cfg, name, None)
        if value is not None and (not is_int(value) or value < 0):
            _fail(name, "a whole number >= 0", value)
