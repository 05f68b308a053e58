"""Paste-back against the release's whole-frame paste-back: cv2 region path and torch path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from talkinghead.face import PasteBack, feather_mask
from talkinghead.face.device_paste import DevicePasteBack
from talkinghead.face.paste import _region, warp_coordinates

RNG = np.random.default_rng(5)


def release_paste(frame: np.ndarray, crop: np.ndarray, M_c2o: np.ndarray) -> np.ndarray:
    """The release's PutBack: float render and mask warped over the whole frame, truncated."""
    h, w = frame.shape[:2]
    mask = cv2.warpAffine(feather_mask(512, 512), M_c2o[:2], (w, h), flags=cv2.INTER_LINEAR)
    mask = np.clip(mask, 0, 1)[..., None]
    warped = cv2.warpAffine(crop.astype(np.float32), M_c2o[:2], (w, h), flags=cv2.INTER_LINEAR)
    return np.clip(mask * warped + (1 - mask) * frame, 0, 255).astype(np.uint8)


def _matrix(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0, 0, 1]], np.float64)


# (frame h, w, M_c2o): a 512 px source, a 1080p one, a crop over the frame's edge.
CASES = [
    (512, 512, _matrix(0.61, 0.13, 101.37, 57.913)),
    (1080, 1920, _matrix(1.37, -0.41, 811.2, 97.77)),
    (333, 401, _matrix(0.83, 0.9, 250.5, -120.25)),
]


def _sharp_crop(n: int = 1) -> np.ndarray:
    """A high-contrast render (black/white pixels): where sub-pixel rounding shows most."""
    return ((RNG.random((n, 512, 512, 3)) > 0.5) * 255).astype(np.uint8)


@pytest.mark.parametrize(("h", "w", "M"), CASES)
def test_sample_positions_are_the_whole_frame_warps(h, w, M):
    # A crop whose pixels encode their own coordinates: nearest-neighbour warpAffine gives
    # the integer position cv2 picks; bilinear on a ramp gives the 1/32 fraction.
    region = _region(M, (512, 512), (h, w))
    ix, iy, fx, _ = warp_coordinates(M, region)
    x0, y0, x1, y1 = region
    ramp = np.broadcast_to(np.arange(512, dtype=np.float32) * 32, (512, 512))
    ref_x = cv2.warpAffine(np.ascontiguousarray(ramp), M[:2], (w, h), flags=cv2.INTER_LINEAR)
    ref_x = ref_x[y0:y1, x0:x1]
    inside = (ix >= 0) & (ix < 511) & (iy >= 0) & (iy < 511)
    np.testing.assert_allclose(ref_x[inside], (ix * 32 + fx)[inside], atol=1e-2)


@pytest.mark.parametrize(("h", "w", "M"), CASES)
def test_cpu_paste_within_one_level_of_release(h, w, M):
    frame = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    crop = _sharp_crop()[0]
    ref = release_paste(frame, crop, M)
    out = PasteBack()(frame, crop, M)
    diff = np.abs(out.astype(int) - ref)
    assert diff.max() <= 1, diff.max()


def test_region_only_cv2_warp_is_not_enough():
    # Why the positions are computed: warping just the region (shifted translation)
    # moves sharp edges by several levels against the whole-frame warp.
    h, w, M = CASES[1]
    crop = _sharp_crop()[0].astype(np.float32)
    x0, y0, x1, y1 = _region(M, (512, 512), (h, w))
    shifted = M[:2].copy()
    shifted[:, 2] -= (x0, y0)
    region = cv2.warpAffine(crop, shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
    whole = cv2.warpAffine(crop, M[:2], (w, h), flags=cv2.INTER_LINEAR)[y0:y1, x0:x1]
    assert np.abs(region - whole).max() > 1


@pytest.mark.parametrize(("h", "w", "M"), CASES)
def test_device_paste_within_one_level_of_release(h, w, M):
    frame = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    crops = _sharp_crop(2)
    frames = torch.from_numpy(frame)[None].expand(2, -1, -1, -1)  # one source frame, broadcast
    out = DevicePasteBack()(frames, torch.from_numpy(crops), M)
    assert out.dtype == torch.uint8 and out.shape == (2, h, w, 3)
    for i in range(2):
        diff = np.abs(out[i].numpy().astype(int) - release_paste(frame, crops[i], M))
        assert diff.max() <= 1, diff.max()
    # And the CPU path agrees with it within one level as well (both round to nearest).
    cpu = PasteBack()(frame, crops[0], M)
    assert np.abs(cpu.astype(int) - out[0].numpy()).max() <= 1


def test_device_paste_per_frame_matrices_and_misses():
    h, w = 300, 360
    frames = torch.from_numpy(RNG.integers(0, 256, (3, h, w, 3), dtype=np.uint8))
    crops = torch.from_numpy(_sharp_crop(3))
    mats = np.stack(
        [
            _matrix(0.4, 0.1, 60.0, 40.0),
            _matrix(0.5, -0.2, 90.0, 20.0),
            _matrix(0.4, 0.0, 5000.0, 5000.0),
        ]
    )  # the last misses the frame
    paste = DevicePasteBack()
    out = paste(frames, crops, mats)
    for i in range(2):
        ref = release_paste(frames[i].numpy(), crops[i].numpy(), mats[i])
        assert np.abs(out[i].numpy().astype(int) - ref).max() <= 1
    assert torch.equal(out[2], frames[2])
    assert len(paste._plans) == 3
    with pytest.raises(ValueError, match="uint8"):
        paste(frames, crops.float(), mats)
    with pytest.raises(ValueError, match="matrices"):
        paste(frames, crops, mats[:2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU paste-back not run")
def test_device_paste_on_cuda_matches_cpu():
    h, w, M = CASES[1]
    frame = torch.from_numpy(RNG.integers(0, 256, (1, h, w, 3), dtype=np.uint8))
    crops = torch.from_numpy(_sharp_crop(1))
    cpu = DevicePasteBack()(frame, crops, M)
    gpu = DevicePasteBack()(frame.cuda(), crops.cuda(), M).cpu()
    assert (cpu.int() - gpu.int()).abs().max() <= 1
