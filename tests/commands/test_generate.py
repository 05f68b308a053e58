"""`talkinghead generate` and `info` as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from _conformance import MEDIA_DIR, skip_missing
from _extras import needs_offline_face, skip_without_packages_of
from _tiny_release import build_tiny_release

MEDIA = MEDIA_DIR
PORTRAIT = MEDIA / "ditto_example_face.jpg"
SPEECH = MEDIA / "ditto_example_speech.wav"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA}")
    return build_tiny_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    data, sr = sf.read(SPEECH, dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, data[: int(sr * 0.4)], sr)
    return path


def run(
    args: list[str], tmp_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "TALKINGHEAD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env |= extra_env or {}
    return subprocess.run(
        [sys.executable, "-m", "talkinghead", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_generate_writes_a_video(release, speech, tmp_path) -> None:
    out = tmp_path / "talking.mp4"
    proc = run(
        [
            "generate",
            "--checkpoints",
            str(release),
            "--source",
            str(PORTRAIT),
            "--audio",
            str(speech),
            "--output",
            str(out),
            "--steps",
            "2",
            "--seed",
            "0",
            "--max-size",
            "256",
            "--quiet",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "face backend: mediapipe" in proc.stderr
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 10  # ceil(0.4 s x 25)
    assert "10 frames" in proc.stdout


@pytest.fixture
def run_here(tmp_path, monkeypatch, capsys):
    """`run` in this process, for the refusals: they stop before any model loads, so a
    second Python's start-up buys them nothing."""
    from _cli_in_process import run_cli

    env = {"TALKINGHEAD_CACHE": str(tmp_path / "cache")}
    return lambda args: run_cli(args, monkeypatch, capsys, env)


def _assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_source(tmp_path, speech, run_here) -> None:
    proc = run_here(
        [
            "generate",
            "--source",
            str(tmp_path / "nope.jpg"),
            "--audio",
            str(speech),
            "--output",
            str(tmp_path / "o.mp4"),
        ]
    )
    _assert_one_line_error(proc, "source file not found")


def test_picture_without_a_face(release, speech, tmp_path, run_here) -> None:
    flat = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), (200, 190, 180)).save(flat)
    proc = run_here(
        [
            "generate",
            "--checkpoints",
            str(release),
            "--source",
            str(flat),
            "--audio",
            str(speech),
            "--output",
            str(tmp_path / "o.mp4"),
            "--quiet",
        ]
    )
    _assert_one_line_error(proc, "no face")
    assert not (tmp_path / "o.mp4").exists()


def test_unreadable_audio(release, tmp_path, run_here) -> None:
    junk = tmp_path / "speech.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    proc = run_here(
        [
            "generate",
            "--checkpoints",
            str(release),
            "--source",
            str(PORTRAIT),
            "--audio",
            str(junk),
            "--output",
            str(tmp_path / "o.mp4"),
            "--quiet",
        ]
    )
    _assert_one_line_error(proc, "speech.wav")
    assert not (tmp_path / "o.mp4").exists()


