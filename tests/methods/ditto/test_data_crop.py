"""Ditto's training crop and emotion labels on a synthetic moving face.

The example portrait moves under a known per-frame similarity (translation, scale, roll).
The clip-level crop (the release's rule) must keep that motion in the crops the motion
extractor sees; the per-frame crop must cancel it. Emotion labels come from a stand-in of
HSEmotion's enet_b2_8 ONNX model (same input/output names and shapes), built here.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from _conformance import MEDIA_DIR, skip_missing
from talkinghead.methods.ditto.motion.conditions import EMOTIONS
from talkinghead.models.convnextv2 import ConvNeXtV2Config
from talkinghead.models.motion_extractor import MotionExtractor

PORTRAIT = MEDIA_DIR / "ditto_example_face.jpg"
SPEECH = MEDIA_DIR / "ditto_example_speech.wav"
N_FRAMES = 13
SIZE = 320


def known_motion(i: int) -> tuple[float, float, tuple[float, float]]:
    """Frame i's roll (degrees), scale and translation (pixels) of the face."""
    t = i / (N_FRAMES - 1)
    return 8.0 * t, 1.0 + 0.12 * t, (24.0 * t, -14.0 * t)


def known_matrix(i: int) -> np.ndarray:
    """3x3 frame-0 pixels -> frame-i pixels."""
    import cv2

    roll, scale, (dx, dy) = known_motion(i)
    m = np.eye(3)
    m[:2] = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), roll, scale)
    m[:2, 2] += (dx, dy)
    return m


def make_moving_face(path: Path) -> None:
    import cv2

    from talkinghead.audio.io import load_audio
    from talkinghead.media.writer import VideoWriter

    img = cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    audio = load_audio(SPEECH, 16000)[: int(16000 * N_FRAMES / 25)]
    with VideoWriter(path, fps=25, audio=(audio, 16000), crf=12, preset="ultrafast") as w:
        for i in range(N_FRAMES):
            m = known_matrix(i)[:2]
            w.write(cv2.warpAffine(img, m, (SIZE, SIZE), borderMode=cv2.BORDER_REPLICATE))


class RecordingExtractor(nn.Module):
    """A tiny motion extractor that keeps every 256 crop it is given (in-process only)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        cfg = ConvNeXtV2Config(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))
        self.net = MotionExtractor(backbone=cfg)
        self.seen: list[np.ndarray] = []

    def forward(self, x: torch.Tensor):
        self.seen += list((x.permute(0, 2, 3, 1) * 255).round().byte().cpu().numpy())
        return self.net(x)


class StandInSpeech:
    feat_dim = 4

    def encode(self, chunk: np.ndarray) -> np.ndarray:
        n = (chunk.shape[0] - 400) // 320 + 1
        return np.stack([chunk[i * 320 : i * 320 + 400].reshape(4, 100).mean(1) for i in range(n)])


@pytest.fixture(scope="module")
def moving_face(tmp_path_factory) -> Path:
    if not (PORTRAIT.is_file() and SPEECH.is_file()):
        skip_missing(f"{MEDIA_DIR}")
    pytest.importorskip("mediapipe")
    folder = tmp_path_factory.mktemp("moving")
    make_moving_face(folder / "face.mp4")
    return folder


def prepare(videos: Path, out: Path, crop_mode: str, **options):
    from talkinghead.methods.ditto.data import prepare_dataset

    extractor = RecordingExtractor()
    report = prepare_dataset(
        videos,
        out,
        networks={"motion_extractor": extractor, "speech_encoder": StandInSpeech()},
        face_backend="mediapipe",
        flip=False,
        crop_mode=crop_mode,
        **options,
    )
    assert report.prepared == ["face"], report.failed
    return extractor.seen, json.loads((out / "manifest.json").read_text())


def crop_motion(crops: list[np.ndarray]) -> list[np.ndarray]:
    """The similarity (3x3) taking the face's landmarks in crop 0 to those in crop i."""
    import cv2

    from talkinghead.face import create_face_analyzer

    face = create_face_analyzer("mediapipe")
    pts = [face.analyze(c).landmarks[:, :2].astype(np.float64) for c in crops]
    out = []
    for p in pts:
        m, _ = cv2.estimateAffinePartial2D(pts[0], p, method=cv2.LMEDS)
        out.append(np.vstack([m, [0, 0, 1]]))
    return out


