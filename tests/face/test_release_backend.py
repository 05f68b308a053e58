"""The release-model face backend with tiny ONNX stand-ins of the release's files.

The stand-ins have the release files' input/output names, shapes and dtypes:

* ``det_10g.onnx``: input ``input.1`` [1, 3, H, W]; nine outputs, scores [N, 1],
  box distances [N, 4], keypoint offsets [N, 10] for strides 8, 16, 32 (two
  anchors per cell). Either constant (one face placed through the real SCRFD
  decoding) or colour-driven: a red 32-px cell fires at stride 32, a green
  16-px cell at stride 16, so the position of a coloured square is decoded back.
* ``2d106det.onnx``: ``data`` [1, 3, 192, 192] -> ``fc1`` [1, 212] in [-1, 1].
* ``landmark203.onnx``: ``input`` [1, 3, 224, 224] -> three outputs, the last
  [1, 406] in [0, 1] of the crop.

The 106/203 stand-ins output fixed landmarks plus a small shift driven by the
difference of their first and last input channels, which checks the channel
order and scaling of the pre-processing.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from _conformance import MEDIA_DIR, portrait_rgb
from talkinghead.errors import CheckpointError, NoFaceError
from talkinghead.face import create_face_analyzer, crop_from_landmarks, crop_transform, warp_points
from talkinghead.face.crop import LAYOUTS, MESH_CROP_POINTS
from talkinghead.face.eyes import eye_attributes
from talkinghead.face.release_backend import (
    LANDMARK203_CROP,
    RELEASE_AUX_FILES,
    Landmark106,
    Landmark203,
    ReleaseFaceAnalyzer,
    ScrfdDetector,
    TaskLandmarker478,
    _bgr_blob,
    onnx_session,
)

PORTRAIT = MEDIA_DIR / "ditto_example_face.jpg"
STRIDES = (8, 16, 32)
SHIFT = 0.01  # landmark shift per unit of (first - last) input channel mean


# ----------------------------------------------------------------------------- model builders


def _save(nodes, inputs, outputs, inits, path: Path) -> Path:
    graph = helper.make_graph(nodes, "stand_in", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _anchor_count(stride: int, size: int = 512) -> int:
    return (size // stride) ** 2 * 2


def scrfd_constant(path: Path, box_det, kps_det, stride: int = 32) -> Path:
    """A detector placing one face (box and keypoints in 512-input pixels) at the
    anchor nearest its centre; its outputs do not depend on the image."""
    x0, y0, x1, y1 = box_det
    n = 512 // stride
    ix, iy = round((x0 + x1) / 2 / stride), round((y0 + y1) / 2 / stride)
    idx = (iy * n + ix) * 2  # cells row-major, two anchors each
    cx, cy = ix * stride, iy * stride
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["m"], keepdims=0)]
    nodes.append(helper.make_node("Mul", ["m", "zero"], ["z"]))
    inits = [_const("zero", 0.0)]
    outputs = []
    for kind, width in (("score", 1), ("box", 4), ("kps", 10)):
        for s in STRIDES:
            value = np.zeros((_anchor_count(s), width), np.float32)
            if s == stride:
                if kind == "score":
                    value[idx] = 0.9
                elif kind == "box":
                    value[idx] = np.array([cx - x0, cy - y0, x1 - cx, y1 - cy]) / stride
                else:
                    value[idx] = ((np.asarray(kps_det) - (cx, cy)) / stride).reshape(-1)
            name = f"{kind}{s}"
            inits.append(_const(f"{name}_c", value))
            nodes.append(helper.make_node("Add", ["z", f"{name}_c"], [name]))
            outputs.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [_anchor_count(s), width])
            )
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])
    return _save(nodes, [inp], outputs, inits, path)


BOX_DIST = {16: (1.0, 1.0, 1.0, 1.0), 32: (1.5, 1.5, 1.5, 2.5)}  # in strides
KPS_OFFSETS = np.array([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.0], [-0.4, 0.6], [0.4, 0.6]])


def scrfd_colour(path: Path) -> Path:
    """A detector firing where a network-input channel is bright over a whole cell:
    channel 2 (red, after the BGR swap) at stride 32, channel 1 (green) at stride 16."""
    nodes, inits, outputs = [], [_const("zero", 0.0), _const("half", 0.5), _const("k", 20.0)], []
    flat = {}
    for s, channel in ((8, 0), (16, 1), (32, 2)):
        inits.append(numpy_helper.from_array(np.array([channel], np.int64), f"ch{s}"))
        nodes += [
            helper.make_node("Gather", ["input.1", f"ch{s}"], [f"c{s}"], axis=1),
            helper.make_node(
                "AveragePool", [f"c{s}"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]
            ),
            helper.make_node("Sub", [f"p{s}", "half"], [f"d{s}"]),
            helper.make_node("Mul", [f"d{s}", "k" if s != 8 else "zero"], [f"l{s}"]),
        ]
        if s == 8:  # never fires
            nodes.append(helper.make_node("Sub", [f"l{s}", "k"], [f"g{s}"]))
        else:
            nodes.append(helper.make_node("Sigmoid", [f"l{s}"], [f"g{s}"]))
        inits.append(numpy_helper.from_array(np.array([-1, 1], np.int64), "col"))
        nodes += [
            helper.make_node("Reshape", [f"g{s}", "col"], [f"f{s}"]),
            helper.make_node("Concat", [f"f{s}", f"f{s}"], [f"a{s}"], axis=1),
            helper.make_node("Reshape", [f"a{s}", "col"], [f"score{s}"]),
            helper.make_node("Mul", [f"score{s}", "zero"], [f"z{s}"]),
        ]
        flat[s] = f"z{s}"
    inits = list({i.name: i for i in inits}.values())
    for s in STRIDES:
        outputs.append(helper.make_tensor_value_info(f"score{s}", TensorProto.FLOAT, [None, 1]))
    for kind, values in (("box", BOX_DIST), ("kps", None)):
        for s in STRIDES:
            v = values.get(s, (1, 1, 1, 1)) if values else KPS_OFFSETS.reshape(-1)
            inits.append(_const(f"{kind}{s}_c", np.reshape(v, (1, -1))))
            nodes.append(helper.make_node("Add", [flat[s], f"{kind}{s}_c"], [f"{kind}{s}"]))
            outputs.append(
                helper.make_tensor_value_info(
                    f"{kind}{s}", TensorProto.FLOAT, [None, 4 if kind == "box" else 10]
                )
            )
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])
    return _save(nodes, [inp], outputs, inits, path)


def _channel_shift_nodes(inp: str, scale: float):
    """Nodes computing scale * (mean(channel 0) - mean(channel 2)) -> 'shift' [1, 1]."""
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "i0"),
        numpy_helper.from_array(np.array([2], np.int64), "i2"),
        _const("scale", scale),
    ]
    nodes = [
        helper.make_node("Gather", [inp, "i0"], ["c0"], axis=1),
        helper.make_node("Gather", [inp, "i2"], ["c2"], axis=1),
        helper.make_node("Sub", ["c0", "c2"], ["dc"]),
        helper.make_node("ReduceMean", ["dc"], ["md"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["md", "one_one"], ["mr"]),
        helper.make_node("Mul", ["mr", "scale"], ["shift"]),
    ]
    inits.append(numpy_helper.from_array(np.array([1, 1], np.int64), "one_one"))
    return nodes, inits


def landmark106_model(path: Path, template: np.ndarray) -> Path:
    """``data`` [1,3,192,192] -> ``fc1`` [1,212] = template + SHIFT/255 * (B - R) means."""
    nodes, inits = _channel_shift_nodes("data", SHIFT / 255)
    inits.append(_const("t", template.reshape(1, 212)))
    nodes.append(helper.make_node("Add", ["t", "shift"], ["fc1"]))
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])
    return _save(nodes, [inp], [out], inits, path)


def landmark203_model(path: Path, template: np.ndarray, single_output: bool = False) -> Path:
    """``input`` [1,3,224,224] -> (two unrelated outputs,) template + SHIFT * (R - B) means."""
    nodes, inits = _channel_shift_nodes("input", SHIFT)
    inits.append(_const("t", template.reshape(1, 406)))
    name = "landmarks" if single_output else "pts"
    nodes.append(helper.make_node("Add", ["t", "shift"], [name]))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 406])]
    if not single_output:
        nodes.append(helper.make_node("ReduceMean", ["input"], ["aux0"], axes=[2, 3], keepdims=0))
        nodes.append(helper.make_node("Identity", ["shift"], ["aux1"]))
        outputs = [
            helper.make_tensor_value_info("aux0", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("aux1", TensorProto.FLOAT, [1, 1]),
            *outputs,
        ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])
    return _save(nodes, [inp], outputs, inits, path)


def task_bundle(path: Path) -> Path:
    """A FaceLandmarker bundle made of the tflite models in the mediapipe wheel.

    The wheel has no ``face_landmarker.task``; its 468-point mesh model loads in the
    task graph but is not the task's landmark model, so the landmarks it yields are
    meaningless. It still exercises loading, the image hand-over and the output format.
    """
    import mediapipe

    mods = Path(mediapipe.__file__).parent / "modules"
    with zipfile.ZipFile(path, "w") as z:
        z.write(
            mods / "face_detection" / "face_detection_short_range.tflite", "face_detector.tflite"
        )
        z.write(mods / "face_landmark" / "face_landmark.tflite", "face_landmarks_detector.tflite")
    return path


# ----------------------------------------------------------------------------- synthetic chain


def _template(n: int, rng) -> np.ndarray:
    """Landmarks of layout n in [-0.6, 0.6]^2 with eyes above the mouth (crop-centred units)."""
    pts = rng.uniform(-0.6, 0.6, (n, 2))
    lay = LAYOUTS[n]
    pts[list(lay.eye_a)] = (-0.25, -0.2)
    pts[list(lay.eye_b)] = (0.25, -0.2)
    pts[list(lay.mouth)] = [(-0.15, 0.35), (0.15, 0.35)]
    return pts.astype(np.float32)


class FakeMesh:
    """A 478-landmark source returning fixed normalised landmarks, recording its inputs."""

    def __init__(self, lmk=None):
        self.lmk = lmk if lmk is not None else np.random.default_rng(5).random((478, 3))
        self.lmk = self.lmk.astype(np.float32)
        self.seen = []

    def __call__(self, rgb):
        self.seen.append(rgb)
        return self.lmk


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("aux")
    rng = np.random.default_rng(0)
    t106 = _template(106, rng) * 0.8  # fc1 in [-1, 1]
    t203 = _template(203, rng) * 0.5 + 0.5  # [0, 1] of the crop
    scrfd_colour(d / RELEASE_AUX_FILES["detector"])
    landmark106_model(d / RELEASE_AUX_FILES["landmark106"], t106)
    landmark203_model(d / RELEASE_AUX_FILES["landmark203"], t203)
    return d, t106, t203


def _scene(w=800, h=600, red=(7, 5), green=None):
    """Black frame; a red square filling the stride-32 cell `red` of the letterboxed input
    (and a green one on the stride-16 cell `green`). Returns (image, det_scale)."""
    img = np.zeros((h, w, 3), np.uint8)
    scale = 512 / max(w, h)
    for cell, stride, colour in ((red, 32, (255, 0, 0)), (green, 16, (0, 255, 0))):
        if cell is not None:
            x0, y0 = cell[0] * stride / scale, cell[1] * stride / scale
            side = stride / scale
            img[int(np.ceil(y0)) : int(y0 + side), int(np.ceil(x0)) : int(x0 + side)] = colour
    return img, scale


def _expected_box(cell, stride, det_scale):
    cx, cy = cell[0] * stride, cell[1] * stride  # SCRFD anchors sit on cell corners
    d = np.array(BOX_DIST[stride]) * stride
    return np.array([cx - d[0], cy - d[1], cx + d[2], cy + d[3]]) / det_scale


def test_preprocessing_matches_the_release_blobs():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    det = ScrfdDetector(onnx_session_stub())
    ref = cv2.dnn.blobFromImage(img, 1 / 128, (512, 512), (127.5, 127.5, 127.5), swapRB=True)
    np.testing.assert_allclose(det.blob(img), ref, atol=1e-6)
    crop = img[:192, :192]
    ref106 = cv2.dnn.blobFromImage(crop, 1.0, (192, 192), (0, 0, 0), swapRB=True)
    np.testing.assert_array_equal(_bgr_blob(crop, 0.0, 1.0), ref106)  # the 106 model's input
    # Letterbox: top-left, aspect kept, zero padding.
    square, scale = det.letterbox(np.full((300, 600, 3), 200, np.uint8))
    assert scale == pytest.approx(256 / 300)
    assert square[:256].min() == 200 and square[256:].max() == 0
    square, scale = det.letterbox(np.full((700, 350, 3), 200, np.uint8))
    assert scale == pytest.approx(512 / 700) and square[:, 256:].max() == 0
    # Anchor centres: cells row-major (x fastest), two anchors per cell, on cell corners.
    centres = det.anchor_centres(32)
    assert centres.shape == (512, 2)
    assert centres[:4].tolist() == [[0, 0], [0, 0], [32, 0], [32, 0]]
    assert centres[32].tolist() == [0, 32]


def onnx_session_stub():
    class _In:
        name = "input.1"

    class _Stub:
        def get_inputs(self):
            return [_In()]

    return _Stub()


def test_scrfd_decoding_through_onnx(synthetic):
    d, _, _ = synthetic
    det = ScrfdDetector(onnx_session(d / RELEASE_AUX_FILES["detector"]))
    img, scale = _scene(red=(7, 5), green=(25, 20))
    boxes, kps = det(img)
    assert boxes.shape == (2, 5) and kps.shape == (2, 5, 2)
    # Red fires at stride 32, green at stride 16; both decoded back through the letterbox.
    red = _expected_box((7, 5), 32, scale)
    green = _expected_box((25, 20), 16, scale)
    found = {int(b[2] - b[0] > 100): b for b in boxes}
    np.testing.assert_allclose(found[1][:4], red, atol=1e-3)
    np.testing.assert_allclose(found[0][:4], green, atol=1e-3)
    assert (boxes[:, 4] > 0.99).all()
    i = int(np.argmax(boxes[:, 2] - boxes[:, 0]))
    np.testing.assert_allclose(kps[i], (np.array([7, 5]) + KPS_OFFSETS) * 32 / scale, atol=1e-3)
    # A portrait-shaped frame letterboxes along x instead.
    tall, tall_scale = _scene(w=450, h=900, red=(3, 9))
    boxes, _ = det(tall)
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0, :4], _expected_box((3, 9), 32, tall_scale), atol=1e-3)
    # Overlapping detections are suppressed: a red square spanning two cells -> one box.
    wide, _ = _scene(red=(7, 5))
    wide[:, :] = 0
    x0, y0 = int(np.ceil(7 * 32 / scale)), int(np.ceil(5 * 32 / scale))
    wide[y0 : y0 + 50, x0 : x0 + 100] = (255, 0, 0)  # cells (7, 5) and (8, 5)
    assert len(det(wide)[0]) == 1


def test_landmark_models_pre_and_post_processing(synthetic):
    d, t106, t203 = synthetic
    lm106 = Landmark106(onnx_session(d / RELEASE_AUX_FILES["landmark106"]))
    box = (300.0, 200.0, 420.0, 350.0)  # taller than wide: the longer side counts
    half_extent = 1.5 * 150 / 2
    centre = np.array([360.0, 275.0])
    blue = np.zeros((600, 800, 3), np.uint8)
    blue[..., 2] = 255  # RGB blue -> channel 0 of the BGR input is 255
    np.testing.assert_allclose(lm106(blue, box), centre + (t106 + SHIFT) * half_extent, atol=1e-3)
    red = blue[..., ::-1].copy()
    np.testing.assert_allclose(lm106(red, box), centre + (t106 - SHIFT) * half_extent, atol=1e-3)

    lm203 = Landmark203(onnx_session(d / RELEASE_AUX_FILES["landmark203"]))
    assert lm203.output == 2  # three outputs, the landmarks last
    crop = np.zeros((224, 224, 3), np.uint8)
    crop[..., 0] = 255  # RGB red -> channel 0 of the RGB input is 1
    np.testing.assert_allclose(lm203(crop), (t203 + SHIFT) * 224, atol=1e-3)
    M = np.array([[0.5, 0, 10], [0, 0.5, 20], [0, 0, 1]])
    np.testing.assert_allclose(lm203(crop, M), (t203 + SHIFT) * 112 + (10, 20), atol=1e-3)
    single = Landmark203(onnx_session(landmark203_model(d / "single.onnx", t203, True)))
    assert single.output == 0
    np.testing.assert_allclose(single(crop[..., ::-1]), (t203 - SHIFT) * 224, atol=1e-3)


def test_release_chain_end_to_end(synthetic):
    d, t106, t203 = synthetic
    mesh = FakeMesh()
    analyzer = ReleaseFaceAnalyzer.from_dir(d, landmark478=mesh)
    assert analyzer.name == "release"
    img, scale = _scene(red=(7, 5), green=(25, 20))
    face = analyzer.analyze(img, what="scene.png")
    # 1. the larger of the two detections
    assert face.num_faces == 2
    box = _expected_box((7, 5), 32, scale)
    np.testing.assert_allclose([face.box.x0, face.box.y0, face.box.x1, face.box.y1], box, atol=1e-3)
    # 2. 106 landmarks on the box (the crop around the red square: R - B > 0 -> shift -)
    centre = (box[:2] + box[2:]) / 2
    half_extent = 1.5 * max(box[2] - box[0], box[3] - box[1]) / 2
    crop106 = cv2.warpAffine(
        img,
        np.array([[1 / half_extent * 96, 0, 96 - centre[0] * 96 / half_extent],
                  [0, 96 / half_extent, 96 - centre[1] * 96 / half_extent]]),
        (192, 192),
    )  # fmt: skip
    shift106 = SHIFT * (crop106[..., 2].mean() - crop106[..., 0].mean()) / 255
    lmk106 = centre + (t106 + shift106) * half_extent
    # 3. 203 landmarks from the 224 crop around them
    crop224 = crop_from_landmarks(img, lmk106, LANDMARK203_CROP)
    shift203 = SHIFT * (crop224.image[..., 0].mean() - crop224.image[..., 2].mean()) / 255
    lmk203 = warp_points((t203 + shift203) * 224, crop224.M_c2o)
    np.testing.assert_allclose(face.landmarks, lmk203, atol=2e-2)
    # 4. the 512 crop from the 203 landmarks
    _, M_c2o = crop_transform(lmk203)
    np.testing.assert_allclose(face.M_c2o, M_c2o, rtol=1e-4, atol=1e-2)
    assert face.crop.shape == (512, 512, 3)
    # 5. eye attributes from the 478 source run on that crop
    assert mesh.seen[-1] is face.crop
    np.testing.assert_array_equal(face.eye_open, eye_attributes(mesh.lmk)[0])
    np.testing.assert_array_equal(face.eye_ball, eye_attributes(mesh.lmk)[1])

    # Tracking: no detection; the 224 crop comes from the previous landmarks.
    analyzer.detector = analyzer.landmark106 = None  # would fail if called
    tracked = analyzer.analyze(img, previous=face)
    assert tracked.box is None and tracked.num_faces == 2
    crop224 = crop_from_landmarks(img, face.landmarks, LANDMARK203_CROP)
    shift203 = SHIFT * (crop224.image[..., 0].mean() - crop224.image[..., 2].mean()) / 255
    expected = warp_points((t203 + shift203) * 224, crop224.M_c2o)
    np.testing.assert_allclose(tracked.landmarks, expected, atol=2e-2)


def test_no_face_and_bad_files(synthetic, tmp_path):
    d, _, _ = synthetic
    analyzer = ReleaseFaceAnalyzer.from_dir(d, landmark478=FakeMesh())
    with pytest.raises(NoFaceError, match=r"no face found in black\.png"):
        analyzer.analyze(np.zeros((300, 400, 3), np.uint8), what="black.png")
    # No face on the crop (the 478 source finds none)
    analyzer.landmark478 = lambda rgb: None
    with pytest.raises(NoFaceError, match="512 crop of scene"):
        analyzer.analyze(_scene()[0], what="scene")
    with pytest.raises(CheckpointError, match="not found"):
        onnx_session(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"junk\.onnx"):
        onnx_session(junk)
    with pytest.raises(CheckpointError, match=r"face_landmarker\.task"):
        ReleaseFaceAnalyzer.from_dir(d)  # no .task and no other 478 source


def test_task_landmarker_and_auto_selection(synthetic, tmp_path):
    d, _, _ = synthetic
    bundle = task_bundle(tmp_path / "face_landmarker.task")
    try:
        task = TaskLandmarker478(bundle)
    except CheckpointError as exc:  # pragma: no cover - depends on the mediapipe build
        pytest.skip(f"this mediapipe build rejects the stand-in bundle: {exc}")
    img = np.zeros((256, 256, 3), np.uint8)
    assert task(img) is None  # nothing there
    if PORTRAIT.is_file():
        rgb = cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)
        lmk = task(cv2.resize(rgb, (512, 512), interpolation=cv2.INTER_AREA))
        assert lmk.shape == (478, 3) and lmk.dtype == np.float32
    task.close()
    junk = tmp_path / "junk.task"
    junk.write_bytes(b"PK not a bundle")
    with pytest.raises(CheckpointError, match=r"junk\.task"):
        TaskLandmarker478(junk)

    # create_face_analyzer: the release backend when all four files are there.
    full = tmp_path / "aux"
    full.mkdir()
    for key, name in RELEASE_AUX_FILES.items():
        src = bundle if key == "landmark478" else d / name
        (full / name).write_bytes(src.read_bytes())
    assert create_face_analyzer("auto", aux_dir=full).name == "release"
    assert create_face_analyzer("mediapipe", aux_dir=full).name == "mediapipe"
    (full / RELEASE_AUX_FILES["landmark203"]).unlink()
    assert create_face_analyzer("auto", aux_dir=full).name == "mediapipe"


def _pseudo_layout(lmk478: np.ndarray, n: int) -> np.ndarray:
    """A 106/203-layout point set from a face mesh: the layout's anchors get the mesh's
    anchor points, the other slots the mesh points that bound the crop."""
    mesh_lay, lay = LAYOUTS[478], LAYOUTS[n]
    out = np.array([lmk478[MESH_CROP_POINTS[i % len(MESH_CROP_POINTS)]] for i in range(n)])
    out[list(lay.eye_a)] = lmk478[list(mesh_lay.eye_a)]
    out[list(lay.eye_b)] = lmk478[list(mesh_lay.eye_b)]
    out[list(lay.mouth)] = lmk478[list(mesh_lay.mouth)]
    return out


def test_real_portrait_with_ideal_stand_ins(tmp_path):
    """Stand-ins that output the portrait's own (mesh-derived) landmarks, with the face
    mesh of the mediapipe wheel as the 478 source: a real face through the whole chain."""
    from talkinghead.face.mediapipe_backend import MediapipeFaceAnalyzer, MeshLandmarker

    rgb = portrait_rgb()
    mp_analyzer = MediapipeFaceAnalyzer()
    ref = mp_analyzer.analyze(rgb)
    mp_analyzer.close()
    lmk = ref.landmarks.astype(np.float64)
    box = np.array([ref.box.x0, ref.box.y0, ref.box.x1, ref.box.y1])

    det_scale = 512 / max(rgb.shape[:2])
    scrfd_constant(tmp_path / "det.onnx", box * det_scale, ref.box.keypoints * det_scale)
    # 106: landmarks in the model's output units for the detected box
    centre, half = (box[:2] + box[2:]) / 2, 1.5 * max(box[2:] - box[:2]) / 2
    lmk106 = _pseudo_layout(lmk, 106)
    landmark106_model(tmp_path / "l106.onnx", ((lmk106 - centre) / half).astype(np.float32))
    # 203: landmarks in [0, 1] of the 224 crop around the 106 ones
    lmk203 = _pseudo_layout(lmk, 203)
    M_o2c, _ = crop_transform(lmk106, dsize=224, scale=1.5, vy_ratio=-0.1)
    landmark203_model(tmp_path / "l203.onnx", (warp_points(lmk203, M_o2c) / 224).astype(np.float32))

    mesh = MeshLandmarker()
    analyzer = ReleaseFaceAnalyzer(
        ScrfdDetector(onnx_session(tmp_path / "det.onnx")),
        Landmark106(onnx_session(tmp_path / "l106.onnx")),
        Landmark203(onnx_session(tmp_path / "l203.onnx")),
        mesh,
    )
    face = analyzer.analyze(rgb)
    mesh.close()
    assert face.num_faces == 1
    np.testing.assert_allclose(
        [face.box.x0, face.box.y0, face.box.x1, face.box.y1], box, rtol=1e-5, atol=1e-2
    )
    np.testing.assert_allclose(face.box.keypoints, ref.box.keypoints, atol=1e-2)
    # The channel-driven shift of the stand-ins moves points by < SHIFT of the crop sizes.
    size = box[2] - box[0]
    assert np.abs(face.landmarks - lmk203).max() < 0.03 * size
    # The 203 path with mesh-derived points crops like the mesh path.
    corners = np.array([[0, 0], [512, 0], [0, 512], [512, 512]], float)
    diff = warp_points(corners, face.M_c2o) - warp_points(corners, ref.M_c2o)
    assert np.abs(diff).max() < 0.05 * size
    # Eyes from the real mesh on the crop: both open, as the mediapipe backend finds.
    assert (face.eye_open > 0.6).all()
    np.testing.assert_allclose(face.eye_open, ref.eye_open, rtol=0.1)
