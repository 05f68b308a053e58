"""The `talkinghead` command as a whole: stop signals, and no command writing over an input."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _conformance import MEDIA_DIR, skip_missing
from _tiny_release import build_tiny_release

PORTRAIT = MEDIA_DIR / "ditto_example_face.jpg"
SPEECH = MEDIA_DIR / "ditto_example_speech.wav"  # 15.8 s: the render runs long enough to stop
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    if not PORTRAIT.is_file() or not SPEECH.is_file():
        skip_missing(f"{MEDIA_DIR}")
    return build_tiny_release(tmp_path_factory.mktemp("release"))


# -- stop signals ----------------------------------------------------------------------------


# SIGTERM and SIGHUP share one handler; the video and the frames folder each have their own
# clean-up: one case of each signal and each output covers both.
@pytest.mark.parametrize(("signame", "output"), [("SIGTERM", "talking.mp4"), ("SIGHUP", "frames/")])
def test_a_stop_signal_during_rendering_leaves_nothing(release, tmp_path, signame, output):
    """What `timeout`, containers and CI cancels send: the render stops, the temporary video
    (or frames folder) is removed, the exit status is 128 + n, and no traceback."""
    if not hasattr(signal, signame):
        pytest.skip(f"no {signame} here")
    signum = getattr(signal, signame)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "TALKINGHEAD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = ["generate", "--checkpoints", str(release), "-s", str(PORTRAIT), "-a", str(SPEECH)]
    args += ["-o", f"{out_dir}/{output}", "--steps", "1", "--max-size", "256", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "talkinghead", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        # The writer creates its hidden temporary sibling with the first rendered frame.
        deadline = time.monotonic() + 240
        while not any(p.name.startswith(".") for p in out_dir.iterdir()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the render never started: {proc.communicate()[1]}")
            time.sleep(0.02)
        assert proc.poll() is None, "the render finished before the signal could be sent"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert ANSI.sub("", err).strip().splitlines()[-1] == f"stopped by {signame}"
    assert list(out_dir.iterdir()) == []  # no video, no temporary file or folder


def test_the_stop_handlers_are_installed_only_while_the_command_runs() -> None:
    from talkinghead.cli import StopSignal, stop_signals_unwind

    before = signal.getsignal(signal.SIGTERM)
    with stop_signals_unwind(), pytest.raises(StopSignal) as info:
        signal.raise_signal(signal.SIGTERM)
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


# -- no command writes over one of its inputs ------------------------------------------------


@pytest.fixture
def cli(monkeypatch, capsys):
    """`talkinghead ...` in this process: (exit code, stdout, stderr without colour codes)."""
    from talkinghead.cli import main

    def run_cli(*args: str | Path) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["talkinghead", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return exit_info.value.code, out, ANSI.sub("", err)

    return run_cli


@pytest.fixture
def user_files(tmp_path) -> dict[str, Path]:
    """The user's own files and folders, each with content that must survive."""
    files = {
        "video": tmp_path / "talk.mp4",
        "speech": tmp_path / "speech.mp4",
        "portrait": tmp_path / "frames" / "portrait.png",
        "videos": tmp_path / "videos",
        "data": tmp_path / "data",
    }
    files["portrait"].parent.mkdir()
    files["videos"].mkdir()
    files["data"].mkdir()
    for name in ("video", "speech", "portrait"):
        files[name].write_bytes(f"the user's {name}".encode())
    (files["videos"] / "clip.mp4").write_bytes(b"the user's clip")
    (files["data"] / "manifest.json").write_text("{}")
    (tmp_path / "link.mp4").symlink_to(files["video"])
    os.link(files["video"], tmp_path / "hard.mp4")
    return files


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# (arguments, what the one error line says); {name} are the user's files, {tmp} their folder
OVERWRITE_CASES = {
    "generate -o the source video": (
        ["generate", "-s", "{video}", "-a", "{speech}", "-o", "{video}"],
        "talk.mp4: the output is the --source input",
    ),
    "generate -o the audio": (
        ["generate", "-s", "{video}", "-a", "{speech}", "-o", "{speech}"],
        "the output is the --audio input",
    ),
    "generate -o a symlink to the source": (
        ["generate", "-s", "{video}", "-a", "{speech}", "-o", "{tmp}/link.mp4"],
        "the output is the --source input",
    ),
    "generate -o a hard link to the source": (
        ["generate", "-s", "{video}", "-a", "{speech}", "-o", "{tmp}/hard.mp4"],
        "the output is the --source input",
    ),
    "generate -o the frames folder holding the source": (
        ["generate", "-s", "{portrait}", "-a", "{speech}", "-o", "{tmp}/frames/"],
        "the output folder holds the --source input",
    ),
    "dithead generate -o the source": (
        [
            "generate",
            "--method",
            "dithead",
            "--checkpoints",
            "{data}",
            "-s",
            "{video}",
            "-a",
            "{speech}",
            "-o",
            "{video}",
        ],
        "the output is the --source input",
    ),
    "prepare-data into the videos folder": (
        ["prepare-data", "{videos}", "{videos}"],
        "the output is the VIDEOS_DIR input",
    ),
    "prepare-data into a file": (
        ["prepare-data", "{videos}", "{video}"],
        "talk.mp4: OUT_DIR is a file; choose a folder",
    ),
    "train-motion into the data folder": (
        ["train-motion", "{data}", "{data}"],
        "the output is the DATA_DIR input",
    ),
    "train-dithead into the data folder": (
        ["train-dithead", "{data}", "{data}", "--stage", "vq"],
        "the output is the DATA_DIR input",
    ),
    "train-difftalk into the data folder": (
        ["train-difftalk", "{data}", "{data}", "--stage", "autoencoder"],
        "the output is the DATA_DIR input",
    ),
    "evaluate --json the prediction": (
        ["evaluate", "--pred", "{video}", "--ref", "{speech}", "--json", "{video}"],
        "the output is the --pred input",
    ),
    "evaluate --csv the same file as --json": (
        [
            "evaluate",
            "--pred",
            "{video}",
            "--ref",
            "{speech}",
            "--json",
            "{tmp}/r.json",
            "--csv",
            "{tmp}/r.json",
        ],
        "the output is the --",
    ),
    "stream-client -o the audio": (
        ["stream-client", "--avatar", "x", "-a", "{speech}", "-o", "{speech}"],
        "the output is the --audio input",
    ),
}


