"""Sub-commands of the `talkinghead` CLI, one module per area.

Each module defines `register(app: typer.Typer) -> None`, which adds its
commands; `talkinghead.cli` calls them all. Heavy imports (torch, models) stay
inside the command functions so `talkinghead --help` is fast.
"""
