"""The `talkinghead` command."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from talkinghead import __version__
from talkinghead.errors import TalkingHeadError

app = typer.Typer(
    name="talkinghead",
    help="Diffusion-based, audio-driven talking-head video (Ditto, DiT-Head, DiffTalk).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Diffusion-based, audio-driven talking-head video (Ditto, DiT-Head, DiffTalk)."""


@app.command()
def version() -> None:
    """Print the versions of talkinghead and its main dependencies."""
    import numpy
    import torch

    typer.echo(f"talkinghead {__version__}")
    typer.echo(f"torch {torch.__version__}, numpy {numpy.__version__}, python {sys.version.split()[0]}")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 1."""
    try:
        app()
    except TalkingHeadError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
