"""LPIPS, FID, CSIM and FVD networks: loaded from generated files in the standard layouts,
then shapes, determinism, and zero distance / full similarity for identical inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _eval_fixtures import arcface_onnx, i3d_file, inception_file, lpips_files
from talkinghead.errors import CheckpointError
from talkinghead.eval import networks
from talkinghead.eval.face import ARCFACE_TEMPLATE, arcface_align, similarity_transform
from talkinghead.eval.fid import fid_from_features, frechet_distance, inception_features, statistics
from talkinghead.eval.fvd import clip_starts, i3d_features
from talkinghead.eval.identity import ArcFaceEmbedder, cosine, csim


def _images(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# ---- LPIPS ----


@pytest.fixture(scope="module")
def lpips_alex(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    trunk, lin = lpips_files(d, "alex")
    return trunk, lin, networks.load_lpips("alex", trunk, lin)


def test_lpips_alex_identical_is_zero_and_deterministic(lpips_alex):
    *_, model = lpips_alex
    x, y = _images(3), _images(3, seed=1)
    with torch.no_grad():
        same = model(x, x)
        d1, d2 = model(x, y), model(x, y)
        swapped = model(y, x)
    assert same.shape == (3,)
    torch.testing.assert_close(same, torch.zeros(3), atol=1e-7, rtol=0)
    assert torch.all(d1 > 0)
    torch.testing.assert_close(d1, d2, rtol=0, atol=0)
    torch.testing.assert_close(d1, swapped, rtol=1e-5, atol=1e-7)


def test_lpips_files_are_checked_and_alternative_layouts_load(lpips_alex, tmp_path):
    trunk, lin, model = lpips_alex
    with pytest.raises(CheckpointError, match="not an LPIPS file"):
        networks.load_lpips("alex", trunk, trunk)
    with pytest.raises(CheckpointError, match="does not match LPIPS-vgg"):
        networks.load_lpips("vgg", trunk, lin)
    # A whole lpips-package model (net.sliceK.N.*, lin without dropout at index 0) also loads.
    sd = model.state_dict()
    slices = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    whole = {
        f"net.slice{slices[int(k.split('.')[2])]}.{k.split('.', 2)[2]}": v
        for k, v in sd.items()
        if k.startswith("net.")
    }
    whole.update({k.replace("model.1", "model.0"): v for k, v in sd.items() if k.startswith("lin")})
    whole["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    torch.save(whole, tmp_path / "whole.pth")
    again = networks.load_lpips("alex", tmp_path / "whole.pth", tmp_path / "whole.pth")
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, sd[k])


@pytest.mark.slow
def test_lpips_vgg(tmp_path):
    trunk, lin = lpips_files(tmp_path, "vgg")
    model = networks.load_lpips("vgg", trunk, lin)
    assert sum(k.startswith("net.features.") for k in model.state_dict()) == 26
    x, y = _images(2, 32), _images(2, 32, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, x), torch.zeros(2), atol=1e-7, rtol=0)
        assert torch.all(model(x, y) > 0)


# ---- FID ----


def test_frechet_distance_closed_form():
    # Diagonal covariances: tr sqrt(S1 S2) = sum sqrt(s1 s2).
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 5.0 + s1.sum() + s2.sum() - 2 * np.sqrt(s1 * s2).sum()
    for method in ("sqrtm", "fast"):
        got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
        assert got == pytest.approx(expected, rel=1e-12)


def test_fid_methods_agree_and_identical_sets_are_zero():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 16))
    b = rng.standard_normal((40, 16)) * 1.5 + 0.3
    assert fid_from_features(a, b, "sqrtm") == pytest.approx(
        fid_from_features(a, b, "fast"), rel=1e-8
    )
    # Fewer samples than dimensions: the low-rank path of "fast" vs pytorch-fid's sqrtm.
    c, d = rng.standard_normal((10, 24)), rng.standard_normal((12, 24)) + 0.5
    assert fid_from_features(c, d, "sqrtm") == pytest.approx(
        fid_from_features(c, d, "fast"), rel=1e-6
    )
    assert abs(fid_from_features(a, a, "sqrtm")) < 1e-6
    assert abs(fid_from_features(c, c, "fast")) < 1e-9
    _, cov = statistics(a)
    np.testing.assert_allclose(cov, np.cov(a, rowvar=False))
    with pytest.raises(ValueError, match="at least 2"):
        statistics(a[:1])


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    path = inception_file(tmp_path_factory.mktemp("inception"))
    return path, networks.load_inception(path)


def test_inception_layout(inception):
    path, _ = inception
    sd = torch.load(path, weights_only=True)
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert sd["fc.weight"].shape == (1008, 2048)
    assert not any(k.startswith("AuxLogits") for k in sd)
    torch.save({"fc.weight": sd["fc.weight"]}, path.with_name("bad.pth"))
    with pytest.raises(CheckpointError, match="does not match FIDInceptionV3"):
        networks.load_inception(path.with_name("bad.pth"))


@pytest.mark.slow
def test_inception_features_and_fid(inception):
    _, model = inception
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    f = inception_features(model, frames, batch_size=2)
    assert f.shape == (2, 2048) and f.dtype == np.float64 and np.all(f >= 0)
    np.testing.assert_allclose(
        f, inception_features(model, frames, batch_size=1), rtol=1e-4, atol=1e-6
    )
    assert f.std() > 1e-3  # the generated weights keep the activations alive
    assert abs(fid_from_features(f, f, "fast")) < 1e-6
    assert fid_from_features(f, f[::-1] + 1.0, "fast") == pytest.approx(2048.0, rel=1e-6)
    assert inception_features(model, frames, dims=64).shape == (2, 64)


# ---- CSIM ----


def test_similarity_transform_recovers_a_known_one():
    angle, scale, t = np.deg2rad(12), 2.5, np.array([30.0, -7.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = ARCFACE_TEMPLATE @ rot.T + t  # the template placed in some image
    m = similarity_transform(pts, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(pts @ m[:, :2].T + m[:, 2], ARCFACE_TEMPLATE, atol=1e-9)


def test_arcface_alignment_undoes_the_placement():
    # A face image that is the template-space pattern scaled by 2 and shifted.
    pattern = np.zeros((112, 112, 3), np.uint8)
    pattern[40:60, 30:80] = 200
    m = np.array([[2.0, 0, 10], [0, 2.0, 20]])
    img = __import__("cv2").warpAffine(pattern, m, (260, 260))
    aligned = arcface_align(img, ARCFACE_TEMPLATE * 2 + [10, 20])
    assert np.abs(aligned.astype(int) - pattern).mean() < 2


@pytest.mark.parametrize("batch", ["None", 1])
def test_arcface_embedder_and_csim(tmp_path, batch):
    emb = ArcFaceEmbedder(arcface_onnx(tmp_path / "w600k_r50.onnx", batch=batch))
    assert (emb.mean, emb.std) == (127.5, 127.5)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    e = emb(faces)
    assert e.shape == (3, 512)
    np.testing.assert_allclose(emb(faces), e)
    assert csim(e[0], np.stack([e[0], e[0]])) == pytest.approx(1.0, abs=1e-9)
    assert csim(e[0], e[1:]) < 0.999
    np.testing.assert_allclose(cosine(e, e), 1.0, atol=1e-12)


def test_arcface_rejects_a_non_model(tmp_path):
    (tmp_path / "w600k_r50.onnx").write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="not a loadable ONNX model"):
        ArcFaceEmbedder(tmp_path / "w600k_r50.onnx")


# ---- FVD ----


def test_fvd_features_from_the_torchscript_detector(tmp_path):
    detector = networks.load_i3d(i3d_file(tmp_path))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (40, 24, 24, 3), dtype=np.uint8)
    assert clip_starts(40) == [0, 16]
    f = i3d_features(detector, frames)
    assert f.shape == (2, 400)
    np.testing.assert_allclose(f, i3d_features(detector, frames, batch_size=1), atol=1e-5)
    with pytest.raises(CheckpointError, match="not a TorchScript"):
        networks.load_i3d(arcface_onnx(tmp_path / "x.onnx"))
