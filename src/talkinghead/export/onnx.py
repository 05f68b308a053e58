"""ONNX export with the release's input/output names, and an onnxruntime runner.

The exported graphs use standard operators only (5-D `GridSample` needs opset
20), so they run in stock onnxruntime. The release's own `warp_network.onnx`
relies on a custom 3-D grid-sample TensorRT plugin instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from talkinghead.errors import CheckpointError
from talkinghead.filemode import temporary_sibling
from talkinghead.models.motion_extractor import OUTPUT_KEYS

# Names as in the release's ditto_onnx/ files (the appearance extractor's output is "pred").
ONNX_IO_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "appearance_extractor": (("image",), ("pred",)),
    "motion_extractor": (("image",), OUTPUT_KEYS),
    "warp_network": (("feature_3d", "kp_source", "kp_driving"), ("out",)),
    "decoder": (("feature",), ("output",)),
    "stitch_network": (("kp_source", "kp_driving"), ("out",)),
    "lmdm": (("x", "cond_frame", "cond", "time_cond"), ("pred_noise", "x_start")),
}

ONNX_FILE_NAMES: dict[str, str] = {
    "appearance_extractor": "appearance_extractor.onnx",
    "motion_extractor": "motion_extractor.onnx",
    "warp_network": "warp_network.onnx",
    "decoder": "decoder.onnx",
    "stitch_network": "stitch_network.onnx",
    "lmdm": "lmdm_v0.4_hubert.onnx",
}

DEFAULT_OPSET = 20  # first opset whose GridSample accepts 5-D volumes (the warp network)


def example_inputs(
    kind: str, batch: int = 1, net: nn.Module | None = None
) -> tuple[torch.Tensor, ...]:
    """Inputs of the release's shapes (read from `net` where the size is configurable)."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    if kind in ("appearance_extractor", "motion_extractor"):
        return (rand(batch, 3, 256, 256),)
    if kind == "warp_network":
        # The volume is [B, reshape_channel, max_features / reshape_channel, 64, 64]; the
        # network keeps those sizes only as its layers' channel counts.
        dm = getattr(net, "dense_motion_network", None)
        channels = dm.compress.in_channels if dm is not None else 32
        depth = net.third.conv.in_channels // channels if dm is not None else 16
        num_kp = getattr(dm, "num_kp", 21)
        kp = rand(batch, num_kp, 3) - 0.5
        return rand(batch, channels, depth, 64, 64), kp, kp + 0.05 * rand(batch, num_kp, 3)
    if kind == "decoder":
        fc = getattr(net, "fc", None)
        return (rand(batch, fc.in_channels if fc is not None else 256, 64, 64),)
    if kind == "stitch_network":
        kp = rand(batch, 21, 3) - 0.5
        return kp, kp + 0.05 * rand(batch, 21, 3)
    if kind == "lmdm":
        cfg = getattr(net, "config", None)
        seq = getattr(cfg, "seq_frames", 80)
        dim = getattr(cfg, "motion_feat_dim", 265)
        cond_dim = getattr(cfg, "audio_feat_dim", 1103)
        return (
            torch.randn(batch, seq, dim, generator=g),
            torch.randn(batch, dim, generator=g),
            torch.randn(batch, seq, cond_dim, generator=g),
            torch.full((batch,), 500, dtype=torch.long),
        )
    raise ValueError(f"unknown network kind {kind!r}")


def export_onnx(
    net: nn.Module,
    kind: str,
    path: str | os.PathLike,
    *,
    inputs: Sequence[torch.Tensor] | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Export `net` (a network of `kind`) to `path`, written atomically.

    The batch dimension is dynamic unless `dynamic_batch=False` (the release's
    files are batch-1 only; ours accept any batch, as the PyTorch modules do).
    """
    input_names, output_names = ONNX_IO_NAMES[kind]
    args = tuple(inputs) if inputs is not None else example_inputs(kind, net=net)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of its own: batch workers export the same cached graph at once, and
    # with one shared name one's rename (or clean-up) took the file from under the other.
    tmp = temporary_sibling(path, ".tmp")
    dynamic_axes = (
        {name: {0: "batch"} for name in (*input_names, *output_names)} if dynamic_batch else None
    )
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter handles these networks' shape arithmetic (views over
            # the batch size) with dynamic batch reliably and quickly; it is deprecated upstream.
            warnings.simplefilter("ignore", DeprecationWarning)
            # Shape-derived Python values are constants for a fixed per-sample shape, which is
            # what the exported graph promises (only the batch axis is dynamic).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # The decoder's parameter-free instance norm has no running statistics, so the
            # "train=True" the exporter warns about is what eval computes too.
            warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True")
            # The warp's strided slices stay ops in the graph instead of folded constants.
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                net,
                args,
                str(tmp),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                dynamic_axes=dynamic_axes,
                dynamo=False,
                do_constant_folding=True,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        net.train(was_training)
    return path


class OnnxNetwork:
    """Runs an exported (or released) ONNX network with onnxruntime, called like the torch module.

    Positional inputs are torch tensors or numpy arrays in the release's order;
    the result is a numpy array, or a tuple of them for several outputs.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX model not found: {path}")
        if providers is None:
            available = ort.get_available_providers()
            providers = [
                p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available
            ]
        try:
            self.session = ort.InferenceSession(str(path), providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: not a loadable ONNX model ({exc})") from exc
        self.path = path
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, *inputs: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        if len(inputs) != len(self.input_names):
            raise TypeError(
                f"{self.path.name} takes {len(self.input_names)} inputs: {self.input_names}"
            )
        feed = {
            name: (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
            for name, x in zip(self.input_names, inputs, strict=True)
        }
        outputs = self.session.run(None, feed)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
