"""The permissions a plain ``open()`` / ``mkdir()`` would give, for files made by ``tempfile``.

Outputs are built under a temporary name and renamed into place. ``tempfile.mkstemp``
creates files 0600 and ``mkdtemp`` directories 0700 (private on purpose), and a
rename keeps the mode, so without a fix every published video, frames folder or
checkpoint would be readable by its owner only. `set_default_mode` gives the temp
file the mode a normal ``open()`` gets under the current umask (0666 & ~umask;
directories 0777 & ~umask) before it is published; `temporary_sibling` makes such a name
with that mode. `write_text_atomically` does both for a small text file (a JSON or CSV report).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    # os.umask can only be read by setting it; another thread creating a file in that
    # moment would get the wrong mode, so prefer Linux's /proc when it reports it.
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_mode(*, directory: bool = False) -> int:
    """0666 & ~umask for files, 0777 & ~umask for directories."""
    return (0o777 if directory else 0o666) & ~current_umask()


def set_default_mode(target: str | os.PathLike[str] | int, *, directory: bool = False) -> None:
    """Give a path (or an open file descriptor) the mode `default_mode` says.

    Filesystems without Unix modes (FAT, some network shares) may refuse; their files
    keep what the mount gives them, which is what a plain open() would get there too.
    """
    mode = default_mode(directory=directory)
    with contextlib.suppress(OSError):
        if isinstance(target, int):
            os.fchmod(target, mode)
        else:
            os.chmod(target, mode)


def temporary_sibling(
    target: str | os.PathLike[str], suffix: str, *, directory: bool = False
) -> Path:
    """A fresh hidden name next to `target` (``.<name>.<random><suffix>``), so the final
    rename stays on one filesystem; created empty (a file, or a folder with `directory`)
    with the mode a plain open()/mkdir() would give, since the rename publishes it as it is.
    Fresh per call: writers of the same target at once never share one."""
    import tempfile

    target = Path(target)
    prefix = f".{target.name}."
    if directory:
        path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=target.parent))
        set_default_mode(path, directory=True)
        return path
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    try:
        set_default_mode(fd)
    finally:
        os.close(fd)
    return Path(name)


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` through a temporary sibling renamed into place: an
    interrupted write (a signal, a full disk) leaves the old file or none, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = temporary_sibling(path, ".tmp")
    try:
        with open(name, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    return path
