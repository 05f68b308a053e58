"""Keeping third-party log lines out of the progress bars, unless ``--verbose``.

mediapipe's C++ core (absl logging: "W0000 ... inference_feedback_manager.cc"),
TFLite ("INFO: Created TensorFlow Lite XNNPACK delegate") and glog write straight
to file descriptor 2, from their own threads and at any time, and mediapipe 0.10
honours none of GLOG_minloglevel / TF_CPP_MIN_LOG_LEVEL. So while a command runs,
descriptor 2 points at /dev/null and Python's ``sys.stderr`` (the progress bars,
messages, warnings, tracebacks) writes to a duplicate of the real one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

# For library versions that do honour them; set before mediapipe/TensorFlow are imported.
# HF_HUB_VERBOSITY: huggingface_hub sets its logger's level when imported; "error" keeps its
# retry warnings while the hub is unreachable out (the error then says it in one line).
NATIVE_LOG_ENV = {"GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "3", "HF_HUB_VERBOSITY": "error"}
THIRD_PARTY_LOGGERS = ("absl", "mediapipe", "tensorflow", "huggingface_hub")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Descriptor 2 -> /dev/null for the block; ``sys.stderr`` keeps reaching the terminal."""
    try:
        sys.stderr.flush()
        python_on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured stream (tests) has no descriptor
        python_on_fd2 = False
    try:
        real_fd2 = os.dup(2)
    except OSError:  # no descriptor 2 at all: nothing to silence
        yield
        return
    python_stderr = sys.stderr
    replacement: io.TextIOWrapper | None = None
    if python_on_fd2:
        replacement = open(  # noqa: SIM115 - closed in the finally below
            os.dup(real_fd2),
            "w",
            buffering=1,
            encoding=python_stderr.encoding,
            errors=python_stderr.errors,
        )
        sys.stderr = replacement
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(real_fd2, 2)
        os.close(real_fd2)
        if replacement is not None:
            sys.stderr = python_stderr
            replacement.close()


@contextlib.contextmanager
def third_party_logs(verbose: bool) -> Iterator[None]:
    """Verbose: our INFO logs and everything native libraries print. Else: neither."""
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("talkinghead").setLevel(logging.INFO)
        yield
        return
    for name, value in NATIVE_LOG_ENV.items():
        os.environ.setdefault(name, value)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    with native_stderr_silenced():
        yield


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Any) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def log_lines_through(console: Any, level: int = logging.INFO) -> Iterator[None]:
    """Our log lines (training losses) printed by `console` for the block.

    A handler on a plain stream writes wherever the cursor is, which under a live rich
    progress bar is the end of the bar's line; the bar's own console prints above it.
    """
    logger = logging.getLogger("talkinghead")
    handler = _ConsoleHandler(console)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # once here, not again through a root handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.level, logger.propagate = saved
