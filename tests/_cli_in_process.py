"""`python -m talkinghead ARGS` run in the test's own process, for the commands that stop
before any model or worker: a second Python's start-up (torch and all, seconds on a busy
machine) buys such a test nothing.

`run_cli` goes through the same `talkinghead.cli.main` as the console script (the one-line
``error:`` message, the exit status) and returns what `subprocess.run` would, so the
callers' assertions on ``returncode``, ``stdout`` and ``stderr`` stay as they are. What a
command sets for the rest of its process (the environment variables and logger levels that
quiet native libraries, a logging configuration) is put back afterwards: a later test's
subprocess must not inherit it. Tests of what only a fresh process shows (signals,
third-party logging to the terminal, a process environment read at import) keep their
subprocesses.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import pytest


@contextmanager
def _process_state_kept() -> Iterator[None]:
    environ = dict(os.environ)
    loggers = logging.root.manager.loggerDict
    levels = {name: lg.level for name, lg in loggers.items() if isinstance(lg, logging.Logger)}
    root_level, root_handlers = logging.root.level, list(logging.root.handlers)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        for name, lg in list(loggers.items()):
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))
        logging.root.setLevel(root_level)
        logging.root.handlers[:] = root_handlers


def run_cli(
    args: Sequence[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``talkinghead ARGS`` through `main`, with `env` set for the run."""
    from talkinghead.cli import main

    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    argv = ["talkinghead", *map(str, args)]
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()  # only this command's output
    with _process_state_kept(), pytest.raises(SystemExit) as done:
        main()
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, done.value.code, out, err)
