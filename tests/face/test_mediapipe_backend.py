"""The offline mediapipe face backend on the real portrait: detection, crop, paste-back, tracking."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from _conformance import portrait_rgb
from talkinghead.errors import CheckpointError, NoFaceError, SettingsError
from talkinghead.face import PasteBack, create_face_analyzer, warp_points
from talkinghead.face.crop import anchor_points
from talkinghead.face.mediapipe_backend import (
    MediapipeFaceAnalyzer,
    import_mediapipe,
    missing_mediapipe_message,
    offline_backend_available,
)


def test_without_mediapipe_both_backends_say_how_to_get_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError
    with pytest.raises(SettingsError, match=r"^face analysis needs mediapipe, not installed"):
        import_mediapipe()
    with pytest.raises(SettingsError, match="needs mediapipe"):
        create_face_analyzer("mediapipe")
    from talkinghead.face.release_backend import TaskLandmarker478

    with pytest.raises(SettingsError, match="needs mediapipe"):
        TaskLandmarker478("face_landmarker.task")


def test_the_missing_mediapipe_message_fits_the_python() -> None:
    pinned = 'pip install -c constraints.txt -e ".[face]"'
    assert pinned in missing_mediapipe_message((3, 11))
    assert pinned in missing_mediapipe_message((3, 12))
    on_313 = missing_mediapipe_message((3, 13))
    assert pinned not in on_313 and 'pip install -e ".[face]"' in on_313
    assert "mediapipe 1.x, enough for the release's face models" in on_313


def test_a_mediapipe_without_the_legacy_graphs_is_refused_for_this_backend(monkeypatch) -> None:
    """mediapipe 1.x (Python 3.13+): the tasks API only, no face models in the wheel."""
    from talkinghead.face import mediapipe_backend

    monkeypatch.setattr(mediapipe_backend, "offline_backend_available", lambda: False)
    assert import_mediapipe() is not None  # the release backend's tasks API is enough
    with pytest.raises(
        SettingsError,
        match=r"needs mediapipe 0\.10\.21 .*, not 0\.10\.21: pip install -c constraints",
    ):
        MediapipeFaceAnalyzer()
    monkeypatch.setattr(mediapipe_backend, "MEDIAPIPE_PYTHONS", ((3, 0), (3, 1)))
    with pytest.raises(SettingsError, match=r"use the release's face models"):
        MediapipeFaceAnalyzer()


def _mediapipe_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mediapipe")
    except PackageNotFoundError:
        return None


@pytest.mark.skipif(_mediapipe_version() != "0.10.21", reason="mediapipe 0.10.21 not installed")
def test_mediapipe_0_10_21_has_the_offline_backend() -> None:
    assert offline_backend_available()  # what CI installs


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return portrait_rgb()


@pytest.fixture(scope="module")
def analyzer():
    a = MediapipeFaceAnalyzer()
    yield a
    a.close()


@pytest.fixture(scope="module")
def face(analyzer, portrait):
    return analyzer.analyze(portrait, what="ditto_example_face.jpg")


def _inside(pts, box, margin=0.0):
    mx, my = margin * (box.x1 - box.x0), margin * (box.y1 - box.y0)
    return (
        (pts[:, 0] >= box.x0 - mx)
        & (pts[:, 0] <= box.x1 + mx)
        & (pts[:, 1] >= box.y0 - my)
        & (pts[:, 1] <= box.y1 + my)
    )


def test_one_face_and_landmarks_in_its_box(face, portrait):
    assert face.num_faces == 1
    assert face.box is not None and face.box.score > 0.5
    assert face.landmarks.shape == (478, 2) and face.landmarks.dtype == np.float32
    # Eyes, nose and mouth corners inside the box; the whole mesh within a 10% margin
    # (the detector's box ends about at the chin and the hairline).
    assert face.box.keypoints.shape == (5, 2)
    assert _inside(face.box.keypoints, face.box).all()
    assert _inside(face.landmarks, face.box, margin=0.1).all()
    # keypoints: image-left eye, right eye, nose, mouth corners left, right
    kp = face.box.keypoints
    assert kp[0, 0] < kp[2, 0] < kp[1, 0] and kp[3, 0] < kp[4, 0]
    assert kp[0, 1] < kp[2, 1] < kp[3, 1]


def test_crop_is_centred_on_the_face(face):
    assert face.crop.shape == (512, 512, 3) and face.crop.dtype == np.uint8
    assert face.M_c2o.shape == (3, 3) and face.M_c2o.dtype == np.float32
    M_o2c = np.linalg.inv(face.M_c2o.astype(np.float64))
    eyes, mouth = warp_points(np.stack(anchor_points(face.landmarks)), M_o2c)
    # Roll cancelled: eyes straight above the mouth, near the vertical centre line. The
    # 2.3x box around brows..chin, moved up by 0.125 of its size, puts the eyes at about
    # the crop's centre and the mouth about a sixth lower.
    assert abs(eyes[0] - mouth[0]) < 1e-2
    assert abs(eyes[0] - 256) < 12
    assert 230 < eyes[1] < 285 and 320 < mouth[1] < 375
    # The face is about 2.3x smaller than the crop.
    lmk_crop = warp_points(face.landmarks, M_o2c)
    width = np.ptp(lmk_crop[:, 0])
    assert 512 / 2.3 * 0.8 < width < 512 / 2.3 * 1.2


def test_pasting_the_unmodified_crop_back(face, portrait):
    out = PasteBack()(portrait, face.crop, face.M_c2o)
    assert out.shape == portrait.shape and out.dtype == np.uint8
    b = face.box
    region = (slice(int(b.y0), int(b.y1)), slice(int(b.x0), int(b.x1)))
    err = out[region].astype(float) - portrait[region]
    psnr = 10 * np.log10(255**2 / np.mean(err**2))
    assert psnr > 35, psnr


def test_no_face(analyzer):
    flat = np.full((240, 320, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for name, img in [("flat.png", flat), ("noise.png", noise)]:
        with pytest.raises(NoFaceError, match=f"no face found in {name}"):
            analyzer.analyze(img, what=name)


def test_two_faces_the_larger_is_used(analyzer, portrait):
    canvas = np.full((640, 1040, 3), 90, np.uint8)
    canvas[140:500, 20:380] = cv2.resize(portrait, (360, 360), interpolation=cv2.INTER_AREA)
    canvas[20:620, 420:1020] = cv2.resize(portrait, (600, 600), interpolation=cv2.INTER_AREA)
    face = analyzer.analyze(canvas)
    assert face.num_faces == 2
    assert (face.landmarks[:, 0] > 420).all()  # on the larger copy, to the right
    # Same face, same crop: the large copy's crop matches the original portrait's.
    ref = analyzer.analyze(cv2.resize(portrait, (600, 600), interpolation=cv2.INTER_AREA))
    np.testing.assert_allclose(face.landmarks - (420, 20), ref.landmarks, atol=3.0)
    assert (face.eye_open > 0.6).all()


def test_video_tracking(analyzer, portrait, face):
    tracked = analyzer.analyze(portrait, previous=face)
    assert tracked.box is None and tracked.num_faces == face.num_faces
    size = face.box.x1 - face.box.x0
    assert np.abs(tracked.landmarks - face.landmarks).max() < 0.02 * size
    # The next frame moved: the landmarks follow.
    shift = np.float32([[1, 0, 25], [0, 1, -15]])
    h, w = portrait.shape[:2]
    moved = cv2.warpAffine(portrait, shift, (w, h), borderMode=cv2.BORDER_REPLICATE)
    follow = analyzer.analyze(moved, previous=face)
    np.testing.assert_allclose(
        np.median(follow.landmarks - face.landmarks, 0), [25, -15], atol=0.01 * size
    )
    # Lost track (no face where the previous one was): detect afresh, and no face at all raises.
    blank = np.full_like(portrait, 128)
    with pytest.raises(NoFaceError):
        analyzer.analyze(blank, previous=face, what="frame 7")


def test_create_face_analyzer(tmp_path):
    a = create_face_analyzer()
    assert a.name == "mediapipe"
    assert create_face_analyzer("auto", aux_dir=tmp_path).name == "mediapipe"  # files missing
    with pytest.raises(CheckpointError, match=r"det_10g\.onnx"):
        create_face_analyzer("release", aux_dir=tmp_path)
    with pytest.raises(ValueError):
        create_face_analyzer("dlib")
