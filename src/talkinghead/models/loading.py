"""Loading the release's PyTorch checkpoints unchanged, with strict key checking."""

from __future__ import annotations

import os
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from talkinghead.errors import CheckpointError
from talkinghead.filemode import temporary_sibling
from talkinghead.models.registry import OFFICIAL_NETWORKS, NetworkSpec

_CONTAINER_KEYS = {"retarget_shoulder": "retarget_shoulder", "model_state_dict": "model_state_dict"}
_MAX_KEYS_SHOWN = 8


def _short_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")


def load_failure(path: str | os.PathLike, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, short enough for a one-line error.

    torch's own text for a foreign file is a paragraph advising ``weights_only=False`` (the
    unsafe loader), which is the wrong advice for a video or a truncated download.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(2)
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"
    if not head:
        return "the file is empty; an interrupted download or copy?"
    zipped = zipfile.is_zipfile(path)
    text = str(exc)
    if not zipped and head == b"PK":
        return "a damaged zip archive; a truncated download or copy?"
    if not zipped and head[:1] != b"\x80":  # neither torch.save's zip nor a pickle
        return "neither torch.save's zip archive nor a pickle"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds a Python object, {found.group(1)}, that the safe weights-only loader "
            "refuses; only tensors and plain containers load"
        )
    if "Invalid magic number" in text:
        return "a pickle, but not one written by torch.save"
    if "Weights only load failed" in text:
        return "the safe weights-only loader cannot read its pickle"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first or type(exc).__name__


def read_checkpoint(path: str | os.PathLike) -> Any:
    """`torch.load` with `weights_only=True`, turning every failure into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (KeyError, UnpicklingError...) on junk
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint: {load_failure(path, exc)}"
        ) from None


def unwrap_state_dict(obj: Any, container: str, path: str | os.PathLike) -> OrderedDict:
    """Take the state_dict out of the release's container and strip DDP `module.` prefixes."""
    if container != "raw_state_dict":
        key = _CONTAINER_KEYS[container]
        if not isinstance(obj, Mapping) or key not in obj:
            found = (
                list(obj.keys())[:_MAX_KEYS_SHOWN]
                if isinstance(obj, Mapping)
                else type(obj).__name__
            )
            raise CheckpointError(
                f"{path}: expected a {{'{key}': state_dict}} container, found {found}"
            )
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state_dict of tensors")
    # The release strips "module." anywhere in the key (DDP wrappers); do the same.
    return OrderedDict((k.replace("module.", ""), v) for k, v in obj.items())


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, kind: str
) -> None:
    """Strict load whose error names the file, the network and the offending keys."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_short_list(unexpected)}")
        raise CheckpointError(f"{path} is not a {kind} checkpoint: " + "; ".join(parts))
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{path} does not fit this {kind} configuration: {len(wrong)} shape mismatches: "
            + _short_list(wrong)
        )
    module.load_state_dict(state_dict, strict=True)


def load_official(
    kind: str,
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    **config: Any,
) -> nn.Module:
    """Build the network `kind` and load a released checkpoint into it, in eval mode.

    `kind` is one of `OFFICIAL_NETWORKS` (appearance_extractor, motion_extractor,
    warp_network, decoder, stitch_network, lmdm). `config` overrides the release's
    constructor defaults (e.g. another LMDM variant's dimensions).
    """
    try:
        spec: NetworkSpec = OFFICIAL_NETWORKS[kind]
    except KeyError:
        raise CheckpointError(
            f"unknown network kind {kind!r}; expected one of {', '.join(OFFICIAL_NETWORKS)}"
        ) from None
    net = spec.factory()(**config)
    state_dict = unwrap_state_dict(read_checkpoint(path), spec.container, path)
    target = getattr(net, spec.load_into) if spec.load_into else net
    load_state_dict_strict(target, state_dict, path, kind)
    return net.to(device).eval()


def save_official(net: nn.Module, kind: str, path: str | os.PathLike) -> None:
    """Write `net` in the release's container, so the release (and we) can load it."""
    spec = OFFICIAL_NETWORKS[kind]
    target = getattr(net, spec.load_into) if spec.load_into else net
    state_dict = OrderedDict((k, v.detach().cpu()) for k, v in target.state_dict().items())
    obj: Any = state_dict
    if spec.container != "raw_state_dict":
        obj = {_CONTAINER_KEYS[spec.container]: state_dict}
    save_atomically(obj, path)


def read_payload(
    path: str | os.PathLike, fmt: str, *, missing: str, foreign: str
) -> dict[str, Any]:
    """The dict a `save_atomically` checkpoint of format `fmt` holds, read safely (weights only);
    a `CheckpointError` ``"{path}: {missing}"`` / ``"{path}: {foreign}"`` when absent or not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {missing}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(
            f"{path}: cannot read the checkpoint: {load_failure(path, e)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise CheckpointError(f"{path}: {foreign}")
    return payload


def save_atomically(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save` to a temporary sibling renamed into place, with the mode a plain open()
    would give: an interrupted save leaves the previous file or none, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
