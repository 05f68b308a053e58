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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_app_says_where_it_is_and_a_taken_port_is_one_line(tmp_path) -> None:
    """Our own address line instead of gradio's (whose hint, share=True in launch(), is for
    its Python API); Ctrl-C stops the app; a taken port is a one-line error (it was
    gradio's message naming launch()'s server_port)."""
    import os
    import select
    import signal
    import socket
    import subprocess
    import time

    pytest.importorskip("gradio")
    from _tiny_release import build_tiny_release

    release = build_tiny_release(tmp_path / "release")
    port = _free_port()
    cmd = [sys.executable, "-m", "talkinghead", "app", "--checkpoints", str(release),
           "--device", "cpu", "--port", str(port), "--output-dir", str(tmp_path / "clips")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    app = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        ready, _, _ = select.select([app.stderr], [], [], 180)  # gradio imports slowly
        assert ready, "no line from the app in 180 s"
        line = app.stderr.readline()  # the first line: nothing of gradio's before ours
        assert line.strip() == f"app on http://127.0.0.1:{port}/ (Ctrl-C stops it)", line
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        taken = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert taken.returncode == 1 and "Traceback" not in taken.stderr
        last = taken.stderr.strip().splitlines()[-1]
        assert last == (
            f"error: cannot serve on 127.0.0.1:{port}: the port is taken (or not allowed "
            "here); choose another --port"
        )
        app.send_signal(signal.SIGINT)
        start = time.monotonic()
        app.wait(timeout=60)
        assert time.monotonic() - start < 60
        out = app.stdout.read() + app.stderr.read()
        assert "share=True" not in out and "Traceback" not in out
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