@pytest.mark.parametrize("case", OVERWRITE_CASES)
def test_an_output_that_is_an_input_is_refused_before_any_work(
    case, cli, user_files, tmp_path
) -> None:
    args, needle = OVERWRITE_CASES[case]
    names = {"tmp": tmp_path, **user_files}
    before = _contents(tmp_path)
    code, _, err = cli(*(arg.format(**names) for arg in args))
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "choose another" in lines[0] or "choose a folder" in lines[0]
    assert _contents(tmp_path) == before  # nothing of the user's changed, nothing added


# The method whose packages are "missing", and the command: refused in one line, nothing written.
MISSING_PACKAGE_CASES = {
    "prepare-data --method dithead": (
        "dithead",
        ["prepare-data", "{videos}", "{tmp}/data", "--method", "dithead"],
    ),
    "train-difftalk": ("difftalk", ["train-difftalk", "{data}", "{tmp}/ckpt", "--stage", "ldm"]),
    "convert-difftalk": ("difftalk", ["convert-difftalk", "{video}", "{tmp}/ckpt"]),
}


@pytest.mark.parametrize("case", MISSING_PACKAGE_CASES)
def test_a_method_without_its_packages_is_refused_in_one_line(
    case, cli, user_files, tmp_path, monkeypatch
) -> None:
    from dataclasses import replace

    from talkinghead.methods import METHODS

    method, args = MISSING_PACKAGE_CASES[case]
    absent = "talkinghead_test_absent_package"
    monkeypatch.setitem(METHODS, method, replace(METHODS[method], requires=(absent,)))
    names = {"tmp": tmp_path, **user_files}
    before = _contents(tmp_path)
    code, _, err = cli(*(arg.format(**names) for arg in args))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"error: --method {method} needs {absent}, not installed"), err
    assert '".[latent]"' in lines[0] and "Traceback" not in err
    assert _contents(tmp_path) == before


# -- messages that name the real problem -----------------------------------------------------


