"""The `talkinghead` command.

Commands live in `talkinghead.commands.*` (one module per area, each with a
`register(app)`); this module assembles them and turns user errors into one
line on stderr with exit code 1.
"""

from __future__ import annotations

import importlib
import sys

import typer

from talkinghead import __version__
from talkinghead.commands.common import err_console
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
    "download",
    "export",
    "serve",
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


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 1."""
    try:
        app()
    except TalkingHeadError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
