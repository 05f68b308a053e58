"""DiT-Head data: lower-face mask on the real portrait, wav2vec2 windows, 25 fps decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _dithead_helpers import portrait, require_media, tiny_wav2vec2
from talkinghead.audio.ctc import Wav2Vec2CTCEncoder
from talkinghead.errors import CheckpointError, MediaError, TalkingHeadError
from talkinghead.face.crop import warp_image, warp_points
from talkinghead.media.video import iter_video_frames
from talkinghead.methods.dithead.config import CropSettings, DataSettings, MaskSettings
from talkinghead.methods.dithead.data import Clip, PreparedDataset, SampleDrawer, prepare_dataset
from talkinghead.methods.dithead.features import (
    apply_mask,
    audio_windows,
    lower_face_mask,
    lower_face_polygon,
)

# MediaPipe mesh indices
MOUTH = {"left corner": 61, "right corner": 291, "upper lip": 0, "lower lip": 17, "inner": 13}
JAW = {"chin": 152, "left jaw": 172, "right jaw": 397, "left chin": 148, "right chin": 377}
EYES = {"left outer": 33, "left inner": 133, "right outer": 263, "right inner": 362}
EYES |= {"left lid": 159, "right lid": 386, "left brow": 105, "right brow": 334}


@pytest.fixture(scope="module")
def face():
    """(256 crop of the example portrait, its 478 landmarks in crop pixels)."""
    require_media()
    from talkinghead.face import create_face_analyzer

    img = portrait()
    analyzer = create_face_analyzer("mediapipe")
    fc = analyzer.analyze(img)
    analyzer.close()
    M_o2c, _ = CropSettings(size=256).transform(fc.landmarks)
    return warp_image(img, M_o2c, 256), warp_points(fc.landmarks, M_o2c)


def _at(mask: np.ndarray, p: np.ndarray) -> float:
    return float(mask[round(float(p[1])), round(float(p[0]))])


def test_mask_covers_mouth_and_jaw_and_excludes_eyes(face):
    crop, lmk = face
    mask = lower_face_mask(lmk, 256)
    assert mask.shape == (256, 256) and mask.dtype == np.float32
    for name, i in (MOUTH | JAW).items():
        assert _at(mask, lmk[i]) > 0.99, name
    for name, i in EYES.items():
        assert _at(mask, lmk[i]) == 0.0, name
    # below the chin too, so a wider-open mouth still lands inside
    below_chin = lmk[152] + (lmk[152] - lmk[1]) * 0.1
    assert _at(mask, below_chin) > 0.5
    # blurred edges: a soft band between 0 and 1, about the kernel's width
    soft = (mask > 0.02) & (mask < 0.98)
    assert soft.sum() > 0.1 * (mask > 0.98).sum()
    masked = apply_mask(crop, mask)
    p = np.round(lmk[13]).astype(int)
    assert masked[p[1], p[0]].max() == 0  # the mouth is blacked out
    q = np.round(lmk[159]).astype(int)
    assert np.array_equal(masked[q[1], q[0]], crop[q[1], q[0]])  # the eyes are kept


def test_mask_shift_and_scale_with_size(face):
    _, lmk = face
    base = lower_face_mask(lmk, 256)
    shifted = lower_face_mask(lmk, 256, shift=(6.0, -4.0))
    ys, xs = np.nonzero(base > 0.5)
    ys2, xs2 = np.nonzero(shifted > 0.5)
    assert xs2.mean() - xs.mean() == pytest.approx(6, abs=0.5)
    assert ys2.mean() - ys.mean() == pytest.approx(-4, abs=0.5)
    small = lower_face_mask(lmk * (32 / 256), 32)  # same geometry at the tiny size
    assert small.shape == (32, 32)
    ys3, xs3 = np.nonzero(small > 0.5)
    assert xs3.mean() / 32 == pytest.approx(xs.mean() / 256, abs=0.03)
    assert ys3.mean() / 32 == pytest.approx(ys.mean() / 256, abs=0.03)
    assert (small > 0.5).mean() == pytest.approx((base > 0.5).mean(), rel=0.3)
    higher = lower_face_mask(lmk, 256, MaskSettings(cut=0.3))
    assert (higher > 0.5).sum() > (base > 0.5).sum()
    with pytest.raises(ValueError, match="dense"):
        lower_face_polygon(lmk[:5])


def test_audio_windows_layout():
    feats = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    win = audio_windows(feats, 5)
    assert win.shape == (4, 15)
    rows = win.reshape(4, 5, 3)
    assert np.array_equal(rows[2, 2], feats[2])  # centre = the frame itself
    assert np.array_equal(rows[2, 0], feats[0]) and np.array_equal(rows[2, 4], feats[3])
    assert np.array_equal(rows[0, 0], feats[0])  # edges repeated
    assert audio_windows(np.zeros((7, 33)), 11).shape == (7, 363)  # the paper's 363 values
    with pytest.raises(ValueError):
        audio_windows(feats, 4)


def test_ctc_features_per_video_frame(tmp_path):
    model = tiny_wav2vec2(tmp_path / "w2v")
    enc = Wav2Vec2CTCEncoder(model)
    assert enc.vocab_size == 33 and enc.normalize  # no preprocessor config: normalise
    rng = np.random.default_rng(0)
    for n, frames in ((6399, 10), (6400, 10), (6401, 11), (100, 1)):
        assert enc.frame_logits(rng.normal(size=n).astype(np.float32) * 0.1).shape == (frames, 33)
    audio = rng.normal(size=16000).astype(np.float32) * 0.1
    whole = enc.frame_logits(audio)
    chunked = Wav2Vec2CTCEncoder(model, chunk_seconds=0.3).frame_logits(audio)
    assert chunked.shape == whole.shape == (25, 33) and np.isfinite(chunked).all()
    # each video frame is the mean of its two 20 ms steps' logits
    steps = enc.logits(audio, 50)
    np.testing.assert_allclose(whole, (steps[0::2] + steps[1::2]) / 2, rtol=1e-5, atol=1e-6)
    assert enc.frame_logits(np.zeros(0, np.float32)).shape == (0, 33)
    with pytest.raises(CheckpointError, match="not found"):
        Wav2Vec2CTCEncoder(tmp_path / "missing")


def test_video_is_resampled_to_25_fps(tmp_path):
    from talkinghead.media.writer import VideoWriter

    path = tmp_path / "ten.mp4"
    with VideoWriter(path, fps=10) as w:
        for i in range(5):
            w.write(np.full((32, 32, 3), 40 * i + 20, np.uint8))
    frames = list(iter_video_frames(path, fps=25))
    assert len(frames) == 13  # 0.5 s at 25 fps
    levels = [int(f.mean()) for f in frames]
    expected = [40 * min(round(k * 10 / 25), 4) + 20 for k in range(13)]  # nearest frame
    assert np.allclose(levels, expected, atol=3), levels


def test_prepare_dataset_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match="no video files"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(TalkingHeadError, match="unknown dithead data option"):
        prepare_dataset(tmp_path / "empty", tmp_path / "out", colour="blue")
    with pytest.raises(MediaError, match="videos directory not found"):
        prepare_dataset(tmp_path / "nope", tmp_path / "out")


def test_references_are_far_from_the_target(face):
    _, lmk = face
    n, s = 80, 32
    clip = Clip(
        name="c",
        frames=np.zeros((n, s, s, 3), np.uint8),
        landmarks=np.repeat((lmk * (s / 256))[None], n, 0).astype(np.float32),
        audio=np.random.default_rng(0).normal(size=(n, 33)).astype(np.float32),
        valid=np.ones(n, bool),
    )
    data = PreparedDataset(Path("."), DataSettings(crop=CropSettings(size=s)), [clip])
    drawer = SampleDrawer(data, seed=0)
    for i in (0, 10, 70, 79):
        refs = {drawer.reference_index(clip, i) for _ in range(10)}
        assert all(abs(r - i) >= 60 for r in refs), (i, refs)
    # no frame 60 away from the middle of an 80-frame clip: the farthest one instead
    assert drawer.reference_index(clip, 40) == 0
    batch = drawer.dit_batch(3)
    assert batch["target"].shape == batch["masked"].shape == batch["reference"].shape
    assert batch["target"].shape == (3, 3, s, s) and batch["audio"].shape == (3, 363)
    assert float(batch["masked"].min()) == -1.0  # the masked region is black


def test_400_clips_load_under_a_descriptor_limit_of_256(tmp_path):
    """One memory map per clip would need 400 descriptors; the pool keeps 64 open."""
    import json
    import subprocess
    import sys
    import textwrap

    from talkinghead.methods.dithead.data import DATASET_FILE, FORMAT

    size, n, k = 8, 3, 4
    settings = DataSettings(crop=CropSettings(size=size))
    clips = []
    for c in range(400):
        d = tmp_path / "clips" / f"c{c}"
        d.mkdir(parents=True)
        np.full((n, size, size, 3), c % 256, np.uint8).tofile(d / "frames.u8")
        np.save(d / "landmarks.npy", np.zeros((n, k, 2), np.float32))
        np.save(d / "audio.npy", np.zeros((n, 33), np.float32))
        np.save(d / "valid.npy", np.ones(n, bool))
        clips.append({"name": f"c{c}", "frames": n})
    manifest = {"format": FORMAT, "settings": settings.to_dict(), "clips": clips}
    (tmp_path / DATASET_FILE).write_text(json.dumps(manifest))
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        from talkinghead.methods.dithead.data import load_prepared
        from talkinghead.training.arrays import open_file_count
        data = load_prepared({str(tmp_path)!r})
        for c, clip in enumerate(data.clips):  # every clip's every frame
            for i in range(len(clip)):
                assert int(clip.frames[i].max()) == c % 256
        print("ok", len(data.clips), open_file_count())
        """
    )
    src = Path(__file__).resolve().parents[3] / "src"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    word, clips_seen, fds = out.stdout.split()
    assert word == "ok" and int(clips_seen) == 400 and int(fds) < 256
