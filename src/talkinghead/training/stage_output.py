"""Whether a training stage may write over the checkpoint an earlier run left.

A rerun of a stage whose checkpoint exists would quietly start again from step 0 and,
at its first save, replace weeks of training. Every two-stage trainer (DiT-Head,
DiffTalk) asks `continue_existing` first, before any data or model is loaded: the
earlier checkpoint is continued only with ``--resume``, replaced only with
``--overwrite``, and otherwise the run is refused with a one-line message.
"""

from __future__ import annotations

from pathlib import Path

from talkinghead.errors import SettingsError, TalkingHeadError


def continue_existing(path: Path, stage: str, *, resume: bool, overwrite: bool) -> bool:
    """True: continue the `stage` run saved at `path`; False: start afresh (no file yet,
    `overwrite`, or `resume` without a checkpoint to resume). Raises when `path` exists
    and neither was asked for."""
    if resume and overwrite:
        raise SettingsError("--resume and --overwrite exclude each other: choose one")
    path = Path(path)
    if not path.is_file() or overwrite:
        return False
    if not resume:
        raise TalkingHeadError(
            f"{path} exists: pass --resume to continue that {stage} run or --overwrite to replace it"
        )
    return True


__all__ = ["continue_existing"]
