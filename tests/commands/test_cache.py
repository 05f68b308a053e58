"""`talkinghead cache info|clear` on a cache folder set through the environment."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from talkinghead.cli import app
from talkinghead.commands.cache import format_size


def invoke(args: list[str], root: Path, **env: str):
    return CliRunner().invoke(app, ["cache", *args], env={"TALKINGHEAD_CACHE": str(root), **env})


def fill(folder: Path) -> Path:
    """Two entries (the commands only look at file names and sizes) and a temp file in progress."""
    folder.mkdir(parents=True)
    (folder / f"{'a' * 32}.avatar").write_bytes(bytes(3 << 20))
    (folder / f"{'b' * 32}.avatar").write_bytes(bytes(1 << 20))
    writing = folder / f".{'c' * 32}.x1y2.tmp"
    writing.write_bytes(b"THAVATAR partial")
    return writing


def test_info_and_clear(tmp_path):
    folder = tmp_path / "avatars"
    writing = fill(folder)
    info = invoke(["info"], tmp_path, TALKINGHEAD_CACHE_MAX_MB="512")
    assert info.exit_code == 0, info.output
    lines = info.output.splitlines()
    assert lines[0] == f"folder:  {folder}"
    assert lines[1:3] == ["entries: 2", "size:    4.0 MiB"]
    assert lines[3].startswith("limit:   512 MiB ")

    cleared = invoke(["clear"], tmp_path)
    assert cleared.exit_code == 0, cleared.output
    assert f"removed 2 file(s), 4.0 MiB, from {folder}" in cleared.output
    # Another process's entry still being written is left alone.
    assert [p.name for p in folder.iterdir()] == [writing.name]
    after = invoke(["info"], tmp_path, TALKINGHEAD_CACHE_MAX_MB="0")
    assert "entries: 0" in after.output and "limit:   none" in after.output


def test_missing_folder_is_an_empty_cache(tmp_path):
    result = invoke(["info"], tmp_path / "nowhere")
    assert result.exit_code == 0 and "entries: 0" in result.output
    assert "limit:   2.0 GiB" in result.output  # the default
    result = invoke(["clear"], tmp_path / "nowhere")
    assert result.exit_code == 0 and "removed 0 file(s)" in result.output
    assert not (tmp_path / "nowhere").exists()  # looking creates nothing


def test_bad_limit_is_one_line_error(tmp_path, monkeypatch, capsys):
    from _cli_in_process import run_cli

    env = {"TALKINGHEAD_CACHE": str(tmp_path), "TALKINGHEAD_CACHE_MAX_MB": "lots"}
    proc = run_cli(["cache", "info"], monkeypatch, capsys, env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: TALKINGHEAD_CACHE_MAX_MB='lots' is not a size in MiB; "
        "set e.g. 2048, or 0 for no limit"
    ]


def test_format_size():
    assert [format_size(n) for n in (0, 812 * 1024, 3 << 29, 2 << 30, 5 << 40)] == [
        "0 B",
        "812 KiB",
        "1.5 GiB",
        "2.0 GiB",
        "5.0 TiB",
    ]
