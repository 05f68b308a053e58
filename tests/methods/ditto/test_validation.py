"""Ditto's own checks that run before any model is loaded (`methods.ditto.validation`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from talkinghead.errors import MediaError, SettingsError, TalkingHeadError
from talkinghead.face import CropConfig
from talkinghead.methods.ditto import validation
from talkinghead.methods.ditto.checkpoints import ReleaseCheckpoints
from talkinghead.methods.ditto.config import DittoConfig
from talkinghead.methods.ditto.pipeline import DittoPipeline


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


def _release_config(root: Path, **default_kwargs: object) -> ReleaseCheckpoints:
    """A checkpoints folder holding only a release config pkl with these default_kwargs."""
    local = ReleaseCheckpoints.from_root(root)
    local.config.parent.mkdir(parents=True)
    cfg = {"base_cfg": {}, "audio2motion_cfg": {}, "default_kwargs": default_kwargs}
    local.config.write_bytes(pickle.dumps(cfg))
    return ReleaseCheckpoints.from_root(root)


def test_blink_is_checked_against_the_release_config_before_loading(tmp_path) -> None:
    blink = {"blink": True}
    bare = ReleaseCheckpoints.from_root(tmp_path / "bare")  # no config pkl
    # Nothing local, or a cache a download may complete: from_pretrained decides later.
    validation.check_release_settings(blink, None, final=True)
    validation.check_release_settings(blink, bare)
    # Nothing more will arrive: generation would run on the defaults, which have no clip.
    with pytest.raises(TalkingHeadError, match="blink clip"):
        validation.check_release_settings(blink, bare, final=True)
    # A config pkl on disk is the one generation loads, downloads or not.
    without_clip = _release_config(tmp_path / "without", fade_type="")
    with pytest.raises(TalkingHeadError, match="blink clip"):
        validation.check_release_settings(blink, without_clip)
    clip = np.zeros((5, 63), np.float32)
    with_clip = _release_config(tmp_path / "with", delta_eye_arr=clip, delta_eye_open_n=5)
    validation.check_release_settings(blink, with_clip)
    validation.check_release_settings({"blink": False}, without_clip, final=True)
    validation.check_release_settings({}, bare, final=True)


def test_an_emotion_the_motion_model_cannot_show_is_refused_before_loading(tmp_path) -> None:
    from talkinghead.errors import SettingsError
    from talkinghead.methods.ditto.checkpoints import SIDECAR_NAME

    local = _release_config(tmp_path)
    models = local.models["lmdm"].parent
    models.mkdir(parents=True)
    validation.check_release_settings({"emotion": "Happy"}, local)  # the release's layout
    (models / SIDECAR_NAME).write_text('{"conditions": {"use_emo": false}}')
    validation.check_release_settings({"emotion": "Neutral"}, local)
    validation.check_release_settings({"emotion": [4, 4]}, local)  # Neutral per frame
    for emotion in ("Happy", [4, 3], [[4], [4, 5]]):  # a label, a mix, one per frame
        with pytest.raises(SettingsError, match="trained without the emotion condition"):
            validation.check_release_settings({"emotion": emotion}, local)
    timeline = {"keyframes": [{"frame": 0, "emotion": "Happy"}]}
    with pytest.raises(SettingsError, match="the controls timeline sets emotion"):
        validation.check_release_settings({"controls": timeline}, local)
    (models / SIDECAR_NAME).write_text('{"conditions": {"use_lmk": true}}')
    validation.check_release_settings({}, local)  # generate builds the landmark block
    assert validation.motion_conditions(local)["use_landmarks"]
