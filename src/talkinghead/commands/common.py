"""What every command shares: the consoles, and messages with a coloured label."""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress, ProgressColumn, TextColumn
from rich.text import Text

# Markup off: messages carry the user's paths and hints such as pip install
# 'talkinghead[latent]', which rich would otherwise read as style tags and drop.
err_console = Console(stderr=True, markup=False)


def out_console() -> Console:
    """A stdout console for a command's result (tables, summaries), markup off likewise."""
    return Console(markup=False)


def labelled(label: str, style: str, message: object) -> Text:
    """``label message`` with only the label styled; the message is printed as it is."""
    return Text.assemble((label, style), " ", str(message))


def description_column() -> TextColumn:
    """A progress bar's description, styled as rich's default one and shown as it is: a
    column given as a markup string (``[progress.description]{task.description}``)
    reaches the markup-off console as text, and a video's name may hold brackets."""
    return TextColumn("{task.description}", style="progress.description", markup=False)


def transient_progress(*columns: str | ProgressColumn, main: bool = True) -> Progress:
    """A progress bar on stderr that clears itself when done. Off where stderr is no
    terminal (a log, a pipe): rich draws nothing there and would leave one empty line;
    off too outside the main process of `accelerate launch`."""
    return Progress(
        *columns,
        console=err_console,
        transient=True,
        disable=not main or not err_console.is_terminal,
    )
