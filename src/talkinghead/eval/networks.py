"""Loading the metric networks from their standard files (layouts in `talkinghead.models`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from talkinghead.errors import CheckpointError


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A tensor dict from a torch file (tensors only; CUDA-saved files map to the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike mean "not this file"
        from talkinghead.models.loading import load_failure

        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file: {load_failure(path, e)}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    """load_state_dict(strict=True) with a one-line CheckpointError naming the file."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise CheckpointError(f"{path}: does not match {type(module).__name__} ({first})") from None


_SLICE_KEY = re.compile(r"^net\.slice\d+\.(\d+)\.(weight|bias)$")
_LIN_KEY = re.compile(r"^lin(\d+)\.model\.(\d+)\.weight$")


def lpips_trunk_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``features.N.*`` (classifier dropped) or an lpips model's ``net.sliceK.N.*``."""
    out = {}
    for k, v in state.items():
        if k.startswith("features."):
            out["net." + k] = v
        elif m := _SLICE_KEY.match(k):
            out[f"net.features.{m.group(1)}.{m.group(2)}"] = v
    return out


def lpips_linear_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``lin<k>.model.1.weight`` (with dropout) or ``lin<k>.model.0.weight`` (without)."""
    return {
        f"lin{m.group(1)}.model.1.weight": v for k, v in state.items() if (m := _LIN_KEY.match(k))
    }


def load_lpips(
    net: str, trunk_path: str | os.PathLike[str], linear_path: str | os.PathLike[str]
) -> nn.Module:
    """LPIPS (`talkinghead.models.lpips_net.LPIPS`) from its trunk and linear-layer files."""
    from talkinghead.models.lpips_net import LPIPS

    model = LPIPS(net)
    trunk = lpips_trunk_state(load_state_dict(trunk_path))
    lins = lpips_linear_state(load_state_dict(linear_path))
    if not trunk:
        raise CheckpointError(
            f"{trunk_path}: no 'features.*' tensors (not a torchvision {net} file)"
        )
    if not lins:
        raise CheckpointError(f"{linear_path}: no 'lin<k>.model.*' tensors (not an LPIPS file)")
    # Check the two halves separately so the error names the right file.
    expected = model.state_dict()
    for part, path in ((trunk, trunk_path), (lins, linear_path)):
        wanted = {k for k in expected if k.startswith("net.") == (part is trunk)}
        bad = sorted(wanted ^ set(part)) or [k for k in part if part[k].shape != expected[k].shape]
        if bad:
            raise CheckpointError(f"{path}: does not match LPIPS-{net} (first mismatch: {bad[0]})")
    model.load_state_dict({**trunk, **lins}, strict=True)
    return model.eval()


def load_inception(path: str | os.PathLike[str]) -> nn.Module:
    from talkinghead.models.inception_fid import FIDInceptionV3

    model = FIDInceptionV3()
    load_strict(model, load_state_dict(path), path)
    return model.eval()


def load_syncnet(path: str | os.PathLike[str]) -> nn.Module:
    from talkinghead.models.syncnet import SyncNet

    model = SyncNet()
    state = load_state_dict(path)
    # Files saved from a wrapper (SyncNetInstance) prefix the names with "__S__.".
    state = {k.removeprefix("__S__."): v for k, v in state.items()}
    load_strict(model, state, path)
    return model.eval()


def load_i3d(path: str | os.PathLike[str]) -> torch.jit.ScriptModule:
    """The TorchScript I3D detector of StyleGAN-V's FVD (code and weights in one file)."""
    import warnings

    path = Path(path)
    try:
        with warnings.catch_warnings():
            # The published detector is a TorchScript archive; torch now flags the format.
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # RuntimeError or ValueError depending on what is wrong
        raise CheckpointError(f"{path}: not a TorchScript I3D file ({e})") from None
