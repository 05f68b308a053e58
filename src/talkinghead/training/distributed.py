"""The `Accelerator` every trainer builds, and per-rank random state for exact resume.

Two things accelerate does not do for us by default:

* ``Accelerator(mixed_precision="no")`` wins over ``accelerate launch --mixed_precision
  bf16`` (and over ``accelerate config``, which reaches the process as the
  ``ACCELERATE_MIXED_PRECISION`` variable the launcher sets). `build_accelerator` passes
  an explicit precision only when the user gave one, so the launcher's setting holds
  otherwise; `resolve_mixed_precision` says which one a run will use.
* ``save_state`` stores the global RNGs, but not the generators a trainer owns (a
  DataLoader's, a noise generator), and on several nodes without a shared file system
  only what each node writes. `save_rank_state` / `load_rank_state` write one small file
  per rank with everything that rank draws from, so a resumed run draws exactly what the
  uninterrupted one would on every rank.

And one thing PyTorch does not: a `DistributedDataParallel` wrapper still alive when a gloo
process exits aborts it now and then ("terminate called without an active exception"; about
1 run in 10 of two CPU processes with torch 2.13, with or without destroying the process
group), so a finished training is reported as failed. `end_training` frees the wrappers first.
"""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

MIXED_PRECISIONS = ("no", "fp16", "bf16")
RANK_STATE = "rank_state_{rank}.pt"


def resolve_mixed_precision(requested: str | None) -> str:
    """The precision a run uses: `requested`, else accelerate's (launcher/config), else "no"."""
    value = requested if requested is not None else os.environ.get("ACCELERATE_MIXED_PRECISION")
    value = (value or "no").lower()
    if value not in MIXED_PRECISIONS:
        raise ValueError(
            f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, got {value!r}"
        )
    return value


def _world_size() -> int:
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def _needs_cpu_flag() -> bool:
    return not torch.cuda.is_available() and _world_size() > 1


def is_main_process() -> bool:
    """Whether this is rank 0, settling accelerate's process state as `build_accelerator` will.

    Use this (not a bare ``PartialState()``) before the accelerator is built: a bare one on
    a machine without GPUs would fix every launched process as a lone rank 0.
    """
    from accelerate import PartialState

    return PartialState(cpu=_needs_cpu_flag()).is_main_process


def build_accelerator(mixed_precision: str | None = None, **kwargs: Any):
    """An `accelerate.Accelerator` that honours `accelerate launch` / `accelerate config`.

    `mixed_precision=None` leaves the choice to accelerate (the launcher's flag or config
    file, "no" for a plain ``python`` run); a string overrides it. Launched as several
    processes on a machine without GPUs, they train on CPU (gloo). In a single plain
    process, a second trainer in the same Python process (a notebook, the tests) may use
    another precision than the first: accelerate's process-wide state is reset for it.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    wanted = resolve_mixed_precision(mixed_precision)
    if "cpu" not in kwargs and _needs_cpu_flag():
        # `accelerate launch --multi_gpu` on a machine without GPUs (CI, the tests): run the
        # processes on CPU with gloo instead of each one falling back to a lone process.
        kwargs["cpu"] = True
    state = AcceleratorState._shared_state
    if (
        state
        and state.get("_mixed_precision", wanted) != wanted
        and PartialState().distributed_type == DistributedType.NO
    ):
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, **kwargs)


def end_training(accelerator: Any) -> None:
    """``accelerator.end_training()`` once the prepared wrappers are gone.

    Drops accelerate's own references to what `prepare` returned (`free_memory`) and
    collects them before the process group goes. The caller drops its references to the
    prepared model first (``model = None``); the raw module and its weights stay usable.
    """
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def build_accelerator_for_device(
    device: str = "auto", mixed_precision: str | None = None, **kwargs: Any
):
    """`build_accelerator` for a trainer's ``--device``: "auto" (accelerate's choice: each
    launched rank's GPU, else the CPU), "cpu", "cuda" or "cuda:N" (one plain process only:
    launched ranks get their GPU from accelerate)."""
    name = (device or "auto").lower()
    if name == "cpu":
        kwargs.setdefault("cpu", True)
    elif name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available (use cpu or auto)")
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise ValueError(f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N")
        if index:
            if _world_size() > 1:
                raise ValueError(
                    f"--device {device}: launched processes each take their own GPU; "
                    "pick GPUs with CUDA_VISIBLE_DEVICES instead"
                )
            torch.cuda.set_device(int(index))  # accelerate's "cuda" is the current device
    elif name != "auto":
        raise ValueError(f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N")
    return build_accelerator(mixed_precision, **kwargs)


def rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """This process's random state: python, numpy, torch (CPU and CUDA) and `generators`."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Restore what `rng_state` returned (generators by name; a missing name is an error)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"the saved random state has no generator {name!r}")
        g.set_state(saved[name])


def save_rank_state(
    directory: str | os.PathLike,
    rank: int,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write this rank's random state (and `extra`) to DIRECTORY/rank_state_{rank}.pt."""
    path = Path(directory) / RANK_STATE.format(rank=rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"rng": rng_state(generators), "extra": dict(extra or {})}, tmp)
    os.replace(tmp, path)  # a state folder never holds half a file
    return path


def load_rank_state(
    directory: str | os.PathLike,
    rank: int,
    generators: Mapping[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Restore this rank's random state from `save_rank_state`; returns its `extra`."""
    path = Path(directory) / RANK_STATE.format(rank=rank)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no random state for rank {rank} (resume with the same number of processes)"
        )
    saved = torch.load(path, map_location="cpu", weights_only=False)
    set_rng_state(saved["rng"], generators)
    return saved["extra"]


__all__ = [
    "MIXED_PRECISIONS",
    "build_accelerator",
    "build_accelerator_for_device",
    "is_main_process",
    "load_rank_state",
    "resolve_mixed_precision",
    "rng_state",
    "save_rank_state",
    "set_rng_state",
]
