"""Avatar registration (tiny networks, fake face analyser) and its on-disk cache."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

import talkinghead.methods.ditto.avatar as avatar_mod
from _conformance import MEDIA_DIR, skip_missing
from talkinghead.errors import NoFaceError, TalkingHeadError
from talkinghead.face.types import CropConfig, FaceCrop
from talkinghead.methods.ditto.avatar import (
    MOTION_KEYS,
    Avatar,
    AvatarCache,
    AvatarRegistrar,
    checkpoint_identity,
    default_cache_dir,
    mean_filter,
    mirror_index,
    smooth_motion,
)
from talkinghead.models import save_official
from talkinghead.models.appearance_extractor import AppearanceFeatureExtractor
from talkinghead.models.convnextv2 import ConvNeXtV2Config
from talkinghead.models.motion_extractor import OUTPUT_KEYS, MotionExtractor

# Real head sizes (21 keypoints, 66 bins) and a real-shaped f_s [32, 16, 64, 64] at little
# cost: a two-channel-wide backbone, and no 3-D res blocks in the appearance extractor.
MOTION_TINY = {"backbone": ConvNeXtV2Config(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))}
APPEARANCE_TINY = {"block_expansion": 8, "num_resblocks": 0}
MOTION_SIZES = {"pitch": 66, "yaw": 66, "roll": 66, "t": 3, "exp": 63, "scale": 1, "kp": 63}
F_S_SHAPE = (32, 16, 64, 64)


class FakeAnalyzer:
    """Deterministic FaceCrops computed from the frame alone; records every call."""

    name = "fake"
    crop_config = CropConfig()  # where the real backends keep it

    def __init__(self, no_face_at: int | None = None) -> None:
        self.calls: list[tuple[np.ndarray, FaceCrop | None]] = []
        self.results: list[FaceCrop] = []
        self.no_face_at = no_face_at

    def analyze(self, rgb: np.ndarray, previous: FaceCrop | None = None) -> FaceCrop:
        if len(self.calls) == self.no_face_at:
            raise NoFaceError("no face found")
        self.calls.append((rgb, previous))
        h, w = rgb.shape[:2]
        m = float(rgb.mean())
        result = FaceCrop(
            crop=cv2.resize(rgb, (512, 512), interpolation=cv2.INTER_LINEAR),
            M_c2o=np.array([[w / 512, 0, m], [0, h / 512, 1], [0, 0, 1]], np.float32),
            landmarks=np.full((5, 2), m, np.float32),
            eye_open=np.array([m / 255, m / 510], np.float32),
            eye_ball=np.arange(6, dtype=np.float32) * m,
            num_faces=2,
            mesh=np.full((478, 3), m / 255, np.float32),
        )
        self.results.append(result)
        return result


def make_frames(n: int, seed: int = 0, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """Smooth-ish random RGB frames, [n, H, W, 3] uint8."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)
    return np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_LINEAR) for f in small])


@pytest.fixture(scope="module")
def nets() -> tuple[MotionExtractor, AppearanceFeatureExtractor]:
    torch.manual_seed(0)
    return MotionExtractor(**MOTION_TINY).eval(), AppearanceFeatureExtractor(
        **APPEARANCE_TINY
    ).eval()


def registrar(nets, analyzer=None, **kwargs) -> AvatarRegistrar:
    motion, appearance = nets
    return AvatarRegistrar(analyzer or FakeAnalyzer(), motion, appearance, **kwargs)


@pytest.fixture(scope="module")
def video_avatar(nets) -> Avatar:
    return registrar(nets).register(make_frames(5), fps=25.0)


def check_shapes(av: Avatar, n: int, hw: tuple[int, int]) -> None:
    assert av.num_frames == n and av.frame_size == hw
    assert av.frames.shape == (n, *hw, 3) and av.frames.dtype == np.uint8
    assert set(av.x_s_info) == set(MOTION_KEYS)
    for k, size in MOTION_SIZES.items():
        assert av.x_s_info[k].shape == (n, size) and av.x_s_info[k].dtype == np.float32, k
        assert av.x_s_info_at(n - 1)[k].shape == (1, size)
    fields = {"f_s": (n, *F_S_SHAPE), "M_c2o": (n, 3, 3), "eye_open": (n, 2), "eye_ball": (n, 6)}
    for name, shape in fields.items():
        arr = getattr(av, name)
        assert arr.shape == shape and arr.dtype == np.float32, name
    assert av.sc.shape == (63,) and av.sc.dtype == np.float32
    assert av.face_backend == "fake" and av.num_faces == 2


