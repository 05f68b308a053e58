"""`talkinghead cache info|clear`: the on-disk cache of registered avatars."""

from __future__ import annotations

import typer

from talkinghead.errors import TalkingHeadError

cache_app = typer.Typer(
    help="The avatar cache: registered sources, reused by later runs "
    "($TALKINGHEAD_CACHE, size limit $TALKINGHEAD_CACHE_MAX_MB).",
    no_args_is_help=True,
)


def format_size(n_bytes: int) -> str:
    """Binary units, as the limit is set in MiB: 0 B, 812 KiB, 1.5 GiB."""
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" or size >= 100 else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@cache_app.command("info")
def info() -> None:
    """Show the cache folder, its entries, their total size and the size limit."""
    from talkinghead.methods.ditto.avatar import CACHE_MAX_MB_ENV, AvatarCache

    cache = AvatarCache()
    entries = cache.entries()
    limit = format_size(cache.max_bytes) if cache.max_bytes else "none"
    typer.echo(f"folder:  {cache.directory}")
    typer.echo(f"entries: {len(entries)}")
    typer.echo(f"size:    {format_size(sum(e.size for e in entries))}")
    typer.echo(f"limit:   {limit} (set {CACHE_MAX_MB_ENV} in MiB; 0: no limit)")


@cache_app.command("clear")
def clear() -> None:
    """Delete every cached avatar (sources are registered again on their next use)."""
    from talkinghead.methods.ditto.avatar import AvatarCache

    cache = AvatarCache()
    size = sum(e.size for e in cache.entries())
    try:
        removed = cache.clear()
    except OSError as exc:
        raise TalkingHeadError(
            f"cannot clear the avatar cache {cache.directory} ({exc.strerror or exc}); "
            "check the folder's permissions"
        ) from exc
    typer.echo(f"removed {removed} file(s), {format_size(size)}, from {cache.directory}")


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
