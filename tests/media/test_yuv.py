"""RGB -> YUV 4:2:0 in torch (the device path's conversion) and the writer that takes it."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace

from talkinghead.media.writer import FramesDirWriter, VideoWriter
from talkinghead.media.yuv import KB, KR, rgb_to_yuv420


def _frames(h: int = 64, w: int = 96, n: int = 2) -> np.ndarray:
    """Smooth gradients plus noise: both the easy and the worst case for chroma."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], -1)
    out = [smooth.astype(np.uint8), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)]
    return np.stack((out * n)[:n])


def _reference(rgb: np.ndarray) -> np.ndarray:
    """BT.709 limited range in float64, 2x2-mean chroma, as I420 [H*3/2, W]."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    luma = KR * r + (1 - KR - KB) * g + KB * b
    y = 16 + luma * 219 / 255
    cb = 128 + (b - luma) / (2 * (1 - KB)) * 224 / 255
    cr = 128 + (r - luma) / (2 * (1 - KR)) * 224 / 255
    h, w = y.shape

    def quarter(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean((1, 3))

    planes = [y.ravel(), quarter(cb).ravel(), quarter(cr).ravel()]
    return np.floor(np.concatenate(planes) + 0.5).clip(0, 255).reshape(h * 3 // 2, w)


def test_matches_the_bt709_formula_within_one_level() -> None:
    frames = _frames()
    ours = rgb_to_yuv420(torch.from_numpy(frames)).numpy()
    assert ours.shape == (2, 96, 96) and ours.dtype == np.uint8
    for got, rgb in zip(ours, frames, strict=True):
        diff = np.abs(got.astype(int) - _reference(rgb))
        assert diff.max() <= 1  # float32 against float64 may flip a .5
        assert (diff > 0).mean() < 1e-3


def test_matches_libswscale_area_filter_within_one_level() -> None:
    # The writer's CPU path converts with libswscale; its area filter is the same 2x2 mean.
    for rgb in _frames():
        ref = (
            av.VideoFrame.from_ndarray(rgb, format="rgb24")
            .reformat(
                format="yuv420p",
                dst_colorspace=Colorspace.ITU709,
                dst_color_range=ColorRange.MPEG,
                interpolation="AREA",
            )
            .to_ndarray()
        )
        ours = rgb_to_yuv420(torch.from_numpy(rgb)[None])[0].numpy()
        assert np.abs(ours.astype(int) - ref).max() <= 1


def test_odd_sizes_repeat_the_edge() -> None:
    rgb = _frames(31, 45, 1)
    ours = rgb_to_yuv420(torch.from_numpy(rgb))[0].numpy()
    padded = np.pad(rgb[0], ((0, 1), (0, 1), (0, 0)), mode="edge")
    assert ours.shape == (48, 46)
    assert np.abs(ours.astype(int) - _reference(padded)).max() <= 1


def test_refuses_what_is_not_uint8_rgb() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        rgb_to_yuv420(torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError, match="uint8 RGB"):
        rgb_to_yuv420(torch.zeros(8, 8, 3, dtype=torch.uint8))


def test_the_video_writer_encodes_the_planes_as_given(tmp_path) -> None:
    frames = _frames(n=3)
    planes = rgb_to_yuv420(torch.from_numpy(frames)).numpy()
    out = tmp_path / "clip.mp4"
    writer = VideoWriter(out, crf=0, hardware=False)  # crf 0: x264 lossless
    assert writer.accepts_yuv420
    with writer:
        for p in planes:
            writer.write_yuv420(p, (64, 96))
    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]
    assert len(decoded) == 3
    for got, want in zip(decoded, planes, strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_writer_checks_planes_and_frame_size(tmp_path) -> None:
    planes = rgb_to_yuv420(torch.from_numpy(_frames(n=1)))[0].numpy()
    writer = VideoWriter(tmp_path / "a.mp4", hardware=False)
    with pytest.raises(ValueError, match="I420 planes"):
        writer.write_yuv420(planes[:-2], (64, 96))
    assert not (tmp_path / "a.mp4").exists()  # a failed write publishes nothing
    writer = VideoWriter(tmp_path / "b.mp4", hardware=False)
    writer.write_yuv420(planes, (64, 96))
    with pytest.raises(ValueError, match="frame size changed"):
        writer.write_yuv420(planes, (62, 96))
    writer.abort()
    frames_dir = FramesDirWriter(tmp_path / "frames")
    assert not frames_dir.accepts_yuv420
    with pytest.raises(TypeError, match="RGB frames"):
        frames_dir.write_yuv420(planes, (64, 96))