def test_info_lists_checkpoints(release, tmp_path) -> None:
    proc = run(["info", "--checkpoints", str(release)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "decoder" in proc.stdout and "ok" in proc.stdout and "torch" in proc.stdout
    # The blocks generate feeds the motion model (the release's layout here).
    assert "motion model conditions: audio + emotion + eye_open + eye_ball + shape\n" in proc.stdout


def test_info_says_what_runs_where(tmp_path) -> None:
    import onnxruntime
    import torch

    from talkinghead.face.mediapipe_backend import offline_backend_available
    from talkinghead.media.writer import hardware_encoder_works

    proc = run(["info"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(":")[0]: line for line in proc.stdout.splitlines() if ":" in line}
    assert lines["methods"] == "methods: ditto, dithead, difftalk"  # dev brings every extra
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert lines["networks (torch)"] == f"networks (torch): {device}"
    providers = onnxruntime.get_available_providers()
    cuda_ep = "CUDAExecutionProvider" in providers
    assert f"CUDA {'yes' if cuda_ep else 'no'}" in lines["onnxruntime providers"]
    decoder = "onnx" if device == "cpu" else "torch"
    chosen = lines["renderer runtime (--runtime auto)"]
    forms = " (polyphase inference forms)" if device == "cpu" else ""
    assert chosen.endswith(f": warp torch, decoder {decoder}{forms}")
    assert "CPU yes" in lines["onnxruntime providers"]
    nvenc = hardware_encoder_works("h264_nvenc")
    assert ("h264_nvenc" if nvenc else "libx264") in lines["video encoder"]
    hubert_ep = "CUDAExecutionProvider" if device == "cuda" and cuda_ep else "CPUExecutionProvider"
    assert lines["hubert (release ONNX)"].startswith(
        f"hubert (release ONNX): onnxruntime {hubert_ep}"
    )
    # mediapipe 1.x (Python 3.13+) runs only the release's face models.
    assert ("tasks API only" in proc.stdout) is not offline_backend_available()


def test_info_names_the_extra_a_method_lacks(monkeypatch) -> None:
    from talkinghead.commands.generate import _methods_line
    from talkinghead.methods import METHODS

    absent = "talkinghead_test_absent_package"
    monkeypatch.setitem(METHODS, "difftalk", replace(METHODS["difftalk"], requires=(absent,)))
    assert _methods_line() == f"ditto, dithead; difftalk needs {absent} (the latent extra)"


def test_blink_needs_the_release_blink_clip(release, speech, tmp_path, run_here) -> None:
    # The tiny release has no config pkl, so no blink clip (DittoConfig.blink is tested
    # with the pipeline).
    args = ["generate", "--checkpoints", str(release), "-s", str(PORTRAIT), "-a", str(speech)]
    proc = run_here([*args, "-o", str(tmp_path / "o.mp4"), "--blink", "--quiet"])
    _assert_one_line_error(proc, "blink clip")
    assert not (tmp_path / "o.mp4").exists()


# -- fail fast: every option and input is checked before any model is loaded --------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def bad_inputs(tmp_path) -> dict[str, Path]:
    """Inputs a user gets wrong: a picture without a face, files that do not decode."""
    files = {
        "wall": tmp_path / "wall.png",
        "junk_image": tmp_path / "junk.jpg",
        "junk_audio": tmp_path / "junk.wav",
        "empty_audio": tmp_path / "empty.wav",
    }
    Image.new("RGB", (320, 240), (200, 190, 180)).save(files["wall"])
    files["junk_image"].write_bytes(b"this is not a picture")
    files["junk_audio"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(files["empty_audio"], np.zeros(0, np.float32), 16000)
    return files


@pytest.fixture
def cli_without_models(monkeypatch, capsys, tmp_path):
    """`talkinghead ...` in this process, where loading, resolving or downloading any model
    fails the test; returns (exit code, stdout, stderr without colour codes)."""
    import huggingface_hub
    import torch

    import talkinghead.methods.difftalk.pipeline as difftalk
    import talkinghead.methods.dithead.pipeline as dithead
    import talkinghead.methods.ditto.pipeline as ditto
    import talkinghead.models
    from talkinghead.cli import main

    loaded: list[str] = []

    def forbidden(name: str):
        def load(*args, **kwargs):
            loaded.append(name)
            raise AssertionError(f"{name} was called before the inputs were checked")

        return load

    real_snapshot_download = huggingface_hub.snapshot_download

    def cache_lookup_only(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            return forbidden("a download")(*args, **kwargs)
        return real_snapshot_download(*args, **kwargs)

    monkeypatch.setattr(ditto.DittoPipeline, "from_pretrained", forbidden("from_pretrained"))
    monkeypatch.setattr(ditto, "load_official", forbidden("load_official"))
    monkeypatch.setattr(talkinghead.models, "load_official", forbidden("load_official"))
    monkeypatch.setattr(torch, "load", forbidden("torch.load"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", cache_lookup_only)
    monkeypatch.setattr(dithead, "generate_video", forbidden("dithead"))
    monkeypatch.setattr(difftalk, "generate_video", forbidden("difftalk"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a GPU machine
    monkeypatch.setenv("TALKINGHEAD_CACHE", str(tmp_path / "cache"))
    for name in ("GLOG_minloglevel", "TF_CPP_MIN_LOG_LEVEL"):  # the CLI sets them; undo after
        monkeypatch.setenv(name, os.environ.get(name, ""))

    def run_cli(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["talkinghead", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        assert loaded == [], err
        return exit_info.value.code, out, ANSI.sub("", err)

    return run_cli


# (arguments replacing the defaults, what the one-line message must say)
FAIL_FAST_OPTIONS = {
    "emotion": (["--emotion", "Joy"], "unknown emotion 'Joy'"),
    "face backend": (["--face-backend", "foo"], "unknown face backend 'foo'"),
    "cuda without CUDA": (["--device", "cuda"], "CUDA is not available"),
    "device": (["--device", "tpu"], "unknown device 'tpu'"),
    "method": (["--method", "foo"], "unknown method 'foo'"),
    "output suffix": (["-o", "{out}/talking.webm"], "talking.webm"),
    "output folder": (["-o", "{out}/missing/talking.mp4"], "does not exist"),
    "steps 0": (["--steps", "0"], "steps must be"),
    "steps negative": (["--steps", "-3"], "steps must be"),
    "crop scale 0": (["--crop-scale", "0"], "crop scale must be > 0"),
    "crop scale negative": (["--crop-scale", "-1.5"], "crop scale must be > 0"),
    "fade in": (["--fade-in", "-1"], "fade_in must be"),
    "fade out": (["--fade-out", "-10"], "fade_out must be"),
    "seed negative": (["--seed", "-1"], "seed must be between 0 and 2^63-1"),
    "seed too large": (["--seed", str(2**64)], "seed must be between 0 and 2^63-1"),
    "batch size": (["--batch-size", "0"], "batch_size must be"),
    "dithead without checkpoints": (["--method", "dithead"], "needs --checkpoints"),
    "controls file missing": (["--controls", "{out}/../nope.json"], "nope.json: file not found"),
    "controls with dithead": (
        ["--method", "dithead", "--checkpoints", "{out}", "--controls", "{out}/../c.json"],
        "--controls is for --method ditto; --method dithead does not use it",
    ),
    "emotion with dithead": (
        ["--method", "dithead", "--checkpoints", "{out}", "--emotion", "Happy"],
        "--emotion is for --method ditto; --method dithead does not use it",
    ),
    "no-cache with difftalk": (
        ["--method", "difftalk", "--checkpoints", "{out}", "--no-cache"],
        "--cache/--no-cache is for --method ditto",
    ),
    "fps with ditto": (["--fps", "25"], "--fps is for --method dithead or difftalk"),
    "resolution with dithead": (
        ["--method", "dithead", "--checkpoints", "{out}", "--resolution", "256"],
        "--resolution is for --method difftalk",
    ),
    "steps beyond the schedule": (["--steps", "1001"], "from 1 to 1000"),
    "dithead steps beyond the schedule": (
        ["--method", "dithead", "--checkpoints", "{out}", "--steps", "5000"],
        "from 1 to 1000",
    ),
    "difftalk max size": (
        ["--method", "difftalk", "--checkpoints", "{out}", "--max-size", "10"],
        "max_size must be at least 64",
    ),
    "dithead steps": (["--method", "dithead", "--checkpoints", "{out}", "--steps", "0"], "steps"),
    "dithead fps": (["--method", "dithead", "--checkpoints", "{out}", "--fps", "30"], "25 or 50"),
    "difftalk resolution": (
        ["--method", "difftalk", "--checkpoints", "{out}", "--resolution", "300"],
        "256 or 512",
    ),
}
FAIL_FAST_INPUTS = {
    "missing source": ({"-s": "{tmp}/nope.jpg"}, "source file not found"),
    "folder source": ({"-s": "{tmp}"}, "the source is a folder"),
    "undecodable source": ({"-s": "{junk_image}"}, "junk.jpg: "),
    "no face": ({"-s": "{wall}"}, "no face found"),
    "missing audio": ({"-a": "{tmp}/nope.wav"}, "audio file not found"),
    "folder audio": ({"-a": "{tmp}"}, "the audio is a folder"),
    "undecodable audio": ({"-a": "{junk_audio}"}, "junk.wav: not a readable audio file"),
    "empty audio": ({"-a": "{empty_audio}"}, "no audio samples"),
}


def _assert_fails_fast(code: int, out: str, err: str, needle: str, out_dir: Path) -> None:
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err and out == ""
    assert list(out_dir.iterdir()) == []  # no video, no temporary file


@pytest.mark.parametrize("case", FAIL_FAST_OPTIONS)
def test_a_bad_option_fails_fast_in_one_line(case, cli_without_models, speech, tmp_path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    changes, needle = FAIL_FAST_OPTIONS[case]
    if "--method" in changes:
        skip_without_packages_of(changes[changes.index("--method") + 1])
    changes = [arg.format(out=out_dir) for arg in changes]  # a repeated option: the last counts
    args = ["-s", str(PORTRAIT), "-a", str(speech), "-o", str(out_dir / "talking.mp4")]
    _assert_fails_fast(*cli_without_models("generate", *args, *changes), needle, out_dir)


# The other methods share the checks; two cases show it.
INPUT_CASES = [(case, "ditto") for case in FAIL_FAST_INPUTS]
INPUT_CASES += [("no face", "dithead"), ("undecodable audio", "difftalk")]


@pytest.mark.parametrize(("case", "method"), INPUT_CASES)
def test_a_bad_input_fails_fast_in_one_line(
    case, method, cli_without_models, bad_inputs, speech, tmp_path
) -> None:
    skip_without_packages_of(method)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    changes, needle = FAIL_FAST_INPUTS[case]
    names = {"tmp": tmp_path, **bad_inputs}
    inputs = {"-s": str(PORTRAIT), "-a": str(speech)}
    inputs |= {flag: value.format(**names) for flag, value in changes.items()}
    args = [arg for pair in inputs.items() for arg in pair]
    args += ["-o", str(out_dir / "talking.mp4"), "--method", method]
    if method != "ditto":
        args += ["--checkpoints", str(out_dir)]  # never opened: the input is refused first
    _assert_fails_fast(*cli_without_models("generate", *args), needle, out_dir)


@pytest.mark.parametrize("method", ["dithead", "difftalk"])
def test_a_method_without_its_packages_fails_fast_in_one_line(
    method, cli_without_models, speech, tmp_path, monkeypatch
) -> None:
    from talkinghead.methods import METHODS

    absent = "talkinghead_test_absent_package"
    monkeypatch.setitem(METHODS, method, replace(METHODS[method], requires=(absent,)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["-s", str(PORTRAIT), "-a", str(speech), "-o", str(out_dir / "talking.mp4")]
    args += ["--method", method, "--checkpoints", str(out_dir)]
    needle = f'--method {method} needs {absent}, not installed here: pip install -c constraints.txt -e ".[latent]"'
    _assert_fails_fast(*cli_without_models("generate", *args), needle, out_dir)


@pytest.mark.parametrize("method", ["ditto", "dithead"])
def test_no_mediapipe_fails_fast_in_one_line(
    method, cli_without_models, speech, tmp_path, monkeypatch
) -> None:
    """A lean install (or Python 3.13, which mediapipe 0.10.21 has no wheel for) has no face
    backend: the face check says so before any model loads, with no traceback."""
    skip_without_packages_of(method)
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["-s", str(PORTRAIT), "-a", str(speech), "-o", str(out_dir / "talking.mp4")]
    if method != "ditto":
        args += ["--method", method, "--checkpoints", str(out_dir)]
    needle = "face analysis needs mediapipe"
    _assert_fails_fast(*cli_without_models("generate", *args), needle, out_dir)


@needs_offline_face
def test_a_bad_controls_file_fails_fast_in_one_line(cli_without_models, speech, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    bad = tmp_path / "timeline.yaml"
    bad.write_text("keyframes:\n  - {frame: 0, delta_yw: 5}\n")
    args = ["generate", "-s", str(PORTRAIT), "-a", str(speech), "-o", str(out_dir / "t.mp4")]
    result = cli_without_models(*args, "--controls", str(bad))
    _assert_fails_fast(*result, "unknown controls ['delta_yw']", out_dir)
    good = tmp_path / "timeline.json"
    good.write_text('{"keyframes": [{"frame": 0, "delta_yaw": 0}, {"time": 1, "delta_yaw": 15}]}')
    with pytest.raises(AssertionError, match="from_pretrained was called"):
        cli_without_models(*args, "--controls", str(good))


@needs_offline_face
def test_good_inputs_pass_the_checks_and_reach_the_models(cli_without_models, speech, tmp_path):
    """The other side of the tests above: their guard fires once a model is wanted."""
    out = tmp_path / "talking.mp4"
    args = ["generate", "-s", str(PORTRAIT), "-a", str(speech), "-o", str(out), "--seed", "7"]
    with pytest.raises(AssertionError, match="from_pretrained was called"):
        cli_without_models(*args, "--emotion", "happy,Sad", "--crop-scale", "2", "--fade-in", "3")


@pytest.mark.parametrize("config", ["no config pkl", "a config pkl without a blink clip"])
def test_blink_without_a_blink_clip_fails_before_the_models_load(
    config, cli_without_models, release, speech, tmp_path
) -> None:
    import pickle

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    checkpoints = release  # the tiny release has no config pkl
    if config != "no config pkl":
        checkpoints = tmp_path / "checkpoints"  # the config alone: no model is read
        pkl = checkpoints / "ditto_cfg" / "v0.4_hubert_cfg_pytorch.pkl"
        pkl.parent.mkdir(parents=True)
        sections = {"base_cfg": {}, "audio2motion_cfg": {}, "default_kwargs": {"fade_type": ""}}
        pkl.write_bytes(pickle.dumps(sections))
    args = ["-s", str(PORTRAIT), "-a", str(speech), "-o", str(out_dir / "talking.mp4")]
    args += ["--checkpoints", str(checkpoints), "--blink"]
    _assert_fails_fast(*cli_without_models("generate", *args), "blink clip", out_dir)


def test_no_face_is_reported_before_looking_for_checkpoints(bad_inputs, speech, tmp_path) -> None:
    """The real command, no checkpoints anywhere: not "download 2 GB first", and not a single
    line of mediapipe's or TFLite's own logging."""
    out = tmp_path / "talking.mp4"
    env_home = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    args = ["generate", "-s", str(bad_inputs["wall"]), "-a", str(speech), "-o", str(out)]
    proc = run(args, tmp_path, env_home)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad_inputs['wall']}: no face found in the frame; "
        "use a picture where a face is clearly visible"
    ]
    assert not out.exists()


def test_progress_shows_the_render_bar_from_zero_without_third_party_logs(
    release, speech, tmp_path
) -> None:
    out = tmp_path / "talking.mp4"
    args = ["generate", "--checkpoints", str(release), "-s", str(PORTRAIT), "-a", str(speech)]
    args += ["-o", str(out), "--steps", "2", "--max-size", "256"]
    # A terminal as rich sees one: every bar update is drawn, not only the last.
    terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"}
    proc = run(args, tmp_path, terminal)
    assert proc.returncode == 0, proc.stderr
    screens = ANSI.sub("", proc.stderr).replace("\r", "\n").splitlines()
    render = [line.split() for line in screens if line.strip().startswith("render")]
    assert render and render[0][2:4] == ["0/10", "frames"], screens  # the bar exists at 0/N
    assert render[-1][2] == "10/10"
    assert any(line.split()[:1] == ["motion"] and "windows" in line for line in screens)
    noise = ("W0000", "I0000", "INFO: Created TensorFlow", "absl", "XNNPACK", "inference_feedback")
    assert not [line for line in screens if any(n in line for n in noise)], proc.stderr


def test_the_render_bar_shows_frames_per_second_and_time_left() -> None:
    from rich.progress import Progress

    from talkinghead.commands.generate import _rate_and_time

    now = [0.0]
    progress = Progress(get_time=lambda: now[0], disable=True)
    render = progress.add_task("render", total=100)
    for done in (0, 10, 20):
        progress.update(render, completed=done)
        now[0] += 2.0
    task = progress.tasks[render]
    assert _rate_and_time(task) == "  5.0 fps  0:00:06<0:00:16"  # 10 frames / 2 s; 80 left
    progress.update(render, completed=100)
    assert _rate_and_time(progress.tasks[render]) == "0:00:06"  # done: how long it took


def test_native_writes_to_stderr_are_silenced_python_ones_are_not(capfd) -> None:
    from talkinghead.commands.logs import native_stderr_silenced

    with native_stderr_silenced():
        os.write(2, b"W0000 native library noise\n")  # what mediapipe's C++ code does
        print("error: a message for the user", file=sys.stderr)
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "error: a message for the user" in err and "after" in err
    assert "native library noise" not in err
