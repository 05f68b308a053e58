"""Keypoint algebra against an independent numpy transcription of the release's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from talkinghead.models.keypoints import (
    bin66_to_degree,
    degree_to_bin66,
    rotation_matrix,
    transform_keypoints,
    transform_keypoints_info,
)


def _np_degree(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    return (p * np.arange(66)).sum(1) * 3 - 97.5


def _np_rot(pitch: float, yaw: float, roll: float) -> np.ndarray:
    x, y, z = np.deg2rad([pitch, yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return (rz @ ry @ rx).T


def test_bin66_to_degree_matches_softmax_expectation() -> None:
    logits = np.random.default_rng(0).normal(size=(5, 66)).astype(np.float32) * 3
    got = bin66_to_degree(torch.from_numpy(logits)).numpy()
    np.testing.assert_allclose(got, _np_degree(logits.astype(np.float64)), atol=1e-4)


def test_bin66_one_hot_and_inverse() -> None:
    logits = torch.full((2, 66), -1e4)
    logits[0, 0] = logits[1, 65] = 0
    np.testing.assert_allclose(bin66_to_degree(logits).numpy(), [-97.5, 97.5])
    deg = torch.tensor([-30.0, 0.0, 12.5])
    np.testing.assert_allclose(degree_to_bin66(deg).numpy() * 3 - 97.5, deg.numpy(), atol=1e-5)


def test_degrees_pass_through() -> None:
    deg = torch.tensor([[10.0], [-5.0]])
    assert torch.equal(bin66_to_degree(deg), deg)


@pytest.mark.parametrize("angles", [(0, 0, 0), (10, -20, 30), (-45, 60, -90)])
def test_rotation_matrix_matches_release_convention(angles: tuple[float, float, float]) -> None:
    p, y, r = (torch.tensor([float(a)]) for a in angles)
    rot = rotation_matrix(p, y, r)[0].double().numpy()
    np.testing.assert_allclose(rot, _np_rot(*angles), atol=1e-6)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)


def test_rotation_from_logits_equals_rotation_from_degrees() -> None:
    logits = torch.randn(3, 3, 66)
    by_logits = rotation_matrix(logits[:, 0], logits[:, 1], logits[:, 2])
    by_degrees = rotation_matrix(*(bin66_to_degree(logits[:, i]) for i in range(3)))
    torch.testing.assert_close(by_logits, by_degrees)


def test_transform_keypoints_batched_matches_reference() -> None:
    rng = np.random.default_rng(1)
    b, k = 4, 21
    kp = rng.normal(size=(b, k * 3)).astype(np.float32)
    exp = rng.normal(size=(b, k * 3)).astype(np.float32) * 0.02
    t = rng.normal(size=(b, 3)).astype(np.float32) * 0.1
    scale = 1 + rng.normal(size=(b, 1)).astype(np.float32) * 0.1
    angles = rng.normal(size=(3, b, 66)).astype(np.float32)
    got = transform_keypoints(
        torch.from_numpy(kp),
        *(torch.from_numpy(a) for a in angles),
        torch.from_numpy(t),
        torch.from_numpy(exp),
        torch.from_numpy(scale),
    ).numpy()
    for i in range(b):
        deg = [_np_degree(a[i : i + 1].astype(np.float64))[0] for a in angles]
        ref = kp[i].reshape(k, 3) @ _np_rot(*deg) + exp[i].reshape(k, 3)
        ref = ref * scale[i, 0]
        ref[:, :2] += t[i, :2]
        np.testing.assert_allclose(got[i], ref, atol=1e-5)
    info = {
        "kp": kp,
        "pitch": angles[0],
        "yaw": angles[1],
        "roll": angles[2],
        "t": t,
        "exp": exp,
        "scale": scale,
    }
    via_info = transform_keypoints_info({n: torch.from_numpy(v) for n, v in info.items()})
    np.testing.assert_allclose(via_info.numpy(), got)


def test_translation_z_is_ignored() -> None:
    kp = torch.zeros(1, 21, 3)
    zero = torch.zeros(1)
    out = transform_keypoints(
        kp, zero, zero, zero, torch.tensor([[0.1, 0.2, 5.0]]), kp, torch.ones(1, 1)
    )
    assert torch.allclose(out[..., 0], torch.tensor(0.1)) and torch.allclose(
        out[..., 1], torch.tensor(0.2)
    )
    assert torch.all(out[..., 2] == 0)