def similarity_parts(m: np.ndarray, point: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(roll in degrees as cv2 counts it, scale, where `point` goes minus where it was)."""
    roll = float(np.degrees(np.arctan2(-m[1, 0], m[0, 0])))
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    return roll, scale, m[:2, :2] @ point + m[:2, 2] - point


def test_clip_crop_keeps_translation_scale_and_roll(moving_face, tmp_path):
    crops, manifest = prepare(moving_face, tmp_path / "clip", "clip")
    assert manifest["settings"]["crop_mode"] == "clip"
    crop = manifest["videos"]["face"]["crop"]
    assert crop["mode"] == "clip"
    m_c2o = np.array(crop["M_c2o"])
    # One constant, axis-aligned transform for the whole clip (no rotation).
    assert m_c2o[0, 1] == 0 and m_c2o[1, 0] == 0 and m_c2o[0, 0] == pytest.approx(m_c2o[1, 1])
    assert len(crops) == N_FRAMES
    # Frame -> 256 network input: the clip's box, then 512 -> 256.
    a = np.diag([0.5, 0.5, 1.0]) @ np.linalg.inv(m_c2o)
    measured = crop_motion(crops)
    centre = np.array([128.0, 128.0])
    for i in range(1, N_FRAMES):
        expected = a @ known_matrix(i) @ np.linalg.inv(a)
        roll, scale, shift = similarity_parts(measured[i], centre)
        want_roll, want_scale, want_shift = similarity_parts(expected, centre)
        assert want_roll == pytest.approx(known_motion(i)[0], abs=1e-6)
        assert roll == pytest.approx(want_roll, abs=1.0), i
        assert scale == pytest.approx(want_scale, rel=0.02), i
        assert np.abs(shift - want_shift).max() < 2.0, (i, shift, want_shift)
    # The last frame moved the face well beyond those tolerances.
    roll, scale, shift = similarity_parts(measured[-1], centre)
    assert roll > 6 and scale > 1.08 and np.abs(shift).max() > 6


def test_frame_crop_cancels_the_head_motion(moving_face, tmp_path):
    crops, manifest = prepare(moving_face, tmp_path / "frame", "frame", landmarks=True)
    assert manifest["settings"]["crop_mode"] == "frame"
    assert manifest["videos"]["face"]["crop"] == {"mode": "frame"}
    # The landmarks come from the crop the motion does: here each frame's own.
    lmk = np.load(tmp_path / "frame" / "MP_lmk_npy" / "face.npy")
    assert lmk.shape == (N_FRAMES, 478, 3) and np.ptp(lmk[:, :, :2], axis=0).max() < 0.05
    centre = np.array([128.0, 128.0])
    for i, m in enumerate(crop_motion(crops)):
        roll, scale, shift = similarity_parts(m, centre)
        assert abs(roll) < 1.5 and scale == pytest.approx(1.0, rel=0.03), i
        assert np.abs(shift).max() < 3.0, (i, shift)


def test_clip_box_is_the_releases_mean_box_in_whole_pixels():
    """By hand, with a 5-point face (eyes, nose, mouth corners; box = all points): upright, a
    20 px square, so each frame's box is 2.2 x 20 = 44 px centred 0.1 x 44 above the points'
    centre; the clip's box is the mean of those corners, rounded to whole pixels."""
    from talkinghead.methods.ditto.motion.extraction import CLIP_CROP, clip_crop_box

    face = np.array([[90.0, 100], [110, 100], [100, 110], [92, 120], [108, 120]])
    frames = [face + np.array([3.0 * k, -2.0 * k]) for k in range(5)]
    # Per frame: centre (100 + 3k, 110 - 4.4 - 2k); the mean over k = 0..4: (106, 101.6).
    assert (CLIP_CROP.scale, CLIP_CROP.vy_ratio, CLIP_CROP.rotate) == (2.2, -0.1, False)
    assert clip_crop_box(frames) == (106 - 22, 102 - 22, 106 + 22, 102 + 22)
    # A growing face: the sides 44, 48.4, 52.8 average to 48.4 -> half 24.2 -> 24.
    growing = [(face - 100) * s + 100 for s in (1.0, 1.1, 1.2)]
    x0, y0, x1, y1 = clip_crop_box(growing)
    assert x1 - x0 == y1 - y0 == 48 and (x0 + x1) / 2 == 100
    # A rolled face keeps its side: the box is measured in the face's own axes.
    roll = np.radians(20)
    rot = np.array([[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]])
    x0, _, x1, _ = clip_crop_box([(face - 100) @ rot.T + 100])
    assert x1 - x0 == 44


def test_clip_crop_pads_with_black_and_maps_pixel_centres():
    import cv2

    from talkinghead.methods.ditto.motion.extraction import clip_box_transform, crop_clip_box

    frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    box = (-20, 30, 140, 190)  # leaves the frame left and below
    crop = crop_clip_box(frame, box, 64)
    canvas = np.zeros((160, 160, 3), np.uint8)
    canvas[:90, 20:] = frame[30:120, 0:140]
    np.testing.assert_array_equal(crop, cv2.resize(canvas, (64, 64), interpolation=cv2.INTER_AREA))
    assert crop.shape == (64, 64, 3) and (crop[-5:] == 0).all() and (crop[:, :5] == 0).all()
    m_o2c, m_c2o = clip_box_transform(box, 64)
    np.testing.assert_allclose(m_o2c @ m_c2o, np.eye(3), atol=1e-12)
    # Crop pixel u shows frame pixel x0 + (u + 0.5) * side / dsize - 0.5 (the resize's centres).
    np.testing.assert_allclose(m_c2o @ [0, 0, 1], [-20 + 1.25 - 0.5, 30 + 1.25 - 0.5, 1])
    small = crop_clip_box(frame, (10, 10, 42, 42), 64)  # enlarged: bicubic
    np.testing.assert_array_equal(
        small, cv2.resize(frame[10:42, 10:42], (64, 64), interpolation=cv2.INTER_CUBIC)
    )


def test_landmarks_are_the_mesh_on_the_clip_crop_in_the_releases_layout(moving_face, tmp_path):
    """prepare-data --landmarks: MP_lmk_npy [n, 478, 3], normalised, the mesh found on each
    clip crop; a video finished without them is prepared again when they are asked for."""
    from talkinghead.face import create_face_analyzer
    from talkinghead.media.video import iter_video_frames
    from talkinghead.methods.ditto.motion.extraction import crop_clip_box

    out = tmp_path / "data"
    prepare(moving_face, out, "clip")
    assert not (out / "MP_lmk_npy").exists()
    _, manifest = prepare(moving_face, out, "clip", landmarks=True)  # redone, not skipped
    entry = manifest["videos"]["face"]
    assert manifest["settings"]["landmarks"] is True and manifest["dims"]["lmk"] == [478, 3]
    assert entry["files"]["lmk"] == "MP_lmk_npy/face.npy"
    lmk = np.load(out / "MP_lmk_npy" / "face.npy")
    assert lmk.shape == (N_FRAMES, 478, 3) and lmk.dtype == np.float32
    assert (lmk[..., :2] > 0).all() and (lmk[..., :2] < 1).all()
    assert np.ptp(lmk[:, :, :2], axis=0).max() > 0.05  # the head moves inside the one box
    (listed,) = json.loads((out / "data_list.json").read_text())
    assert listed["lmk"] == "MP_lmk_npy/face.npy"
    info = json.loads((out / "data_info.json").read_text())
    assert [Path(p).name for p in info["MP_lmk_npy_list"]] == ["face.npy"]
    frame = next(iter_video_frames(moving_face / "face.mp4", fit=True))
    crop = crop_clip_box(frame, tuple(entry["crop"]["box"]), 512)
    mesh = create_face_analyzer("mediapipe").mesh(crop)
    np.testing.assert_allclose(lmk[0], mesh, atol=1e-6)
    # What train-motion --use-lmk reads: a few steps, the landmark block in the width.
    from dataclasses import replace

    from talkinghead.methods.ditto.train import PRESETS, train_motion

    cfg = replace(PRESETS["tiny"], seq_frames=8, max_steps=2, use_lmk=True, tensorboard=False)
    result = train_motion(out, tmp_path / "run", cfg)
    assert result.step == 2
    width = StandInSpeech.feat_dim + 8 + 2 + 6 + 63 + 478 * 3
    assert json.loads(result.sidecar.read_text())["lmdm"]["audio_feat_dim"] == width


# --- emotion labels ------------------------------------------------------------------------

HSE_INPUT = 260


def stand_in_hsemotion(path: Path, weights: np.ndarray, bias: np.ndarray) -> Path:
    """enet_b2_8's I/O (``input`` [N, 3, 260, 260] -> [N, 8] logits): logits are a linear
    function of the per-channel means."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["mean", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stand_in_enet_b2_8",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, HSE_INPUT, HSE_INPUT])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 8])],
        [
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def hse_model(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    w = np.random.default_rng(1).standard_normal((3, 8)) * 40
    return stand_in_hsemotion(tmp_path_factory.mktemp("hse") / "enet_b2_8.onnx", w, np.zeros(8))


def test_hsemotion_adapter_preprocesses_and_reorders_as_hsemotion(hse_model):
    import cv2

    from talkinghead.methods.ditto.emotion import HSEMOTION_CLASSES, HSEmotionClassifier

    clf = HSEmotionClassifier(hse_model)
    assert clf.input_size == HSE_INPUT
    crops = np.random.default_rng(2).integers(0, 256, (3, 200, 200, 3), dtype=np.uint8)
    got = clf(crops)
    # By hand: resize, /255, ImageNet mean/std, the stand-in's graph, softmax, HSE -> Ditto order.
    import onnx
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(hse_model).graph.initializer}
    x = np.stack([cv2.resize(c, (HSE_INPUT, HSE_INPUT)) / 255.0 for c in crops])
    x = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    logits = x.mean((1, 2)) @ inits["W"] + inits["B"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    by_name = {name: p[:, j] for j, name in enumerate(HSEMOTION_CLASSES)}
    ditto_names = (
        "Anger",
        "Disgust",
        "Fear",
        "Happiness",
        "Neutral",
        "Sadness",
        "Surprise",
        "Contempt",
    )
    want = np.stack([by_name[n] for n in ditto_names], 1)
    np.testing.assert_allclose(got, want, atol=2e-4)
    # Pickles without its session (spawned workers), and works again after.
    np.testing.assert_allclose(pickle.loads(pickle.dumps(clf))(crops), got, atol=1e-6)


def test_hsemotion_classes_land_on_dittos_names(tmp_path):
    pytest.importorskip("onnxruntime")
    from talkinghead.methods.ditto.emotion import HSEMOTION_CLASSES, HSEmotionClassifier

    ditto_name = {"Anger": "Angry", "Happiness": "Happy", "Sadness": "Sad"}
    crops = np.zeros((1, 32, 32, 3), np.uint8)
    for j, hse_name in enumerate(HSEMOTION_CLASSES):
        bias = np.zeros(8)
        bias[j] = 10.0
        path = stand_in_hsemotion(tmp_path / f"{j}.onnx", np.zeros((3, 8)), bias)
        probs = HSEmotionClassifier(path)(crops)[0]
        assert EMOTIONS[int(probs.argmax())] == ditto_name.get(hse_name, hse_name)


def test_labels_at_5_fps_spread_to_the_nearest_frame(moving_face, hse_model, tmp_path):
    from talkinghead.methods.ditto.data import nearest_rows

    _, manifest = prepare(
        moving_face, tmp_path / "emo", "clip", emotion_classifier=f"hsemotion:{hse_model}"
    )
    assert manifest["settings"]["emotion"] == f"hsemotion:{hse_model.resolve()}"
    assert manifest["settings"]["emotion_stride"] == 5
    emo = np.load(tmp_path / "emo" / "emo_npy" / "face.npy")
    assert emo.shape == (N_FRAMES, 8)
    np.testing.assert_allclose(emo.sum(1), 1.0, atol=1e-5)
    labelled = list(range(0, N_FRAMES, 5))  # 0, 5, 10: 5 fps of 25
    rows = emo[labelled]
    assert len({r.tobytes() for r in rows}) == len(labelled)  # the moving face changes them
    nearest = [min(labelled, key=lambda k: (abs(k - i), k)) for i in range(N_FRAMES)]
    assert nearest[2] == 0 and nearest[3] == 5 and nearest[12] == 10
    np.testing.assert_array_equal(emo, emo[nearest])
    np.testing.assert_array_equal(nearest_rows({k: emo[k] for k in labelled}, N_FRAMES), emo)


def test_cli_crop_mode_and_hsemotion_errors(tmp_path):
    from typer.testing import CliRunner

    from talkinghead.cli import app
    from talkinghead.errors import TalkingHeadError

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"x")
    base = ["prepare-data", str(tmp_path / "videos"), str(tmp_path / "out")]
    for extra, match in (
        (["--crop-mode", "diagonal"], "crop mode 'diagonal' is not known; use one of clip, frame"),
        (
            ["--emotion-classifier", f"hsemotion:{tmp_path / 'no.onnx'}"],
            "HSEmotion ONNX model not found",
        ),
    ):
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code == 1
        assert isinstance(result.exception, TalkingHeadError), result.output
        assert match in str(result.exception) and "\n" not in str(result.exception)
    # Checked before anything was written.
    assert not (tmp_path / "out" / "manifest.json").exists()
    result = CliRunner().invoke(app, [*base, "--method", "dithead", "--crop-mode", "clip"])
    assert result.exit_code == 1 and "crop_mode" in str(result.exception)
    result = CliRunner().invoke(app, [*base, "--method", "dithead", "--landmarks"])
    assert result.exit_code == 1 and "landmarks" in str(result.exception)
