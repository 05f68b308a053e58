"""Test doubles for the evaluation toolkit: generated weight files in the standard layouts,
a tiny ArcFace-like ONNX model, a stand-in TorchScript I3D, tiny videos, a fixed face track."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from talkinghead.eval.face import FaceTrack
from talkinghead.eval.weights import WEIGHT_FILES


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """He-initialised convs/linears and unit BNs: activations keep their scale through deep nets."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.01)
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
    return module.eval()


def lpips_files(directory: Path, net: str = "alex", seed: int = 0) -> tuple[Path, Path]:
    """A torchvision-layout trunk (``features.N.*`` plus a classifier to ignore) and an
    lpips-layout head file (``lin<k>.model.1.weight``)."""
    from talkinghead.models.lpips_net import LPIPS

    model = seeded(LPIPS(net), seed)
    sd = model.state_dict()
    trunk = {k.removeprefix("net."): v for k, v in sd.items() if k.startswith("net.")}
    trunk["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files carry one
    g = torch.Generator().manual_seed(seed + 1)
    lins = {k: torch.rand(v.shape, generator=g) for k, v in sd.items() if k.startswith("lin")}
    keys = ("alexnet", "lpips_alex") if net == "alex" else ("vgg16", "lpips_vgg")
    paths = (directory / WEIGHT_FILES[keys[0]].name, directory / WEIGHT_FILES[keys[1]].name)
    torch.save(trunk, paths[0])
    torch.save(lins, paths[1])
    return paths


def inception_file(directory: Path, seed: int = 0) -> Path:
    from talkinghead.models.inception_fid import FIDInceptionV3

    path = directory / WEIGHT_FILES["inception_fid"].name
    torch.save(seeded(FIDInceptionV3(), seed).state_dict(), path)
    return path


def syncnet_file(directory: Path, seed: int = 0) -> Path:
    from talkinghead.models.syncnet import SyncNet

    path = directory / WEIGHT_FILES["syncnet"].name
    torch.save(seeded(SyncNet(), seed).state_dict(), path)
    return path


def arcface_onnx(path: Path, seed: int = 0, batch: str | int = "None", dim: int = 512) -> Path:
    """An ArcFace stand-in with w600k_r50.onnx's interface: "input.1" [N, 3, 112, 112] -> [N, 512].

    Its embedding is a fixed random projection of the 8x8 average-pooled face.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3 * 8 * 8, dim)).astype(np.float32)
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "W"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, dim])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class StandInI3D(nn.Module):
    """The call interface of StyleGAN-V's i3d_torchscript.pt: [N, 3, T, H, W] -> [N, 400]."""

    def __init__(self, frames: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(3 * frames, 400, generator=g))

    def forward(
        self,
        x: torch.Tensor,
        rescale: bool = False,
        resize: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1
        return x.mean(dim=(3, 4)).flatten(1) @ self.proj


def i3d_file(directory: Path, seed: int = 0) -> Path:
    import warnings

    path = directory / WEIGHT_FILES["i3d"].name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what the file is
        torch.jit.save(torch.jit.script(StandInI3D(seed=seed)), str(path))
    return path


def all_weight_files(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lpips_files(directory, "alex")
    inception_file(directory)
    syncnet_file(directory)
    arcface_onnx(directory / WEIGHT_FILES["arcface"].name)
    i3d_file(directory)
    return directory


def fixed_track(frames: np.ndarray, what: str = "") -> FaceTrack:
    """A face in the middle of every frame (a stand-in for the MediaPipe tracker)."""
    t, h, w = frames.shape[:3]
    box = np.array([0.25 * w, 0.2 * h, 0.75 * w, 0.8 * h])
    pts = np.array([[0.38, 0.42], [0.62, 0.42], [0.5, 0.55], [0.41, 0.68], [0.59, 0.68]]) * [w, h]
    return FaceTrack(np.tile(box, (t, 1)), np.tile(pts, (t, 1, 1)))


def pattern_frames(
    n: int, h: int = 64, w: int = 64, seed: int = 0, motion: float = 3.0
) -> np.ndarray:
    """Smooth coloured frames (H.264 keeps them well) that change over time."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    frames = []
    for i in range(n):
        chans = [
            128
            + 90 * np.sin(2 * np.pi * (x + motion * i) / w + phase[c]) * np.cos(2 * np.pi * y / h)
            for c in range(3)
        ]
        frames.append(np.stack(chans, -1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def write_video(path: Path, frames: np.ndarray, fps: float = 25, audio=None) -> Path:
    from talkinghead.media.writer import VideoWriter

    with VideoWriter(path, fps=fps, audio=audio, crf=10) as w:
        w.write_batch(frames)
    return path
