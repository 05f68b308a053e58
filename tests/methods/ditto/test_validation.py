"""Settings and input checks that run before any model is loaded (`pipelines.validation`)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from _audio_files import encode_with_pyav, tone
from talkinghead.audio.io import probe_audio
from talkinghead.errors import MediaError, SettingsError
from talkinghead.face import CropConfig
from talkinghead.methods.ditto import validation
from talkinghead.methods.ditto.pipeline import DittoConfig, DittoPipeline


def test_emotions_accepted_and_refused() -> None:
    for emotion in ("Happy", "happy", 3, ["Happy", "Sad"], [[4], [3, 4]]):
        validation.check_emotion(emotion)
    for emotion in ("Joy", 8, -1, [], ["Happy", "Joy"]):
        with pytest.raises(SettingsError, match="unknown emotion"):
            validation.check_emotion(emotion)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "steps must be"),
        ({"steps": 2.5}, "steps must be"),
        ({"seed": -1}, "seed must be"),
        ({"seed": 2**63}, "seed must be"),
        ({"fade_out": -2}, "fade_out must be"),
        ({"crop": CropConfig(scale=0.0)}, "crop scale must be > 0"),
        ({"crop": CropConfig(vy_ratio=float("nan"))}, "crop vy_ratio"),
        ({"delta_yaw": float("inf")}, "delta_yaw must be a finite number"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"max_size": 10}, "max_size must be at least 64"),
        ({"face_backend": "dlib"}, "unknown face backend 'dlib'"),
    ],
)
def test_ditto_config_checks(change, message) -> None:
    validation.check_ditto_config(DittoConfig())
    validation.check_ditto_config(DittoConfig(seed=2**63 - 1, steps=1, max_size=None))
    with pytest.raises(SettingsError, match=message):
        validation.check_ditto_config(DittoConfig().replace(**change))


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


def test_from_pretrained_checks_settings_before_looking_for_checkpoints(tmp_path) -> None:
    missing = tmp_path / "no-checkpoints-here"
    with pytest.raises(SettingsError, match="unknown emotion"):
        DittoPipeline.from_pretrained(missing, emotion="Joy")
    with pytest.raises(SettingsError, match="unknown device"):
        DittoPipeline.from_pretrained(missing, device="gpu")


def test_generate_refuses_a_bad_output_before_any_work(tmp_path, monkeypatch) -> None:
    from _tiny_release import build_tiny_release

    pipe = DittoPipeline.from_pretrained(build_tiny_release(tmp_path / "release"), device="auto")
    assert pipe.config.device in ("cpu", "cuda")

    def no_work(*args, **kwargs):
        raise AssertionError("registration started before the output was checked")

    monkeypatch.setattr(pipe, "register", no_work)
    speech = np.zeros(16000, np.float32)
    with pytest.raises(MediaError, match=r"talking\.webm"):
        pipe.generate(np.zeros((64, 64, 3), np.uint8), speech, tmp_path / "talking.webm")
    with pytest.raises(SettingsError, match="unknown emotion"):
        pipe.generate(np.zeros((64, 64, 3), np.uint8), speech, tmp_path / "a.mp4", emotion="Joy")


def test_the_face_check_uses_the_backend_generation_will_use(tmp_path, monkeypatch) -> None:
    import talkinghead.face
    from talkinghead.methods.ditto.checkpoints import ReleaseCheckpoints

    built: list[tuple[str, object]] = []
    monkeypatch.setattr(
        talkinghead.face,
        "create_face_analyzer",
        lambda backend, aux_dir=None, crop=None: built.append((backend, aux_dir)) or backend,
    )
    local = ReleaseCheckpoints.from_root(tmp_path)  # on disk, without the face models
    aux_dir = local.aux_models["hubert"].parent
    cases = [
        # (backend, local checkpoints) -> (backend built, aux dir, reusable for generation)
        (("auto", local), ("auto", aux_dir, True)),
        (("auto", None), ("auto", None, False)),  # a download may bring the face models
        (("mediapipe", None), ("mediapipe", None, True)),
        (("release", local), ("mediapipe", None, False)),  # their files are not there (yet)
    ]
    for (backend, checkpoints), (expected, expected_dir, reusable) in cases:
        check = validation.face_check_analyzer(backend, checkpoints)
        assert (check.analyzer, check.same_as_generation) == (expected, reusable)
        assert built.pop() == (expected, expected_dir)
    assert validation.local_checkpoints(tmp_path / "missing") is None
    assert validation.local_checkpoints(tmp_path).root == tmp_path
