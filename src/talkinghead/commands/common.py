"""What every command shares: the stderr console."""

from __future__ import annotations

from rich.console import Console

err_console = Console(stderr=True)
