"""The checks every method's generation runs before any model is loaded (`talkinghead.validation`)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from _audio_files import encode_with_pyav, tone
from talkinghead import validation
from talkinghead.audio.io import probe_audio
from talkinghead.errors import MediaError, SettingsError


def test_steps_seeds_and_face_backends() -> None:
    for ok in (1, 50, np.int64(3)):
        validation.check_steps(ok)
    for bad in (0, -3, 2.5, True, None):
        with pytest.raises(SettingsError, match="steps must be"):
            validation.check_steps(bad)
    for ok in (None, 0, 2**63 - 1):
        validation.check_seed(ok)
    for bad in (-1, 2**63, 1.0, False):
        with pytest.raises(SettingsError, match="seed must be between 0 and 2"):
            validation.check_seed(bad)
    for ok in ("auto", "mediapipe", "release"):
        validation.check_face_backend(ok)
    with pytest.raises(SettingsError, match="unknown face backend 'dlib'"):
        validation.check_face_backend("dlib")


def test_devices(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert validation.resolve_device("auto") == "cpu"
    assert validation.resolve_device("CPU") == "cpu"
    with pytest.raises(SettingsError, match="CUDA is not available"):
        validation.resolve_device("cuda:0")
    with pytest.raises(SettingsError, match="unknown device 'gpu'"):
        validation.resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert validation.resolve_device("auto") == "cuda"
    assert validation.resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(SettingsError, match=r"1 CUDA device\(s\), cuda:0..cuda:0"):
        validation.resolve_device("cuda:1")


def test_outputs_are_checked_without_creating_anything(tmp_path) -> None:
    for ok in ("-", tmp_path / "talking.mp4", tmp_path / "talking.MKV", f"{tmp_path}/frames/"):
        validation.check_output(ok)
    validation.check_output(f"{tmp_path}/new/deeper/frames/")  # created on demand
    with pytest.raises(MediaError, match=r"talking\.webm"):
        validation.check_output(tmp_path / "talking.webm")
    with pytest.raises(MediaError, match="does not exist"):
        validation.check_output(tmp_path / "missing" / "talking.mp4")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(MediaError, match="files other than frames"):
        validation.check_output(tmp_path / "notes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_probe_audio_reads_headers_and_ffmpeg_files(tmp_path) -> None:
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, tone(300, 24000, 0.5), 24000)
    assert probe_audio(wav) == pytest.approx(0.5)
    m4a = tmp_path / "speech.m4a"
    encode_with_pyav(m4a, tone(300, 44100, 1.0), 44100, "aac", "ipod")
    assert probe_audio(m4a) == pytest.approx(1.0, abs=0.1)
    assert probe_audio((np.zeros(8000, np.float32), 16000)) == pytest.approx(0.5)
    picture = tmp_path / "picture.png"
    Image.new("RGB", (16, 16)).save(picture)
    with pytest.raises(MediaError, match="no audio stream"):
        probe_audio(picture)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    with pytest.raises(MediaError, match="no audio samples"):
        probe_audio(empty)


def test_sources_in_memory_and_on_disk(tmp_path) -> None:
    frame = validation.check_source(np.zeros((101, 80, 3), np.uint8))
    assert frame.shape == (100, 80, 3)  # as registration resizes: even sides
    picture = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(picture)
    assert validation.check_source(picture, max_size=200).shape == (150, 200, 3)
    with pytest.raises(MediaError, match="source file not found"):
        validation.check_source(tmp_path / "nope.png")


def test_an_output_that_is_an_input_is_refused(tmp_path) -> None:
    """The same path, a symlink to it, a hard link (same inode) or a frames folder holding
    an input: each is refused, naming the input; other outputs pass."""
    import os

    source = tmp_path / "talk.mp4"
    source.write_bytes(b"the user's video")
    audio = tmp_path / "speech.wav"
    audio.write_bytes(b"the user's speech")
    inputs = {"--source": source, "--audio": audio, "--hubert": None}
    (tmp_path / "link.mp4").symlink_to(source)
    os.link(source, tmp_path / "hard.mp4")
    (tmp_path / "sub").mkdir()
    cases = {
        str(source): "the --source input",
        str(tmp_path / "sub" / ".." / "talk.mp4"): "the --source input",
        str(tmp_path / "link.mp4"): "the --source input",
        str(tmp_path / "hard.mp4"): "the --source input",
        str(audio): "the --audio input",
        f"{tmp_path}/": "the output folder holds the --source input",
    }
    for output, needle in cases.items():
        with pytest.raises(MediaError, match=needle) as info:
            validation.check_not_an_input(output, inputs)
        assert "choose another output" in str(info.value) and "\n" not in str(info.value)
    for fine in (tmp_path / "new.mp4", f"{tmp_path}/sub/frames/", "-", None):
        validation.check_not_an_input(fine, inputs)
    # A folder that is filled, not replaced (a data or run folder) may hold inputs...
    validation.check_not_an_input(tmp_path, inputs, output_is_folder=False)
    # ...but not be one; in-memory inputs are skipped.
    with pytest.raises(MediaError, match="the output is the DATA_DIR input"):
        validation.check_not_an_input(tmp_path, {"DATA_DIR": tmp_path}, output_is_folder=False)
    validation.check_not_an_input(source, {"--source": np.zeros((4, 4, 3), np.uint8)})
    assert source.read_bytes() == b"the user's video" and audio.read_bytes() == b"the user's speech"
