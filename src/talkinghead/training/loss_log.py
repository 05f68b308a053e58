"""The loss line every trainer prints and logs every N steps: console, JSONL, TensorBoard.

`LossLog.add(step, values)` accumulates a step's scalars (losses, grad norm...); every
`every` steps the means since the last line are written as one JSON object to
``train_log.jsonl`` (flushed, so `tail -f` and a crash both see it), printed as
``step 1200  loss 0.0123  lr 1.0e-04 ...  12.3 samples/s``, and given to TensorBoard
when it is installed. Only the main process writes (pass ``enabled=False`` on the
others); the values a rank passes should already be averaged over ranks if wanted.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"
TENSORBOARD_DIR = "logs"
LATEST_KEYS = ("epoch", "lr")  # logged as their latest value, the rest as means

Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def format_line(step: int, values: Mapping[str, float], total: int | None = None) -> str:
    """``step 120/1000  loss 0.0123  lr 1.0e-04  ...``: the totals first, then the rest."""
    head = f"step {step}" + (f"/{total}" if total else "")
    order = sorted(values, key=lambda k: (not k.startswith("loss"), k.count("/"), k))
    parts = []
    for k in order:
        v = values[k]
        if k.endswith("samples_per_s"):
            parts.append(f"{v:.1f} samples/s")
        elif k == "lr":
            parts.append(f"lr {v:.1e}")
        elif k == "epoch":
            parts.append(f"epoch {v:.2f}")
        else:
            parts.append(f"{k.removeprefix('loss/') if k != 'loss/total' else 'loss'} {v:.4g}")
    return "  ".join([head, *parts])


class LossLog:
    """Means of the scalars over each `every` steps, to JSONL, the console and TensorBoard."""

    def __init__(
        self,
        out_dir: str | Path,
        *,
        every: int = 10,
        enabled: bool = True,
        tensorboard: bool = True,
        echo: Echo | None = _stderr,
        console_keys: tuple[str, ...] | None = ("loss/total", "loss", "lr", "grad_norm", "epoch"),
        total_steps: int | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.enabled = enabled
        self.echo = echo
        self.console_keys = console_keys
        self.total_steps = total_steps
        self.path = Path(out_dir) / LOG_NAME
        self.tb = None
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._samples = 0
        self._t0 = time.perf_counter()
        self.last: dict[str, float] | None = None  # the latest line written
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(Path(out_dir) / TENSORBOARD_DIR))
                except ImportError:
                    log.warning("tensorboard is not installed; logging to %s only", self.path)

    def add(self, step: int, values: Mapping[str, float], *, samples: int = 0) -> bool:
        """Record step `step`'s scalars (`samples`: items it trained on, for the throughput).

        Returns True when this step wrote a line.
        """
        for k, v in values.items():
            v = float(v)
            if k in LATEST_KEYS:  # a position, not a quantity to average
                self._sums[k], self._counts[k] = v, 1
            elif math.isfinite(v) or k.startswith("loss"):
                self._sums[k] = self._sums.get(k, 0.0) + v
                self._counts[k] = self._counts.get(k, 0) + 1
        self._samples += samples
        if step % self.every:
            return False
        self.flush(step)
        return True

    def flush(self, step: int) -> None:
        """Write the means since the last line now (nothing when nothing was added)."""
        if not self._counts:
            return
        values = {k: self._sums[k] / self._counts[k] for k in self._sums}
        elapsed = time.perf_counter() - self._t0
        if self._samples and elapsed > 0:
            values["samples_per_s"] = self._samples / elapsed
        self._sums, self._counts, self._samples = {}, {}, 0
        self._t0 = time.perf_counter()
        self.last = values
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(
                json.dumps({"step": step, **{k: round(v, 7) for k, v in values.items()}}) + "\n"
            )
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.echo is not None:
            shown = values
            if self.console_keys is not None:
                shown = {
                    k: v
                    for k, v in values.items()
                    if k in self.console_keys or k == "samples_per_s"
                }
            self.echo(format_line(step, shown, self.total_steps))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def read_log(out_dir: str | Path) -> list[dict[str, float]]:
    """The lines of OUT_DIR/train_log.jsonl (a torn last line, from a crash, is skipped)."""
    path = Path(out_dir) / LOG_NAME
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


__all__ = ["LOG_NAME", "LossLog", "format_line", "read_log"]
