"""A complete Ditto release directory with tiny networks, for fast end-to-end tests.

Same architectures, file names, containers and I/O as the release; only the
sizes are small (listed in the `talkinghead.json` sidecar the pipeline reads),
and the HuBERT is a one-layer ONNX model with the release's input/output names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from talkinghead.methods.ditto.checkpoints import AUX_MODELS, CONFIG_NAME
from talkinghead.models import OFFICIAL_NETWORKS, save_official

HUBERT_DIM = 16
# HuBERT's frame layout: 400-sample windows every 320 samples (20 ms).
HUBERT_WIN, HUBERT_HOP = 400, 320

SIZES: dict[str, dict] = {
    # A shallow feature volume (depth 2): the warp's 7x7x7 mask convolution dominates the cost.
    "appearance_extractor": {
        "block_expansion": 8,
        "max_features": 32,
        "reshape_channel": 16,
        "reshape_depth": 2,
        "num_resblocks": 1,
    },
    "motion_extractor": {"backbone": {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}},
    "warp_network": {
        "block_expansion": 8,
        "max_features": 32,
        "reshape_channel": 16,
        "dense_motion": {
            "block_expansion": 8,
            "max_features": 32,
            "num_blocks": 3,
            "reshape_depth": 2,
            "compress": 1,
        },
    },
    "decoder": {
        "block_expansion": 8,
        "max_features": 32,
        "out_channels": 8,
        "spade_hidden": 8,
        "num_middle_blocks": 1,
    },
    "stitch_network": {},
    "lmdm": {
        "audio_feat_dim": HUBERT_DIM + 8 + 2 + 6 + 63,
        "latent_dim": 32,
        "ff_size": 64,
        "num_layers": 1,
        "num_heads": 2,
        "num_cond_layers": 1,
    },
}


def tiny_hubert_onnx(path: Path, dim: int = HUBERT_DIM) -> np.ndarray:
    """A strided conv with the release's I/O: input_values [1, L] -> encoding_out [T, dim]."""
    w = np.random.default_rng(0).standard_normal((dim, 1, HUBERT_WIN)).astype(np.float32) * 0.05
    nodes = [
        helper.make_node("Unsqueeze", ["input_values", "ax1"], ["x3"]),
        helper.make_node("Conv", ["x3", "w"], ["y"], strides=[HUBERT_HOP]),  # [1, dim, T]
        helper.make_node("Squeeze", ["y", "ax0"], ["y2"]),
        helper.make_node("Transpose", ["y2"], ["encoding_out"], perm=[1, 0]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_hubert",
        [helper.make_tensor_value_info("input_values", TensorProto.FLOAT, [1, "L"])],
        [helper.make_tensor_value_info("encoding_out", TensorProto.FLOAT, ["T", dim])],
        initializer=[
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array([1], np.int64), "ax1"),
            numpy_helper.from_array(np.array([0], np.int64), "ax0"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w


def _randomize(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so every layer matters."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(1 + torch.rand(m.running_var.shape, generator=g) * 0.1)
    return net


def build_tiny_release(root: Path, seed: int = 0) -> Path:
    """Write `root/ditto_pytorch/{models,aux_models}` with tiny networks; returns `root`."""
    models = root / "ditto_pytorch" / "models"
    aux = root / "ditto_pytorch" / "aux_models"
    models.mkdir(parents=True, exist_ok=True)
    aux.mkdir(parents=True, exist_ok=True)
    for i, (kind, spec) in enumerate(OFFICIAL_NETWORKS.items()):
        torch.manual_seed(seed + i)
        net = _randomize(spec.factory()(**SIZES[kind]), seed + i)
        save_official(net, kind, models / spec.checkpoint_name)
    (models / "talkinghead.json").write_text(json.dumps(SIZES, indent=1))
    tiny_hubert_onnx(aux / "hubert_streaming_fix_kv.onnx")
    return root


# A tiny motion model for the LMDM and DDIM unit tests.
TINY_LMDM = dict(
    motion_feat_dim=6,
    audio_feat_dim=16,
    seq_frames=8,
    latent_dim=32,
    ff_size=64,
    num_layers=2,
    num_heads=2,
)


def make_release(root: Path, *, aux: bool = True, onnx: bool = False, skip: tuple = ()) -> Path:
    """Empty files in the release's layout (for tests where only the names matter)."""
    files = [f"ditto_cfg/{CONFIG_NAME}", "ditto_cfg/v0.4_hubert_cfg_trt.pkl"]
    files += [f"ditto_pytorch/models/{s.checkpoint_name}" for s in OFFICIAL_NETWORKS.values()]
    if aux:
        files += [f"ditto_pytorch/aux_models/{name}" for name in AUX_MODELS.values()]
    if onnx:
        files += ["ditto_onnx/decoder.onnx", "ditto_onnx/lmdm_v0.4_hubert.onnx"]
    for rel in files:
        if rel in skip:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root