def test_image_fields(nets):
    image = make_frames(1, seed=3)[0]
    av = registrar(nets).register(image)
    check_shapes(av, 1, (48, 64))
    assert av.is_image and av.fps is None
    np.testing.assert_array_equal(av.frames[0], image)
    np.testing.assert_array_equal(av.sc, av.x_s_info["kp"][0])
    assert [av.frame_index(i) for i in range(4)] == [0, 0, 0, 0]


def test_video_fields(video_avatar):
    check_shapes(video_avatar, 5, (48, 64))
    assert not video_avatar.is_image and video_avatar.fps == 25.0
    np.testing.assert_array_equal(video_avatar.frames, make_frames(5))


def test_source_media_object_is_accepted(nets):
    frames = make_frames(2)
    media = SimpleNamespace(frames=list(frames), is_image=False, fps=30.0, path="clip.mp4")
    av = registrar(nets).register(media)
    assert not av.is_image and av.fps == 30.0 and av.source_path == "clip.mp4"
    assert av.num_frames == 2


def test_preprocessing_and_outputs_match_the_networks(nets):
    """crop 512 -> 256 (INTER_AREA) -> /255 -> both networks, per frame."""
    analyzer = FakeAnalyzer()
    av = registrar(nets, analyzer).register(make_frames(1)[0])
    face = analyzer.results[0]
    x256 = cv2.resize(face.crop, (256, 256), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(x256.astype(np.float32)[None] / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        motion = nets[0](x)
        f_s = nets[1](x)
    for k, out in zip(OUTPUT_KEYS, motion, strict=True):
        np.testing.assert_allclose(av.x_s_info[k], out.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(av.f_s, f_s.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(av.M_c2o[0], face.M_c2o)
    np.testing.assert_array_equal(av.eye_open[0], face.eye_open)
    np.testing.assert_array_equal(av.eye_ball[0], face.eye_ball)


def test_batches_give_the_same_result_as_one_by_one(nets, video_avatar):
    frames = make_frames(5)
    progress: list[tuple[int, int]] = []
    one = registrar(nets, batch_size=1).register(frames, fps=25.0)
    two = registrar(nets, batch_size=2).register(
        frames, fps=25.0, progress=lambda d, t: progress.append((d, t))
    )
    assert progress == [(0, 5), (2, 5), (4, 5), (5, 5)]
    for other in (two, video_avatar):  # batch 8 holds all five
        for k in MOTION_KEYS:
            np.testing.assert_allclose(other.x_s_info[k], one.x_s_info[k], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(other.f_s, one.f_s, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(other.sc, one.sc, rtol=1e-4, atol=1e-5)


def test_mean_filter_by_hand():
    # k = 13: 6 frames either side, the window cut at the ends and the mean over what is left.
    ramp = np.arange(20, dtype=np.float32)[:, None]
    expected = [3, 3.5, 4, 4.5, 5, 5.5, *range(6, 14), 13.5, 14, 14.5, 15, 15.5, 16]
    np.testing.assert_allclose(mean_filter(ramp, 13)[:, 0], expected, rtol=1e-6)
    impulse = np.zeros((16, 1), np.float32)
    impulse[0] = 13.0
    expected = [13 / 7, 13 / 8, 13 / 9, 13 / 10, 13 / 11, 13 / 12, 1] + [0] * 9
    np.testing.assert_allclose(mean_filter(impulse, 13)[:, 0], expected, rtol=1e-6)
    # Shorter than the window: every frame averages the whole sequence.
    np.testing.assert_allclose(mean_filter(np.array([[1.0], [2.0], [6.0]]), 13)[:, 0], [3, 3, 3])
    # Even k behaves like k + 1 (the release's half = k // 2).
    np.testing.assert_allclose(mean_filter(ramp, 4), mean_filter(ramp, 5))
    assert mean_filter(ramp.astype(np.float32), 13).dtype == np.float32


def test_smooth_motion_covers_every_key_and_leaves_single_frames_alone():
    rng = np.random.default_rng(0)
    info = {k: rng.standard_normal((15, n)).astype(np.float32) for k, n in MOTION_SIZES.items()}
    smoothed = smooth_motion(info, 13)
    for k in MOTION_KEYS:  # the release ignores no key, kp and pose logits included
        np.testing.assert_allclose(smoothed[k], mean_filter(info[k], 13))
    one = {k: v[:1] for k, v in info.items()}
    for k in MOTION_KEYS:
        np.testing.assert_array_equal(smooth_motion(one, 13)[k], one[k])
        np.testing.assert_array_equal(smooth_motion(info, 1)[k], info[k])


def test_video_motion_is_smoothed_and_sc_is_the_raw_frame_zero(nets, video_avatar):
    raw = registrar(nets, smooth_k=1).register(make_frames(5), fps=25.0)
    expected = smooth_motion(raw.x_s_info, 13)
    for k in MOTION_KEYS:
        np.testing.assert_allclose(video_avatar.x_s_info[k], expected[k], rtol=1e-5, atol=1e-6)
    assert not np.allclose(video_avatar.x_s_info["kp"][0], raw.x_s_info["kp"][0])
    np.testing.assert_allclose(video_avatar.sc, raw.x_s_info["kp"][0], rtol=1e-5, atol=1e-6)
    # Nothing but motion is smoothed.
    np.testing.assert_allclose(video_avatar.f_s, raw.f_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(video_avatar.eye_open, raw.eye_open)


def test_images_are_not_smoothed(nets):
    image = make_frames(1, seed=4)[0]
    a = registrar(nets).register(image)
    b = registrar(nets, smooth_k=1).register(image)
    for k in MOTION_KEYS:
        np.testing.assert_array_equal(a.x_s_info[k], b.x_s_info[k])


def test_mirror_loop_indices(video_avatar):
    # The release shows each end frame twice: ... 3, 4, 4, 3 ... 1, 0, 0, 1 ...
    expected = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 0, 1, 2]
    assert [mirror_index(i, 5) for i in range(13)] == expected
    assert [video_avatar.frame_index(i) for i in range(13)] == expected
    assert video_avatar.frame_indices(13).tolist() == expected
    assert [mirror_index(i, 1) for i in range(3)] == [0, 0, 0]
    assert [mirror_index(i, 2) for i in range(6)] == [0, 1, 1, 0, 0, 1]
    with pytest.raises(ValueError):
        mirror_index(-1, 5)


def test_video_frames_are_tracked_from_the_previous_result(nets):
    analyzer = FakeAnalyzer()
    frames = make_frames(4)
    registrar(nets, analyzer, batch_size=3).register(frames, fps=25.0)
    assert len(analyzer.calls) == 4
    assert analyzer.calls[0][1] is None
    for i in range(1, 4):
        np.testing.assert_array_equal(analyzer.calls[i][0], frames[i])
        assert analyzer.calls[i][1] is analyzer.results[i - 1]


def test_no_face_names_the_source_and_frame(nets):
    media = SimpleNamespace(frames=list(make_frames(3)), is_image=False, fps=25.0, path="x.mp4")
    with pytest.raises(NoFaceError, match=r"x\.mp4 \(frame 2\): no face found"):
        registrar(nets, FakeAnalyzer(no_face_at=2)).register(media)


# --- cache ---------------------------------------------------------------------------------


def load_npy(path, max_side=1920, max_frames=None):
    frames = np.load(path)[:max_frames]
    n = len(frames)
    return SimpleNamespace(
        frames=list(frames), is_image=n == 1, fps=None if n == 1 else 25.0, path=path
    )


class CountingRegistrar(AvatarRegistrar):
    calls = 0

    def register(self, *args, **kwargs):
        self.calls += 1
        return super().register(*args, **kwargs)


def counting(nets, **kwargs) -> CountingRegistrar:
    motion, appearance = nets
    kwargs.setdefault("model_identity", "tiny-v1")
    return CountingRegistrar(FakeAnalyzer(), motion, appearance, **kwargs)


def assert_same_avatar(a: Avatar, b: Avatar) -> None:
    for f in dataclasses.fields(Avatar):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if f.name == "x_s_info":
            assert va.keys() == vb.keys()
            for k in va:
                np.testing.assert_array_equal(va[k], vb[k])
        elif isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype
            np.testing.assert_array_equal(va, vb)
        else:
            assert va == vb, f.name


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "face.npy"
    np.save(path, make_frames(1, seed=7))
    return path


def test_second_registration_is_a_hit(nets, source, tmp_path):
    cache = AvatarCache(tmp_path / "cache")
    reg = counting(nets)
    first = cache.get_or_register(source, reg, load=load_npy)
    assert reg.calls == 1 and cache.last_hit is False
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".avatar"]

    def no_load(*args, **kwargs):
        raise AssertionError("a cache hit must not load the source")

    second = cache.get_or_register(source, reg, load=no_load)
    assert reg.calls == 1 and cache.last_hit is True
    assert_same_avatar(first, second)  # the face mesh too
    assert second.mesh is not None and second.mesh.shape == (478, 3)
    assert second.source_path == str(source)


def test_video_round_trip(nets, tmp_path):
    path = tmp_path / "clip.npy"
    np.save(path, make_frames(3, seed=2))
    cache = AvatarCache(tmp_path / "cache")
    first = cache.get_or_register(path, counting(nets), load=load_npy)
    second = cache.get_or_register(path, counting(nets), load=load_npy)
    assert cache.last_hit and not second.is_image and second.fps == 25.0
    assert_same_avatar(first, second)
    # Frame 0's mesh is kept (the use_lmk condition), not a later frame's.
    frames = np.load(path).astype(np.float64)
    assert second.mesh.shape == (478, 3) and frames[0].mean() != frames[1].mean()
    np.testing.assert_allclose(second.mesh, frames[0].mean() / 255, rtol=1e-6)


def test_what_changes_the_key(nets, source, tmp_path):
    cache = AvatarCache(tmp_path / "cache")
    reg = counting(nets)
    cache.get_or_register(source, reg, load=load_npy)
    # Same content elsewhere is a hit; changed content, other models or settings are misses.
    copy = tmp_path / "copy.npy"
    copy.write_bytes(source.read_bytes())
    cache.get_or_register(copy, reg, load=load_npy)
    assert cache.last_hit
    np.save(source, make_frames(1, seed=8))
    cache.get_or_register(source, reg, load=load_npy)
    assert not cache.last_hit and reg.calls == 2
    other = counting(nets, model_identity="tiny-v2")
    cache.get_or_register(source, other, load=load_npy)
    assert not cache.last_hit and other.calls == 1
    cache.get_or_register(source, reg, load=load_npy, max_side=512)
    assert not cache.last_hit
    smoother = counting(nets, smooth_k=5)
    assert cache.key(source, smoother) != cache.key(source, reg)
    cropped = counting(nets)
    cropped.face_analyzer.crop_config = CropConfig(scale=2.0)
    assert cache.key(source, cropped) != cache.key(source, reg)
    renamed = counting(nets)
    renamed.face_analyzer.name = "other"
    assert cache.key(source, renamed) != cache.key(source, reg)


def test_corrupt_entries_are_rebuilt(nets, source, tmp_path, caplog):
    cache = AvatarCache(tmp_path / "cache")
    reg = counting(nets)
    good = cache.get_or_register(source, reg, load=load_npy)
    entry = cache.entry_path(cache.key(source, reg))
    blob = entry.read_bytes()
    damaged = [
        blob[: len(blob) // 2],  # truncated
        b"not a zip file",
        blob[:100] + bytes(b ^ 0xFF for b in blob[100:120]) + blob[120:],  # header flips
        blob[: len(blob) // 2] + bytes([blob[len(blob) // 2] ^ 1]) + blob[len(blob) // 2 + 1 :],
        blob + b"\0",  # trailing bytes
    ]
    for i, bad in enumerate(damaged, start=2):
        entry.write_bytes(bad)
        with caplog.at_level(logging.WARNING, logger="talkinghead.methods.ditto.avatar"):
            rebuilt = cache.get_or_register(source, reg, load=load_npy)
        assert not cache.last_hit and reg.calls == i
        assert "corrupt avatar cache entry" in caplog.text
        assert_same_avatar(good, rebuilt)
        assert cache.load(cache.key(source, reg)) is not None


def test_failed_write_leaves_nothing_behind(nets, source, tmp_path, monkeypatch, caplog):
    cache = AvatarCache(tmp_path / "cache")
    reg = counting(nets)

    def failing_write(f, meta, arrays):
        f.write(b"THAVATAR half an entry")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(avatar_mod, "_write_entry", failing_write)
    av = registrar(nets).register(make_frames(1)[0])
    with pytest.raises(OSError, match="No space"):
        cache.save("k" * 32, av)
    assert list((tmp_path / "cache").iterdir()) == []
    # Through get_or_register a cache that cannot be written only costs a warning.
    with caplog.at_level(logging.WARNING, logger="talkinghead.methods.ditto.avatar"):
        got = cache.get_or_register(source, reg, load=load_npy)
    assert got.num_frames == 1 and "could not cache" in caplog.text
    assert list((tmp_path / "cache").iterdir()) == []


def test_default_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("TALKINGHEAD_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "avatars"
    assert AvatarCache().directory == tmp_path / "avatars"
    monkeypatch.delenv("TALKINGHEAD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "talkinghead" / "avatars"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # not absolute: ignored (XDG spec)
    assert default_cache_dir() == Path.home() / ".cache" / "talkinghead" / "avatars"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "talkinghead" / "avatars"


@pytest.fixture(scope="module")
def image_avatar(nets) -> Avatar:
    return registrar(nets).register(make_frames(1, seed=5)[0])


def lru_order(cache: AvatarCache) -> list[str]:
    """The entries' one-letter names, least recently used first."""
    return [e.path.stem[0] for e in cache.entries()]


def test_cache_limit_evicts_least_recently_used(image_avatar, tmp_path):
    old_umask = os.umask(0o022)
    try:
        cache = AvatarCache(tmp_path / "cache", max_bytes=0)
        size = cache.save("a" * 32, image_avatar).stat().st_size
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "cache" / f"{'a' * 32}.avatar").stat().st_mode) == 0o644
    cache.max_bytes = int(size * 2.5)  # room for two entries
    cache.save("b" * 32, image_avatar)
    assert lru_order(cache) == ["a", "b"]
    assert cache.load("a" * 32) is not None  # a hit makes "a" the most recent
    assert lru_order(cache) == ["b", "a"]
    cache.save("c" * 32, image_avatar)
    assert lru_order(cache) == ["a", "c"]  # "b", least recently used, went
    assert cache.load("b" * 32) is None
    cache.load("a" * 32)
    cache.save("d" * 32, image_avatar)
    assert lru_order(cache) == ["a", "d"]
    assert sum(e.size for e in cache.entries()) <= cache.max_bytes
    # Without a limit nothing is evicted.
    unlimited = AvatarCache(tmp_path / "cache", max_bytes=0)
    unlimited.save("e" * 32, image_avatar)
    assert lru_order(unlimited) == ["a", "d", "e"]


def test_avatar_larger_than_the_limit_is_not_cached(nets, source, tmp_path, caplog):
    cache = AvatarCache(tmp_path / "cache", max_bytes=1 << 20)  # f_s alone is 8 MiB
    reg = counting(nets)
    with caplog.at_level(logging.WARNING, logger="talkinghead.methods.ditto.avatar"):
        got = cache.get_or_register(source, reg, load=load_npy)
    assert got.num_frames == 1 and "more than the cache limit" in caplog.text
    assert cache.entries() == []
    cache.get_or_register(source, reg, load=load_npy)
    assert not cache.last_hit and reg.calls == 2


def test_eviction_and_clear_spare_temp_files_being_written(image_avatar, tmp_path):
    folder = tmp_path / "cache"
    cache = AvatarCache(folder, max_bytes=1 << 30)
    cache.save("a" * 32, image_avatar)
    writing = folder / f".{'b' * 32}.x1y2.tmp"  # another process's entry in progress
    abandoned = folder / f".{'c' * 32}.z3w4.tmp"  # a writer that died long ago
    for p in (writing, abandoned):
        p.write_bytes(b"THAVATAR partial")
    long_ago = time.time() - avatar_mod.STALE_TEMP_SECONDS - 60
    os.utime(abandoned, (long_ago, long_ago))
    cache.save("d" * 32, image_avatar)
    assert writing.exists() and not abandoned.exists()
    assert cache.clear() == 2
    assert [p.name for p in folder.iterdir()] == [writing.name]


def test_cache_limit_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("TALKINGHEAD_CACHE_MAX_MB", raising=False)
    assert AvatarCache(tmp_path).max_bytes == 2 << 30
    monkeypatch.setenv("TALKINGHEAD_CACHE_MAX_MB", "512")
    assert AvatarCache(tmp_path).max_bytes == 512 << 20
    assert AvatarCache(tmp_path, max_bytes=1000).max_bytes == 1000  # the argument wins
    monkeypatch.setenv("TALKINGHEAD_CACHE_MAX_MB", "0")
    assert AvatarCache(tmp_path).max_bytes == 0
    for bad in ("lots", "-1", "inf"):
        monkeypatch.setenv("TALKINGHEAD_CACHE_MAX_MB", bad)
        with pytest.raises(TalkingHeadError, match="TALKINGHEAD_CACHE_MAX_MB"):
            AvatarCache(tmp_path)
    with pytest.raises(ValueError, match="max_bytes"):
        AvatarCache(tmp_path, max_bytes=-1)


def test_model_identities(nets, tmp_path):
    motion, appearance = nets
    path = tmp_path / "motion_extractor.pth"
    save_official(motion, "motion_extractor", path)
    ident = checkpoint_identity(path)
    assert ident == checkpoint_identity(path)
    torch.manual_seed(1)
    other = MotionExtractor(**MOTION_TINY)
    save_official(other, "motion_extractor", path)
    assert checkpoint_identity(path) != ident

    apath = tmp_path / "appearance_extractor.pth"
    save_official(appearance, "appearance_extractor", apath)
    reg = AvatarRegistrar.from_checkpoints(
        FakeAnalyzer(),
        path,
        apath,
        motion_config=MOTION_TINY,
        appearance_config=APPEARANCE_TINY,
    )
    assert checkpoint_identity(path) in reg.model_identity
    assert checkpoint_identity(apath) in reg.model_identity
    # Without a given identity the weights themselves are digested.
    a = AvatarRegistrar(FakeAnalyzer(), motion, appearance).model_identity
    assert a == AvatarRegistrar(FakeAnalyzer(), motion, appearance).model_identity
    assert a != AvatarRegistrar(FakeAnalyzer(), other, appearance).model_identity


# --- the real portrait, with the real face layer ----------------------------------------------


def test_real_portrait(nets, tmp_path):
    portrait = MEDIA_DIR / "ditto_example_face.jpg"
    if not portrait.is_file():
        skip_missing(f"{portrait}")
    try:
        from talkinghead.face import create_face_analyzer
        from talkinghead.media.source import load_source
    except ImportError as exc:
        pytest.skip(f"face or media layer not available: {exc}")
    motion, appearance = nets
    reg = AvatarRegistrar(create_face_analyzer(), motion, appearance, model_identity="tiny")
    cache = AvatarCache(tmp_path / "cache")
    av = cache.get_or_register(portrait, reg, load=load_source)
    h, w = av.frame_size
    assert av.is_image and av.num_frames == 1 and av.num_faces >= 1
    assert av.frames.shape == (1, h, w, 3)
    check_shapes(dataclasses.replace(av, face_backend="fake", num_faces=2), 1, (h, w))
    # The crop's centre lands inside the frame, the crop spans a plausible face-sized area.
    centre = av.M_c2o[0] @ np.array([256, 256, 1], np.float32)
    assert 0 < centre[0] < w and 0 < centre[1] < h
    again = cache.get_or_register(portrait, reg, load=load_source)
    assert cache.last_hit
    assert_same_avatar(av, again)
