"""Memory-mapped .npy arrays with a bounded number of open files, whatever the dataset size.

A memory map keeps its file descriptor for as long as it lives, so a dataset that maps
every array of every video hits the process's open-file limit ("Too many open files")
at a few hundred videos. `NpyPool` keeps at most `max_open` maps open (least recently
used first out) and hands out copies of the rows asked for, so no evicted map is kept
alive by a view. Each DataLoader worker holds its own pool: the bound is per process.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from talkinghead.errors import TalkingHeadError

DEFAULT_MAX_OPEN = 64


class NpyPool:
    """An LRU of open ``np.load(..., mmap_mode="r")`` maps, at most `max_open` at a time."""

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open = max_open
        self._open: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._shapes: dict[Path, tuple[tuple[int, ...], np.dtype]] = {}
        self._raw: dict[Path, tuple[tuple[int, ...], np.dtype]] = {}  # headerless files
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def __getstate__(self) -> dict:
        # A pool sent to a DataLoader worker starts empty there (maps do not pickle).
        return {"max_open": self.max_open, "shapes": self._shapes, "raw": self._raw}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"])
        self._shapes = dict(state["shapes"])
        self._raw = dict(state.get("raw", {}))

    def add_raw(self, path: str | os.PathLike, shape: tuple[int, ...], dtype) -> None:
        """Declare a headerless array file (``np.memmap`` layout): mapped like the .npy ones."""
        path = Path(path)
        self._raw[path] = (tuple(shape), np.dtype(dtype))
        self._shapes[path] = self._raw[path]

    def _map(self, path: Path) -> np.ndarray:
        arr = self._open.get(path)
        if arr is not None:
            self._open.move_to_end(path)
            return arr
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)  # its descriptor closes with the last reference
        try:
            if path in self._raw:
                shape, dtype = self._raw[path]
                arr = np.memmap(path, dtype=dtype, mode="r", shape=shape)
            else:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise TalkingHeadError(f"{path}: unreadable array ({exc})") from None
        self._open[path] = arr
        self._shapes[path] = (arr.shape, arr.dtype)
        return arr

    def shape(self, path: str | os.PathLike) -> tuple[int, ...]:
        """The array's shape (remembered: asking again opens nothing)."""
        path = Path(path)
        if path not in self._shapes:
            with self._lock:
                self._map(path)
        return self._shapes[path][0]

    def rows(
        self,
        path: str | os.PathLike,
        start: int | None = None,
        stop: int | None = None,
        dtype: np.dtype | type | None = np.float32,
    ) -> np.ndarray:
        """A copy of ``array[start:stop]`` (the whole array by default), as `dtype`."""
        with self._lock:
            arr = self._map(Path(path))
            return np.array(arr[start:stop], dtype=dtype if dtype is not None else arr.dtype)

    def row(self, path: str | os.PathLike, index: int, dtype=np.float32) -> np.ndarray:
        """A copy of ``array[index]``."""
        with self._lock:
            arr = self._map(Path(path))
            return np.array(arr[index], dtype=dtype)

    def close(self) -> None:
        with self._lock:
            self._open.clear()


def open_file_count() -> int | None:
    """Descriptors this process holds now (Linux /proc; None where that is not available)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


__all__ = ["DEFAULT_MAX_OPEN", "NpyPool", "open_file_count"]
