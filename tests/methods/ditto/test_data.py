"""Ditto training-data preparation on short videos made from the example portrait and speech.

Tiny networks (a small motion extractor, a deterministic stand-in HuBERT encoder) with the
real mediapipe face backend; the stand-ins are module-level classes so spawned workers can
unpickle them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _conformance import MEDIA_DIR, skip_missing
from _ditto_stand_ins import StandInEmotion, fake_prepare, recorded_calls
from _tiny_release import tiny_hubert_onnx
from talkinghead.errors import MediaError
from talkinghead.methods import METHODS, Method
from talkinghead.methods.ditto.motion.conditions import NEUTRAL, emotion_vector
from talkinghead.models.convnextv2 import ConvNeXtV2Config
from talkinghead.models.motion_extractor import MotionExtractor

PORTRAIT = MEDIA_DIR / "ditto_example_face.jpg"
SPEECH = MEDIA_DIR / "ditto_example_speech.wav"

MOTION_TINY = {"backbone": ConvNeXtV2Config(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))}
AUD_DIM = 16


class StandInHubert:
    """Deterministic SpeechEncoder: 400-sample windows every 320 samples, projected to 16 dims."""

    feat_dim = AUD_DIM

    def __init__(self) -> None:
        self.w = np.random.default_rng(0).standard_normal((400, AUD_DIM)).astype(np.float32)

    def encode(self, chunk: np.ndarray) -> np.ndarray:
        n = (chunk.shape[0] - 400) // 320 + 1
        frames = np.stack([chunk[i * 320 : i * 320 + 400] for i in range(n)])
        return frames @ self.w


def tiny_networks() -> dict:
    torch.manual_seed(0)
    return {
        "motion_extractor": MotionExtractor(**MOTION_TINY).eval(),
        "speech_encoder": StandInHubert(),
    }


def make_talking_video(path: Path, n_frames: int, fps: float = 25.0, size: int = 256) -> None:
    """The portrait under a slow affine motion, with the first seconds of the speech."""
    import cv2

    from talkinghead.audio.io import load_audio
    from talkinghead.media.writer import VideoWriter

    img = cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    audio = load_audio(SPEECH, 16000)[: int(16000 * n_frames / fps)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, fps=fps, audio=(audio, 16000), preset="ultrafast") as w:
        for i in range(n_frames):
            c = size / 2
            m = cv2.getRotationMatrix2D((c, c), 4 * np.sin(i / 6), 1 + 0.03 * np.sin(i / 9))
            m[:, 2] += (5 * np.sin(i / 5), 3 * np.cos(i / 7))
            w.write(cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT))


@pytest.fixture(scope="module")
def media_ok():
    if not (PORTRAIT.is_file() and SPEECH.is_file()):
        skip_missing(f"{MEDIA_DIR}")
    pytest.importorskip("mediapipe")


@pytest.fixture(scope="module")
def videos(tmp_path_factory, media_ok) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_talking_video(root / "talking.mp4", 36)
    make_talking_video(root / "sub" / "talking30.mp4", 24, fps=30.0)  # -> 20 frames at 25 fps
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def prepared(videos, tmp_path_factory):
    from talkinghead.methods.ditto.data import prepare_dataset

    out = tmp_path_factory.mktemp("data")
    calls = []
    report = prepare_dataset(
        videos,
        out,
        networks=tiny_networks(),
        emotion_classifier=StandInEmotion(),
        face_backend="mediapipe",
        progress=lambda done, total: calls.append((done, total)),
        flip=False,  # the mirrored copies (on by default) are tested on their own
    )
    return report, out, calls


def test_report_lists_good_and_bad_videos(prepared):
    report, _, calls = prepared
    assert sorted(report.prepared) == ["sub/talking30", "talking"]
    assert list(report.failed) == ["broken"]
    assert "broken.mp4" in report.failed["broken"] and "\n" not in report.failed["broken"]
    assert report.skipped == []
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert report.frames == 36 + 20


def test_manifest_and_arrays_have_documented_shapes(prepared):
    _, out, _ = prepared
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "talkinghead-ditto-data" and manifest["fps"] == 25
    assert manifest["dims"] == {
        "aud": [AUD_DIM],
        "mtn": [328],
        "eye_open": [2],
        "eye_ball": [6],
        "emo": [8],
        "sc": [],
    }
    assert manifest["settings"]["emotion"] == "stand-in"
    videos = manifest["videos"]
    assert videos["broken"]["status"] == "failed" and videos["broken"]["error"]
    assert videos["sub/talking30"]["resampled_from"] == pytest.approx(30.0)
    for name, n in (("talking", 36), ("sub/talking30", 20)):
        entry = videos[name]
        assert entry["status"] == "ok" and entry["frame_num"] == n
        arrays = {k: np.load(out / p) for k, p in entry["files"].items()}
        assert arrays["aud"].shape == (n, AUD_DIM)
        assert arrays["mtn"].shape == (n, 328)
        assert arrays["eye_open"].shape == (n, 2) and arrays["eye_ball"].shape == (n, 6)
        assert arrays["emo"].shape == (n, 8) and arrays["sc"].shape == (63,)
        assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in arrays.values())
        np.testing.assert_allclose(arrays["emo"].sum(1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(arrays["sc"], arrays["mtn"][0, 265:])
        # Open eyes in a real face; the affine motion moves the head between frames.
        assert (arrays["eye_open"] > 0.3).all()
        assert np.ptp(arrays["mtn"][:, :265], axis=0).max() > 0

    data_list = json.loads((out / "data_list.json").read_text())
    assert sorted(d["name"] for d in data_list) == ["sub/talking30", "talking"]
    for d in data_list:
        assert set(d) >= {"frame_num", "mtn", "aud", "emo", "eye_open", "eye_ball", "sc"}
        assert np.load(out / d["mtn"]).shape[0] == d["frame_num"]
    info = json.loads((out / "data_info.json").read_text())
    assert len(info["LP_npy_list"]) == 2 and all(Path(p).is_file() for p in info["LP_npy_list"])


def test_motion_matches_the_extractor_on_the_same_crop(prepared, videos):
    """Frame 0 of the 25 fps video, cropped with the clip's box (the default crop mode,
    recorded in the manifest: a square of whole pixels, black outside the frame, resized
    to 512), gives the stored motion."""
    import cv2

    from talkinghead.face import create_face_analyzer
    from talkinghead.media.video import iter_video_frames
    from talkinghead.methods.ditto.motion.extraction import crop_to_network_input
    from talkinghead.methods.ditto.motion.format import dict_to_motion
    from talkinghead.models.motion_extractor import OUTPUT_KEYS

    _, out, _ = prepared
    crop = json.loads((out / "manifest.json").read_text())["videos"]["talking"]["crop"]
    assert crop["mode"] == "clip"
    x0, y0, x1, y1 = crop["box"]
    assert x1 - x0 == y1 - y0 and all(isinstance(v, int) for v in crop["box"])
    frame = next(iter_video_frames(videos / "talking.mp4", fit=True))
    face = create_face_analyzer("mediapipe").analyze(frame)
    pad = max(0, -x0, -y0, x1 - frame.shape[1], y1 - frame.shape[0])
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)))
    square = padded[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
    shrink = x1 - x0 > 512
    clip_crop = cv2.resize(
        square, (512, 512), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    )
    net = tiny_networks()["motion_extractor"]
    x = torch.from_numpy(crop_to_network_input(clip_crop)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        info = dict(zip(OUTPUT_KEYS, (o.numpy() for o in net(x)), strict=True))
    stored = np.load(out / "LP_npy" / "talking.npy")[0]
    np.testing.assert_allclose(stored, dict_to_motion(info, include_kp=True)[0], atol=1e-5)
    np.testing.assert_allclose(
        np.load(out / "eye_open_npy" / "talking.npy")[0], face.eye_open, atol=1e-6
    )


def test_resume_skips_finished_videos_and_redoes_incomplete_ones(prepared, videos, tmp_path):
    import shutil

    from talkinghead.methods.ditto.data import prepare_dataset

    _, first_out, _ = prepared
    out = tmp_path / "data"
    shutil.copytree(first_out, out)
    kept = out / "LP_npy" / "talking.npy"
    mtime = kept.stat().st_mtime_ns
    (out / "emo_npy" / "sub" / "talking30.npy").unlink()  # an interrupted video
    report = prepare_dataset(
        videos, out, networks=tiny_networks(), face_backend="mediapipe", flip=False
    )
    assert report.skipped == ["talking"]
    assert report.prepared == ["sub/talking30"]
    assert list(report.failed) == ["broken"]
    assert kept.stat().st_mtime_ns == mtime
    # Without a classifier the stated default fills the emotion rows: Neutral.
    emo = np.load(out / "emo_npy" / "sub" / "talking30.npy")
    np.testing.assert_allclose(emo, np.tile(emotion_vector(NEUTRAL).numpy(), (20, 1)), atol=1e-6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["emotion"] == "default:Neutral"
    assert manifest["videos"]["talking"]["status"] == "ok"


def test_parallel_workers_give_the_in_process_result(prepared, videos, tmp_path):
    """Two spawned worker processes; the bad video does not stop the other one."""
    from talkinghead.methods.ditto.data import prepare_dataset

    _, serial, _ = prepared
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "clip.mp4").symlink_to(videos / "sub" / "talking30.mp4")
    (folder / "broken.mp4").symlink_to(videos / "broken.mp4")
    out = tmp_path / "parallel"
    report = prepare_dataset(
        folder,
        out,
        workers=2,
        networks=tiny_networks(),
        face_backend="mediapipe",
        # named by import path: each worker builds its own
        emotion_classifier="_ditto_stand_ins:StandInEmotion",
        flip=False,
    )
    assert report.prepared == ["clip"] and list(report.failed) == ["broken"]
    for kind in ("LP_npy", "hubert_aud_npy", "eye_open_npy", "eye_ball_npy", "emo_npy"):
        np.testing.assert_allclose(
            np.load(out / kind / "clip.npy"),
            np.load(serial / kind / "sub" / "talking30.npy"),
            atol=1e-5,
        )


def test_mirrored_copies_by_default(videos, tmp_path):
    """The release always adds mirrored copies: NAME_flip next to NAME, same length."""
    from talkinghead.methods.ditto.data import prepare_dataset

    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "clip.mp4").symlink_to(videos / "sub" / "talking30.mp4")
    out = tmp_path / "data"
    report = prepare_dataset(folder, out, networks=tiny_networks(), face_backend="mediapipe")
    assert sorted(report.prepared) == ["clip", "clip_flip"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["flip"] is True and manifest["videos"]["clip_flip"]["flip"]
    plain, mirrored = (np.load(out / "LP_npy" / f"{n}.npy") for n in ("clip", "clip_flip"))
    assert plain.shape == mirrored.shape and not np.allclose(plain, mirrored)
    np.testing.assert_array_equal(
        np.load(out / "hubert_aud_npy" / "clip.npy"),
        np.load(out / "hubert_aud_npy" / "clip_flip.npy"),
    )


def test_prepared_data_trains(prepared, tmp_path):
    """The prepared folder is what train-motion reads: a few steps of the tiny preset."""
    from dataclasses import replace

    from talkinghead.methods.ditto.train import PRESETS, train_motion

    _, out, _ = prepared
    cfg = replace(PRESETS["tiny"], max_steps=2, tensorboard=False)
    result = train_motion(out, tmp_path / "run", cfg)
    assert result.step == 2 and all(np.isfinite(result.losses))
    sidecar = json.loads(result.sidecar.read_text())["lmdm"]
    assert sidecar["audio_feat_dim"] == AUD_DIM + 8 + 2 + 6 + 63


def test_user_errors(tmp_path):
    from talkinghead.errors import CheckpointError
    from talkinghead.methods.ditto.data import prepare_dataset

    with pytest.raises(MediaError, match="videos directory not found"):
        prepare_dataset(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(MediaError, match="no video files"):
        prepare_dataset(tmp_path, tmp_path / "out")
    (tmp_path / "a.mp4").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="--checkpoints"):
        prepare_dataset(tmp_path, tmp_path / "out")


def test_resampling_to_25_fps_is_nearest_frame(tmp_path):
    """The video reader the preparation uses: output frame j shows source frame
    round(j * fps / 25)."""
    from talkinghead.media.video import iter_video_frames
    from talkinghead.media.writer import VideoWriter

    def levels(fps: int) -> list[int]:
        path = tmp_path / f"{fps}.mp4"
        with VideoWriter(path, fps=fps) as w:  # one second, frame i at level 8 * i
            for i in range(fps):
                w.write(np.full((32, 32, 3), 8 * i, np.uint8))
        return [round(float(f.mean()) / 8) for f in iter_video_frames(path, fps=25)]

    down = levels(30)
    assert len(down) == 25 and down[:6] == [0, 1, 2, 4, 5, 6]
    up = levels(20)
    assert len(up) == 25 and up[:5] == [0, 1, 2, 2, 3]


# --- the prepare-data command ------------------------------------------------------------------


def tiny_checkpoints(root: Path) -> Path:
    """A release-shaped checkpoints root: tiny motion extractor + sidecar, tiny HuBERT ONNX."""
    from talkinghead.models import save_official

    models = root / "ditto_pytorch" / "models"
    save_official(
        tiny_networks()["motion_extractor"], "motion_extractor", models / "motion_extractor.pth"
    )
    backbone = {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}
    (models / "talkinghead.json").write_text(
        json.dumps({"motion_extractor": {"backbone": backbone}})
    )
    aux = root / "ditto_pytorch" / "aux_models"
    aux.mkdir(parents=True, exist_ok=True)
    tiny_hubert_onnx(aux / "hubert_streaming_fix_kv.onnx", dim=AUD_DIM)
    return root


def invoke(args: list[str]):
    from typer.testing import CliRunner

    from talkinghead.cli import app

    return CliRunner().invoke(app, args)


def assert_one_line_error(result, match: str) -> None:
    from talkinghead.errors import TalkingHeadError

    assert result.exit_code == 1
    assert isinstance(result.exception, TalkingHeadError), result.output
    assert match in str(result.exception) and "\n" not in str(result.exception)


def test_cli_prepares_from_a_checkpoints_folder(media_ok, tmp_path):
    videos = tmp_path / "videos"
    make_talking_video(videos / "clip.mp4", 10)
    ckpt = tiny_checkpoints(tmp_path / "checkpoints")
    out = tmp_path / "data"
    result = invoke(["prepare-data", str(videos), str(out), "--checkpoints", str(ckpt)])
    assert result.exit_code == 0, result.output
    # The clip and its mirrored copy (mirroring is on by default, as in the release).
    assert "2 prepared, 0 already done, 0 failed" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dims"]["aud"] == [AUD_DIM] and manifest["videos"]["clip"]["frame_num"] == 10
    assert manifest["settings"]["hubert"].endswith("hubert_streaming_fix_kv.onnx")
    assert manifest["settings"]["emotion"] == "default:Neutral"
    again = invoke(["prepare-data", str(videos), str(out), "--checkpoints", str(ckpt)])
    assert again.exit_code == 0 and "0 prepared, 2 already done" in again.output


def test_cli_errors_are_one_line(tmp_path, monkeypatch):

    assert_one_line_error(
        invoke(["prepare-data", str(tmp_path / "missing"), str(tmp_path / "out")]), "not found"
    )
    assert_one_line_error(
        invoke(["prepare-data", str(tmp_path), str(tmp_path / "out"), "--method", "nope"]),
        "unknown method 'nope'",
    )
    monkeypatch.setitem(METHODS, "ghost", Method("ghost", "a method without a folder"))
    assert_one_line_error(
        invoke(["prepare-data", str(tmp_path), str(tmp_path / "out"), "--method", "ghost"]),
        "data preparation for 'ghost' is not available",
    )
    (tmp_path / "broken.mp4").write_bytes(b"garbage")
    ckpt = tiny_checkpoints(tmp_path / "checkpoints")
    assert_one_line_error(
        invoke(["prepare-data", str(tmp_path), str(tmp_path / "out"), "--checkpoints", str(ckpt)]),
        "no video could be prepared (1 failed)",
    )
    assert_one_line_error(
        invoke(
            [
                "prepare-data",
                str(tmp_path),
                str(tmp_path / "o2"),
                "--option",
                "batch_size=2",
                "--option",
                "colour=red",
            ]
        ),
        "no option(s) colour",
    )


def test_cli_dispatches_by_method_with_its_options(tmp_path, monkeypatch):
    from talkinghead.commands import data as data_cmd

    monkeypatch.setattr(data_cmd, "load_prepare_function", lambda method: fake_prepare)
    recorded_calls.clear()
    result = invoke(
        [
            "prepare-data",
            str(tmp_path),
            str(tmp_path / "out"),
            "--method",
            "dithead",
            "-j",
            "3",
            "--device",
            "cpu",
            "--option",
            "image_size=256",
            "--option",
            "name=x",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "fake report" in result.output
    assert recorded_calls == [
        {
            "videos_dir": tmp_path,
            "checkpoints": None,
            "workers": 3,
            "device": "cpu",
            "image_size": 256,
            "name": "x",
        }
    ]


def test_main_prints_one_line_and_exits_1(tmp_path, monkeypatch, capsys):
    import sys

    from talkinghead import cli

    monkeypatch.setattr(
        sys, "argv", ["talkinghead", "prepare-data", str(tmp_path / "none"), str(tmp_path)]
    )
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "videos directory not found" in err
