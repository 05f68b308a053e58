"""The `talkinghead` command.

Commands live in `talkinghead.commands.*` (one module per area, each with a
`register(app)`); this module assembles them and turns user errors into one
line on stderr with exit code 1, and SIGTERM/SIGHUP into the same unwinding as
Ctrl-C (temporary files removed, exit status 128 + the signal's number).
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
from collections.abc import Iterator
from types import FrameType

import typer

from talkinghead import __version__
from talkinghead.commands.common import err_console, labelled
from talkinghead.errors import TalkingHeadError
from talkinghead.methods import METHODS

app = typer.Typer(
    name="talkinghead",
    help="Diffusion-based, audio-driven talking-head video (Ditto, DiT-Head, DiffTalk).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules under talkinghead.commands that contribute commands, in --help order.
COMMAND_MODULES = (
    "generate",
    "batch",
    "download",
    "export",
    "serve",
    "app",
    "data",
    "evaluate",
    "cache",
)


@app.callback()
def _root() -> None:
    """Diffusion-based, audio-driven talking-head video (Ditto, DiT-Head, DiffTalk)."""


@app.command()
def version() -> None:
    """Print the versions of talkinghead and its main dependencies."""
    import numpy
    import torch

    typer.echo(f"talkinghead {__version__}")
    typer.echo(
        f"torch {torch.__version__}, numpy {numpy.__version__}, python {sys.version.split()[0]}"
    )


for _name in COMMAND_MODULES:
    importlib.import_module(f"talkinghead.commands.{_name}").register(app)
# Each method adds its own commands (training), as its registry line names them.
for _method in METHODS.values():
    _method.entry_point("commands")(app)


# Ctrl-C is KeyboardInterrupt (typer exits 130); these are what `timeout`, container
# runtimes, CI cancels and a closed terminal send.
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class StopSignal(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt: the writers'
    ``except BaseException`` abort paths remove their temporary files, and no
    ``except Exception`` (a failed video in a batch, say) swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # One signal starts the unwinding; a repeat (CI often sends two) must not cut the cleanup.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise StopSignal(signum)


@contextlib.contextmanager
def stop_signals_unwind() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise `StopSignal` in the main thread."""
    previous = {sig: signal.signal(sig, _raise_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 1; SIGTERM
    and SIGHUP unwind like Ctrl-C and exit with 128 + the signal's number."""
    try:
        with stop_signals_unwind():
            app()
    except TalkingHeadError as exc:
        # One line, whatever a wrapped third-party message brought (transformers' span lines).
        message = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
        err_console.print(labelled("error:", "bold red", message), highlight=False, soft_wrap=True)
        sys.exit(1)
    except StopSignal as stop:
        err_console.print(str(stop), highlight=False)
        sys.exit(128 + stop.signum)


if __name__ == "__main__":
    main()
