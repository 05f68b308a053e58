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


def test_progress_descriptions_show_as_they_are() -> None:
    """train-motion, prepare-data and animate once gave their bars the markup string
    "[progress.description]{task.description}", which the markup-off console printed
    literally in front of every description."""
    from pathlib import Path

    from rich.progress import BarColumn, Progress

    from talkinghead.commands.common import description_column

    console = Console(markup=False, width=100, force_terminal=False)
    bar = Progress(description_column(), BarColumn(), console=console, auto_refresh=False)
    with console.capture() as captured, bar:
        bar.add_task("take [2].mp4", total=4, completed=2)
        bar.refresh()
    text = captured.get()
    assert "take [2].mp4" in text and "[progress" not in text
    # No command passes a markup string as a column any more.
    package = Path(__import__("talkinghead").__file__).parent
    offenders = [p for p in package.rglob("*.py") if '"[progress.' in p.read_text()]
    assert offenders == []


def test_transient_bars_leave_nothing_in_a_log(capsys, monkeypatch) -> None:
    """Rich draws no bar where stderr is no terminal, yet a transient one still ended with an
    empty line: `train-difftalk ... 2> log` left a blank line there."""
    from talkinghead.commands.common import err_console, transient_progress

    with transient_progress() as bar:
        bar.add_task("training", total=3, completed=1)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(type(err_console), "is_terminal", property(lambda self: True))
    assert not transient_progress().disable
    assert transient_progress(main=False).disable  # other `accelerate launch` processes
