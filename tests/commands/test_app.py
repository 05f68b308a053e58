"""`talkinghead app`: bad options are one line and exit 1, before gradio or a model loads."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def cli(monkeypatch, capsys):
    from talkinghead.cli import main

    def run_cli(*args: str | Path) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["talkinghead", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code, ANSI.sub("", capsys.readouterr().err)

    return run_cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "dithead"], "--model 'dithead': use METHOD=DIR"),
        (["--model", "wav2lip=/tmp"], "unknown method 'wav2lip'"),
        (["--model", "ditto=/tmp"], "Ditto's weights come with --checkpoints DIR"),
        (["--model", "dithead=/no/such/folder"], "/no/such/folder is not a folder"),
        (["--checkpoints", "/no/such/release"], "checkpoint directory not found"),
        (["--face-backend", "dlib"], "unknown face backend 'dlib'"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--fp16", "--device", "cpu"], "--fp16 needs a CUDA device"),
    ],
)
def test_bad_options_are_one_line_errors(cli, args, message) -> None:
    code, err = cli("app", *args)
    assert code == 1
    assert message in err
    assert err.startswith("error:") and "Traceback" not in err


def test_the_command_is_listed(cli) -> None:
    code, _ = cli("app", "--help")
    assert code == 0
