"""The recorded face analyser replays a mediapipe analysis exactly, also after a move."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from _conformance import portrait_rgb
from talkinghead.face.recorded import RecordedFaceAnalyzer

pytest.importorskip("mediapipe")


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return portrait_rgb()


@pytest.fixture(scope="module")
def live(portrait):
    from talkinghead.face.mediapipe_backend import MediapipeFaceAnalyzer

    return MediapipeFaceAnalyzer().analyze(portrait)


@pytest.fixture(scope="module")
def recorded(portrait, live) -> RecordedFaceAnalyzer:
    class Once:  # one analysis for both sides: two mediapipe runs can differ by ~1e-7
        name = "once"

        def analyze(self, rgb, previous=None):
            return live

    return RecordedFaceAnalyzer.record(portrait, Once())


def test_record_defaults_to_mediapipe(portrait, live) -> None:
    again = RecordedFaceAnalyzer.record(portrait)
    np.testing.assert_allclose(again.landmarks, live.landmarks, atol=1e-3)


def test_replay_is_the_analysis(portrait, live, recorded, tmp_path) -> None:
    recorded.save(tmp_path / "face.rec")  # any name: np.savez would have added ".npz"
    replayed = RecordedFaceAnalyzer.load(tmp_path / "face.rec").analyze(portrait)
    assert replayed.crop.dtype == np.uint8 and replayed.crop.shape == (512, 512, 3)
    for field in ("crop", "M_c2o", "landmarks", "eye_open", "eye_ball", "mesh"):
        np.testing.assert_array_equal(getattr(replayed, field), getattr(live, field), field)


def test_a_recording_without_a_mesh_still_loads(portrait, live, tmp_path) -> None:
    with open(tmp_path / "old.rec", "wb") as f:  # what recordings held before the mesh
        np.savez(f, landmarks=live.landmarks, eye_open=live.eye_open, eye_ball=live.eye_ball)
    old = RecordedFaceAnalyzer.load(tmp_path / "old.rec")
    assert old.mesh is None and old.analyze(portrait).mesh is None
    with_mesh = RecordedFaceAnalyzer(old.landmarks, old.eye_open, old.eye_ball, mesh=live.mesh)
    assert old.identity != with_mesh.identity  # the avatar cache keeps the two apart


def test_transformed_follows_the_face_into_a_larger_frame(portrait, recorded) -> None:
    scale, dx, dy = 0.5, 300, 40
    small = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = np.zeros((small.shape[0] + 2 * dy, small.shape[1] + 2 * dx, 3), np.uint8)
    frame[dy : dy + small.shape[0], dx : dx + small.shape[1]] = small
    moved = recorded.transformed(scale, (dx, dy)).analyze(frame)
    original = recorded.analyze(portrait)
    # The same face region, at half the resolution: a blurrier crop, not another one.
    diff = np.abs(moved.crop.astype(int) - original.crop).mean()
    assert diff < 8, diff


def test_recordings_have_their_own_identity(recorded) -> None:
    moved = recorded.transformed(0.5, (10, 0))
    assert recorded.identity != moved.identity  # the avatar cache key tells them apart
    assert recorded.identity == recorded.transformed(1.0, (0, 0)).identity
