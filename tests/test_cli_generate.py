"""`talkinghead generate` and `info` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import pytest
import soundfile as sf
from PIL import Image

from _conformance import REPO_ROOT
from _tiny_release import build_tiny_release

MEDIA = REPO_ROOT.parent / "shared" / "media"
PORTRAIT = MEDIA / "ditto_example_face.jpg"
SPEECH = MEDIA / "ditto_example_speech.wav"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    if not PORTRAIT.is_file():
        pytest.skip(f"test media not found in {MEDIA}")
    return build_tiny_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    data, sr = sf.read(SPEECH, dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, data[: int(sr * 0.4)], sr)
    return path


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TALKINGHEAD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
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


def _assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_source(tmp_path, speech) -> None:
    proc = run(
        [
            "generate",
            "--source",
            str(tmp_path / "nope.jpg"),
            "--audio",
            str(speech),
            "--output",
            str(tmp_path / "o.mp4"),
        ],
        tmp_path,
    )
    _assert_one_line_error(proc, "source file not found")


def test_picture_without_a_face(release, speech, tmp_path) -> None:
    flat = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), (200, 190, 180)).save(flat)
    proc = run(
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
        ],
        tmp_path,
    )
    _assert_one_line_error(proc, "no face")
    assert not (tmp_path / "o.mp4").exists()


def test_unreadable_audio(release, tmp_path) -> None:
    junk = tmp_path / "speech.wav"
    junk.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    proc = run(
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
        ],
        tmp_path,
    )
    _assert_one_line_error(proc, "speech.wav")
    assert not (tmp_path / "o.mp4").exists()


def test_info_lists_checkpoints(release, tmp_path) -> None:
    proc = run(["info", "--checkpoints", str(release)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "decoder" in proc.stdout and "ok" in proc.stdout and "torch" in proc.stdout


def test_blink_needs_the_release_blink_clip() -> None:
    import numpy as np

    from talkinghead.commands.generate import _blink_setting
    from talkinghead.errors import TalkingHeadError
    from talkinghead.motion.stitch import StitchConfig

    with pytest.raises(TalkingHeadError, match="blink clip"):
        _blink_setting(StitchConfig(), True)
    clip = StitchConfig(delta_eye_arr=np.zeros((15, 63), np.float32))
    assert _blink_setting(clip, True).delta_eye_open_n == 0
    assert _blink_setting(clip, False).delta_eye_open_n == -1
