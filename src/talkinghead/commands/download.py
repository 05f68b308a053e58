"""`talkinghead download`: fetch the Ditto release from the model hub."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from talkinghead.commands.common import err_console


def download(
    revision: str | None = typer.Option(
        None,
        "--revision",
        help="Branch, tag or commit of the model-hub repo. Default: the pinned release commit.",
    ),
    directory: Path | None = typer.Option(
        None,
        "--dir",
        help="Folder to put ditto_pytorch/ and ditto_cfg/ in (then pass it as --checkpoints). "
        "Default: the Hugging Face cache, where generate finds it by itself.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Download the Ditto release (ditto_pytorch/, ditto_cfg/) and print where it went."""
    from talkinghead.methods.ditto.checkpoints import (
        DEFAULT_REVISION,
        HUB_REPO_ID,
        RELEASE_SIZE,
        download_release,
        hub_cache_dir,
    )

    if directory is not None and directory.exists() and not directory.is_dir():
        from talkinghead.errors import SettingsError

        raise SettingsError(
            f"--dir {directory}: a file, not a folder; name a folder to put the release in"
        )
    dest = directory if directory is not None else hub_cache_dir()
    rev = revision or DEFAULT_REVISION
    err_console.print(
        f"fetching {HUB_REPO_ID}@{rev} (ditto_pytorch/, ditto_cfg/; {RELEASE_SIZE}) into {dest}",
        highlight=False,
        soft_wrap=True,
    )
    _show_hub_progress(not quiet)
    ckpts = download_release(directory, revision=revision)
    typer.echo(str(ckpts.root))
    if directory is not None:
        hint = f"use it with: talkinghead generate --checkpoints {ckpts.root} ..."
    elif revision is not None and revision != DEFAULT_REVISION:
        hint = f"talkinghead generate --revision {revision} finds it in the cache"
    else:
        hint = "talkinghead generate finds it in the cache (no --checkpoints needed)"
    err_console.print(hint, highlight=False, soft_wrap=True)


def _show_hub_progress(enabled: bool) -> None:
    """huggingface_hub draws the bars; make sure nothing turned them off (or on, with --quiet)."""
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:
        return  # download_release explains that huggingface_hub is missing
    with warnings.catch_warnings():
        # HF_HUB_DISABLE_PROGRESS_BARS set by the user wins; the hub warns about that.
        warnings.simplefilter("ignore")
        (enable_progress_bars if enabled else disable_progress_bars)()


def register(app: typer.Typer) -> None:
    app.command()(download)