@pytest.fixture
def odd_inputs(tmp_path) -> dict[str, Path]:
    """Inputs that once got a misleading message: a folder, a 1x1 picture, speech named .jpg,
    bytes that are no audio."""
    import numpy as np
    import soundfile as sf
    from PIL import Image

    files = {
        "folder": tmp_path / "portraits",
        "dot": tmp_path / "dot.png",
        "speech_jpg": tmp_path / "speech.jpg",
        "junk_wav": tmp_path / "junk.wav",
        "speech": tmp_path / "speech.wav",
        "portrait": PORTRAIT,  # a good source: the audio after it is checked
    }
    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA_DIR}")
    files["folder"].mkdir()
    Image.new("RGB", (1, 1), (200, 150, 120)).save(files["dot"])
    tone = (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    sf.write(files["speech"], tone, 16000)
    sf.write(files["speech_jpg"], tone, 16000, format="WAV")
    files["junk_wav"].write_bytes(b"hello" * 100)
    return files


# (the source, the audio, extra arguments, what the line says, what it must not say)
MESSAGE_CASES = {
    "folder as source": ("folder", "speech", [], "portraits: the source is a folder, not a file"),
    "folder as audio": ("portrait", "folder", [], "portraits: the audio is a folder, not a file"),
    "1x1 image": ("dot", "speech", [], "dot.png: the picture is 1x1 pixels, too small"),
    "speech named .jpg": ("speech_jpg", "speech", [], "speech.jpg: not an image or video"),
    "junk audio": ("portrait", "junk_wav", [], "junk.wav: not a readable audio file (Invalid data"),
    "negative crop scale": ("dot", "speech", ["--crop-scale", "-1"], "crop scale must be > 0"),
}


@pytest.mark.parametrize("case", MESSAGE_CASES)
def test_a_misleading_input_gets_a_message_naming_the_problem(
    case, cli, odd_inputs, tmp_path
) -> None:
    source, audio, extra, needle = MESSAGE_CASES[case]
    out = tmp_path / "out.mp4"
    args = ["generate", "-s", odd_inputs[source], "-a", odd_inputs[audio], "-o", out, *extra]
    code, _, err = cli(*args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and needle in lines[0], err
    for misleading in ("not found", "Errno", "0x0", "no face", "Traceback"):
        assert misleading not in err
    assert not out.exists()


def test_stream_client_names_a_folder_given_as_a_file(cli, odd_inputs, tmp_path) -> None:
    out = tmp_path / "out.mp4"
    for flag, needle in (("-a", "the audio is a folder"), ("--source", "the source is a folder")):
        inputs = {"-a": odd_inputs["speech"], "--source": odd_inputs["dot"]}
        inputs[flag] = odd_inputs["folder"]
        code, _, err = cli(
            "stream-client", *(x for pair in inputs.items() for x in pair), "-o", out
        )
        assert code == 1 and needle in err and "not found" not in err, err
    assert not out.exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://127.0.0.1:8000/", "not a WebSocket URL; use ws://127.0.0.1:8000/ws"),
        ("https://example.org/ws", "not a WebSocket URL; use wss://example.org/ws"),
        ("localhost:8000", "not a WebSocket URL; use ws://HOST:PORT/ws"),
        ("ws://127.0.0.1:{port}/ws", "cannot reach the server ("),
    ],
)
def test_stream_client_names_a_wrong_or_silent_server_in_one_line(
    url, needle, cli, odd_inputs, tmp_path
) -> None:
    """An http:// URL (the page's) was a websockets InvalidURI traceback; a server that is
    not there read '<urlopen error [Errno 111] Connection refused>'."""
    out = tmp_path / "out.mp4"
    code, _, err = cli(
        "stream-client", "--url", url.format(port=_closed_port()), "-a", odd_inputs["speech"],
        "--source", odd_inputs["dot"], "-o", out,
    )  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err and "urlopen error" not in err and not out.exists()


def test_an_error_message_from_a_library_prints_on_one_line(monkeypatch, capsys) -> None:
    """A TalkingHeadError wrapping a multi-line library message still prints as one line."""
    import typer

    import talkinghead.cli as cli
    from talkinghead.errors import CheckpointError

    def fails() -> None:
        raise CheckpointError("model: cannot read it (first line.\n  Second line.)")

    monkeypatch.setattr(cli, "app", typer.Typer(callback=fails, invoke_without_command=True))
    monkeypatch.setattr(sys, "argv", ["talkinghead"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.strip() == "error: model: cannot read it (first line. Second line.)"
