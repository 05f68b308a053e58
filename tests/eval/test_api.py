"""`talkinghead.eval.evaluate` and `talkinghead evaluate` end to end on generated videos, with
generated weights; the weight-file lookup, download and error messages."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _conformance import MEDIA_DIR, skip_missing
from _eval_fixtures import all_weight_files, fixed_track, pattern_frames, write_video
from talkinghead.errors import CheckpointError, MediaError
from talkinghead.eval import evaluate, parse_metrics
from talkinghead.eval.face import face_crops, face_windows, syncnet_crops
from talkinghead.eval.video import pair_inputs, resample_indices
from talkinghead.eval.weights import WEIGHT_FILES, WeightFile, WeightResolver


@pytest.fixture(autouse=True)
def _no_shared_caches(tmp_path, monkeypatch):
    """Only the test's own files: empty eval cache and torch hub dir."""
    monkeypatch.setenv("TALKINGHEAD_EVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return all_weight_files(tmp_path_factory.mktemp("weights"))


def _tone(frames: int, fps: float = 25, rate: int = 16000) -> tuple[np.ndarray, int]:
    t = np.arange(round(frames / fps * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    ), rate


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    ref = pattern_frames(10, 64, 64, seed=0)
    noisy = np.clip(ref + np.random.default_rng(1).normal(0, 12, ref.shape), 0, 255).astype(
        np.uint8
    )
    still = np.repeat(ref[:1], 10, axis=0)
    return {
        "ref": write_video(d / "ref.mp4", ref, audio=_tone(10)),
        "pred": write_video(d / "pred.mp4", noisy, audio=_tone(10)),
        "still": write_video(d / "still.mp4", still, audio=_tone(10)),
    }


# ---- inputs ----


def test_pairing_by_name(tmp_path, videos):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    for name in ("b", "a"):
        (tmp_path / "p" / f"{name}.mp4").write_bytes(videos["pred"].read_bytes())
        (tmp_path / "r" / f"{name}.mov").write_bytes(videos["ref"].read_bytes())
    pairs = pair_inputs(tmp_path / "p", tmp_path / "r")
    assert [p.name for p in pairs] == ["a", "b"]
    assert pairs[0].ref.name == "a.mov"
    (tmp_path / "p" / "c.mp4").write_bytes(b"x")
    with pytest.raises(MediaError, match="no file named 'c'"):
        pair_inputs(tmp_path / "p", tmp_path / "r")
    with pytest.raises(MediaError, match="not found"):
        pair_inputs(tmp_path / "nope.mp4", videos["ref"])
    with pytest.raises(MediaError, match="two files or two directories"):
        pair_inputs(tmp_path / "p", videos["ref"])


def test_resample_to_25_fps():
    np.testing.assert_array_equal(resample_indices(10, 25.0), np.arange(10))
    np.testing.assert_array_equal(resample_indices(10, 50.0), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(resample_indices(6, 30.0), [0, 1, 2, 3, 4])


def test_face_crop_geometry():
    frames = np.zeros((2, 100, 120, 3), np.uint8)
    track = fixed_track(frames)  # box 30..90 x 20..80: 60 x 60
    w = face_windows(track)
    np.testing.assert_array_equal(w[0], [14, 86, 24, 96])  # 72 = 1.2 x 60, centred (60, 50)
    assert face_crops(frames, w).shape == (2, 72, 72, 3)
    # syncnet_python's crop: pad by int(bs * 1.8), slice the padded frame, resize to 224.
    frame = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    got = syncnet_crops(frame[None], track.take(np.array([0])))[0]
    bs = 30.0
    pad = int(bs * 1.8)
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
    my, mx = 50 + pad, 60 + pad
    ref = padded[int(my - bs) : int(my + bs * 1.8), int(mx - bs * 1.4) : int(mx + bs * 1.4)]
    import cv2

    np.testing.assert_array_equal(got, cv2.resize(ref, (224, 224)))


def test_parse_metrics():
    assert parse_metrics("psnr, SSIM,lpips-vgg,psnr") == ("psnr", "ssim", "lpips_vgg")
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metrics("psnr,bleu")


# ---- weights ----


def test_resolver_search_order_and_aliases(tmp_path, weights):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "alex.pth").write_bytes((weights / "lpips_v0.1_alex.pth").read_bytes())
    r = WeightResolver(wd, download=False)
    assert r.find("lpips_alex") == wd / "alex.pth"  # the lpips package's own name
    assert r.find("alexnet") is None
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "alexnet-owt-7be5be79.pth").write_bytes(b"x")
    assert r.find("alexnet") == cache / "alexnet-owt-7be5be79.pth"
    assert set(r.missing(["lpips", "fid", "psnr"])) == {"fid"}
    with pytest.raises(CheckpointError) as e:
        r.resolve("syncnet", "lse")
    msg = str(e.value)
    assert "metric 'lse' needs syncnet_v2.model" in msg and "robots.ox.ac.uk" in msg
    assert "\n" not in msg


def test_download_checks_hash_and_extracts_archives(tmp_path, monkeypatch):
    payload = tmp_path / "src.bin"
    payload.write_bytes(b"weights!")
    import hashlib

    prefix = hashlib.sha256(b"weights!").hexdigest()[:8]
    good = WeightFile("t", (f"t-{prefix}.pth",), payload.as_uri(), "test file")
    bad = WeightFile("u", ("u-00000000.pth",), payload.as_uri(), "test file")
    archive = tmp_path / "pack.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("pack/model.onnx", b"onnx!")
    packed = WeightFile(
        "v", ("model.onnx",), archive.as_uri(), "test file", archive_member="model.onnx"
    )
    offline = WeightFile("w", ("w.pth",), (tmp_path / "missing.bin").as_uri(), "test file")
    for spec in (good, bad, packed, offline):
        monkeypatch.setitem(WEIGHT_FILES, spec.key, spec)
    seen = []
    r = WeightResolver(download=True, on_download=seen.append)
    assert r.resolve("t").read_bytes() == b"weights!"
    assert r.resolve("v").read_bytes() == b"onnx!"
    with pytest.raises(CheckpointError, match="sha256"):
        r.resolve("u")
    with pytest.raises(CheckpointError, match="download failed"):
        r.resolve("w")
    assert [s.key for s in seen] == ["t", "v", "u", "w"]
    assert sorted(p.name for p in r.cache.iterdir()) == ["model.onnx", f"t-{prefix}.pth"]


# ---- evaluate ----


def test_weight_free_metrics(videos):
    same = evaluate(videos["ref"], videos["ref"], metrics="psnr,ssim", download=False)
    assert same.mean["psnr"] == float("inf") and same.mean["ssim"] == pytest.approx(1.0)
    noisy = evaluate(videos["pred"], videos["ref"], metrics="psnr,ssim", download=False)
    row = noisy.rows[0]
    assert row.frames == 10 and 20 < row.scores["psnr"] < 40 and 0.3 < row.scores["ssim"] < 0.99
    strided = evaluate(videos["pred"], videos["ref"], metrics="psnr", frame_stride=3, max_frames=7)
    assert strided.rows[0].frames == 7 and strided.settings["frame_stride"] == 3


def test_missing_weights_fail_or_are_skipped(videos):
    with pytest.raises(CheckpointError) as e:
        evaluate(videos["pred"], videos["ref"], metrics="psnr,lpips,fid", download=False)
    msg = str(e.value)
    assert "metric 'lpips' needs alexnet-owt-7be5be79.pth" in msg and "lpips_v0.1_alex.pth" in msg
    assert "metric 'fid' needs pt_inception" in msg and "--skip-missing" in msg
    res = evaluate(
        videos["pred"], videos["ref"], metrics="psnr,lpips,fid", download=False, skip_missing=True
    )
    assert set(res.skipped) == {"lpips", "fid"} and res.columns == ["psnr"]
    assert "pt_inception-2015-12-05-6726825d.pth" in res.skipped["fid"]


@pytest.mark.slow
def test_all_metrics_with_generated_weights(videos, weights, tmp_path):
    # A two-video test set: "same" (a still video against itself) and "noisy".
    for side, names in (("p", ("still", "pred")), ("r", ("still", "ref"))):
        (tmp_path / side).mkdir()
        for key, name in zip(names, ("same", "noisy"), strict=True):
            (tmp_path / side / f"{name}.mp4").write_bytes(videos[key].read_bytes())
    res = evaluate(
        tmp_path / "p", tmp_path / "r", metrics="psnr,ssim,lpips,fid,lse,csim",
        weights_dir=weights, download=False, face_crop=True, frame_stride=5,
        fid_method="fast", face_tracker=fixed_track,
    )  # fmt: skip
    noisy, same = (r.scores for r in res.rows)  # rows sorted by name
    assert same["psnr"] == same["psnr_face"] == float("inf")
    assert same["ssim"] == pytest.approx(1.0) and same["ssim_face"] == pytest.approx(1.0)
    assert same["lpips"] == pytest.approx(0, abs=1e-6) and same["lpips_face"] == pytest.approx(
        0, abs=1e-6
    )
    assert same["csim"] == pytest.approx(1.0, abs=1e-6)  # still frames: every frame is the source
    for s in (same, noisy):
        assert np.isfinite(s["lse_d"]) and s["lse_c"] >= 0 and abs(s["av_offset"]) <= 15
    assert noisy["lpips"] > 0 and noisy["lpips_face"] > 0 and noisy["csim"] < 1
    assert 15 < noisy["psnr"] < 40 and noisy["ssim"] < 1
    assert res.rows[0].audio.endswith("noisy.mp4")  # the prediction's own track
    assert res.mean["fid"] > 0 and "fid" not in noisy and res.columns[-1] == "fid"
    assert res.mean["lse_d"] == pytest.approx((same["lse_d"] + noisy["lse_d"]) / 2)
    assert "av_offset" not in res.mean
    assert set(res.weights) == {"alexnet", "lpips_alex", "inception_fid", "syncnet", "arcface"}
    assert len(res.weights["syncnet"]["sha256"]) == 64
    for dist in ("talkinghead", "torch", "numpy", "scipy", "opencv", "onnxruntime"):
        assert dist in res.versions

    data = json.loads(res.write_json(tmp_path / "r.json").read_text())
    assert data["videos"][0]["scores"]["lpips"] == pytest.approx(noisy["lpips"])
    assert data["mean"]["fid"] == pytest.approx(res.mean["fid"])
    assert data["videos"][1]["scores"]["psnr"] == float("inf")
    lines = res.write_csv(tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("video,pred,ref,frames,psnr,psnr_face,ssim")
    assert lines[-1].startswith("mean,") and len(lines) == 4


def test_fvd_over_a_test_set(tmp_path, weights):
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    for i in range(2):
        frames = pattern_frames(32, 32, 32, seed=i)
        write_video(tmp_path / "r" / f"v{i}.mp4", frames)
        write_video(tmp_path / "p" / f"v{i}.mp4", frames[:, :, ::-1])
    res = evaluate(
        tmp_path / "p", tmp_path / "r", metrics="fvd,psnr", weights_dir=weights, download=False
    )
    assert [r.name for r in res.rows] == ["v0", "v1"]
    assert res.mean["fvd"] > 0 and "fvd" not in res.rows[0].scores
    assert res.mean["psnr"] == pytest.approx(np.mean([r.scores["psnr"] for r in res.rows]))
    same = evaluate(
        tmp_path / "r", tmp_path / "r", metrics="fvd", weights_dir=weights, download=False
    )
    assert abs(same.mean["fvd"]) < 1e-3


@pytest.mark.slow
def test_mesh_tracker_on_the_example_portrait(tmp_path):
    media = MEDIA_DIR / "ditto_example_face.jpg"
    if not media.is_file():
        skip_missing(f"{media}")
    import cv2

    from talkinghead.eval.face import MeshFaceTracker
    from talkinghead.media.source import load_source

    img = cv2.resize(load_source(media).frames[0], (384, 384), interpolation=cv2.INTER_AREA)
    track = MeshFaceTracker()(np.stack([img, img]), "portrait")
    x0, y0, x1, y1 = track.boxes[0]
    assert 0 < x0 < x1 < 384 and 0 < y0 < y1 < 384 and (x1 - x0) > 60
    eye_l, eye_r, nose, mouth_l, mouth_r = track.points[0]
    assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
    assert eye_l[1] < nose[1] < mouth_l[1]
    assert x0 < nose[0] < x1 and y0 < nose[1] < y1


# ---- command line ----


def test_cli_prints_a_table_and_writes_json(videos, tmp_path):
    from talkinghead.cli import app

    out = tmp_path / "out.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate", "--pred", str(videos["pred"]), "--ref", str(videos["ref"]),
            "--metrics", "psnr,ssim,lpips", "--skip-missing", "--no-download",
            "--json", str(out), "--csv", str(tmp_path / "out.csv"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "psnr" in result.stdout and "mean" in result.stdout and "pred" in result.stdout
    assert "skipped lpips" in result.output
    data = json.loads(out.read_text())
    assert data["columns"] == ["psnr", "ssim"] and data["videos"][0]["frames"] == 10
    assert data["versions"]["torch"] and data["settings"]["frame_stride"] == 1
    assert (tmp_path / "out.csv").is_file()


def test_cli_missing_file_is_one_line(tmp_path, videos):
    from talkinghead.cli import app

    result = CliRunner().invoke(
        app,
        ["evaluate", "--pred", str(tmp_path / "none.mp4"), "--ref", str(videos["ref"]),
         "--metrics", "psnr"],
    )  # fmt: skip
    # `talkinghead.cli.main` prints a TalkingHeadError as one line and exits 1.
    assert result.exit_code == 1 and isinstance(result.exception, MediaError)
    msg = str(result.exception)
    assert "\n" not in msg and "none.mp4" in msg and "not found" in msg
    bad = CliRunner().invoke(
        app,
        ["evaluate", "--pred", str(videos["pred"]), "--ref", str(videos["ref"]), "--metrics", "x"],
    )
    assert bad.exit_code == 1 and "unknown metric" in str(bad.exception)


def test_cli_download_lines_keep_their_urls_whole(tmp_path, videos, monkeypatch):
    """The 'downloading NAME from URL' lines are one line each at any terminal width: rich
    once folded them at 80 columns, in the middle of the URL."""
    import urllib.error
    import urllib.request

    from talkinghead.cli import app

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    result = CliRunner().invoke(
        app, ["evaluate", "--pred", str(videos["pred"]), "--ref", str(videos["ref"]),
              "--metrics", "lpips"],
    )  # fmt: skip
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("downloading ")]
    assert lines and all(line.split(" from ")[1].startswith("https://") for line in lines)
    urls = {spec.url for spec in WEIGHT_FILES.values()}
    assert all(line.split(" from ")[1] in urls for line in lines), lines
