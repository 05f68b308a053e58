"""The shared consoles print user text as it is: brackets in paths and pip hints survive."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from talkinghead.commands.common import err_console, labelled, out_console

HINT = "pip install 'talkinghead[latent]' for /data/take [final]/face.jpg"


def _render(console: Console, *objects) -> str:
    with console.capture() as captured:
        console.print(*objects, highlight=False, soft_wrap=True)
    return captured.get()


def test_messages_keep_their_brackets() -> None:
    assert _render(err_console, HINT).strip() == HINT
    assert _render(out_console(), HINT).strip() == HINT


def test_labelled_styles_only_the_label() -> None:
    text = labelled("error:", "bold red", HINT)
    assert text.plain == f"error: {HINT}"
    (span,) = text.spans
    assert (span.start, span.end, span.style) == (0, len("error:"), "bold red")


def test_table_cells_keep_their_brackets() -> None:
    table = Table()
    table.add_column("reason")
    table.add_row(HINT)
    assert "talkinghead[latent]" in _render(out_console(), table)
