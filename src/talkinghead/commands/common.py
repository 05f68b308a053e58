"""What every command shares: the consoles, and messages with a coloured label."""

from __future__ import annotations

from rich.console import Console
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
