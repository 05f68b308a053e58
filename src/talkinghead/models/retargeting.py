"""LivePortrait's eye and lip retargeting MLPs, and their use as eye-open / lip-open controls.

Each MLP reads the source's posed keypoints (flattened, 3 * num_kp values) and a few
scalars, and predicts a per-keypoint offset for the driving keypoints:

* eyes: ``[kp_source, source eye-close ratio (left, right), target eye-close ratio]``
  (66 inputs for 21 keypoints), hidden (256, 256, 128, 128, 64);
* lips: ``[kp_source, source lip-close ratio, target lip-close ratio]`` (65 inputs),
  hidden (128, 128, 64).

Layers are ``mlp.{0,2,4,...}`` with ReLU between them, the names in LivePortrait's
``stitching_retargeting_module.pth`` (its ``retarget_eye`` / ``retarget_mouth`` entries).

`retarget` turns them into controls that can be applied to any driving keypoints,
LivePortrait's video driving as much as Ditto's generated motion. Unlike LivePortrait,
the offset is kept only on the eye (or lip) keypoints, so a slider never moves the
head or the other region (the MLP's output elsewhere is small but not zero).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from talkinghead.errors import CheckpointError
from talkinghead.models.loading import load_state_dict_strict, read_checkpoint

# The implicit keypoints of each region, as LivePortrait's "eyes" / "lip" animation regions.
EYE_KEYPOINTS: tuple[int, ...] = (11, 13, 15, 16, 18)
LIP_KEYPOINTS: tuple[int, ...] = (6, 12, 14, 17, 19, 20)


class RetargetingNetwork(nn.Module):
    """(kp_source [B, K, 3], ratios [B, R]) -> keypoint offsets [B, K, 3]."""

    def __init__(self, input_size: int, hidden_sizes: Sequence[int], output_size: int = 63) -> None:
        super().__init__()
        sizes = [input_size, *hidden_sizes]
        layers: list[nn.Module] = []
        for d_in, d_out in itertools.pairwise(sizes):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], output_size))
        self.mlp = nn.Sequential(*layers)
        self.input_size = input_size
        self.output_size = output_size

    def forward(self, kp_source: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
        b = kp_source.shape[0]
        x = torch.cat([kp_source.reshape(b, -1), ratios.reshape(b, -1).to(kp_source.dtype)], 1)
        return self.mlp(x).reshape(b, -1, 3)


def eye_retargeting_network(num_kp: int = 21, **sizes) -> RetargetingNetwork:
    """The release's eye MLP (66 -> 256, 256, 128, 128, 64 -> 63); `sizes` overrides."""
    args = {"input_size": 3 * num_kp + 3, "hidden_sizes": (256, 256, 128, 128, 64)}
    args.update(sizes)
    args.setdefault("output_size", 3 * num_kp)
    return RetargetingNetwork(**args)


def lip_retargeting_network(num_kp: int = 21, **sizes) -> RetargetingNetwork:
    """The release's lip MLP (65 -> 128, 128, 64 -> 63); `sizes` overrides."""
    args = {"input_size": 3 * num_kp + 2, "hidden_sizes": (128, 128, 64)}
    args.update(sizes)
    args.setdefault("output_size", 3 * num_kp)
    return RetargetingNetwork(**args)


def _column(value: float | torch.Tensor, b: int, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return v.reshape(-1, 1).expand(b, 1) if v.numel() in (1, b) else v.reshape(b, -1)


def region_delta(
    network: RetargetingNetwork,
    kp_source: torch.Tensor,
    source_ratio: torch.Tensor,
    target_ratio: float | torch.Tensor,
    keypoints: Sequence[int],
) -> torch.Tensor:
    """The MLP's offsets [B, K, 3] for `target_ratio`, zero outside `keypoints`."""
    b = kp_source.shape[0]
    src = torch.as_tensor(source_ratio, dtype=kp_source.dtype, device=kp_source.device)
    src = src.reshape(1, -1).expand(b, -1) if src.ndim <= 1 or src.shape[0] == 1 else src
    ratios = torch.cat([src, _column(target_ratio, b, kp_source)], dim=1)
    delta = network(kp_source, ratios)
    mask = torch.zeros(delta.shape[1], 1, dtype=delta.dtype, device=delta.device)
    mask[list(keypoints)] = 1
    return delta * mask


def retarget(
    kp_driving: torch.Tensor,
    kp_source: torch.Tensor,
    *,
    eye_network: RetargetingNetwork | None = None,
    lip_network: RetargetingNetwork | None = None,
    source_eye_ratio: torch.Tensor | None = None,
    source_lip_ratio: torch.Tensor | None = None,
    eye_open: float | torch.Tensor | None = None,
    lip_open: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Driving keypoints [B, K, 3] with the eye-open and lip-open sliders applied.

    `eye_open` / `lip_open` are target close ratios (LivePortrait's scale: about 0 closed,
    0.4 wide open for eyes, 0.8 for lips), a number or one per frame [B]; None leaves
    the region as driven. `source_*_ratio` are the source face's own ratios ([2] for the
    eyes, [1] for the lips; see `talkinghead.face.ratios`). Apply before stitching, as
    LivePortrait does. Returns a new tensor; the input is left untouched.
    """
    out = kp_driving.clone()
    for target, net, ratio, idx, what in (
        (eye_open, eye_network, source_eye_ratio, EYE_KEYPOINTS, "eye"),
        (lip_open, lip_network, source_lip_ratio, LIP_KEYPOINTS, "lip"),
    ):
        if target is None:
            continue
        if net is None or ratio is None:
            raise ValueError(f"{what} retargeting needs the {what} network and the source's ratio")
        out = out + region_delta(net, kp_source, ratio, target, idx)
    return out


# Entries of LivePortrait's stitching_retargeting_module.pth holding the two MLPs.
EYE_ENTRY, LIP_ENTRY = "retarget_eye", "retarget_mouth"


def retargeting_network_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], where: str
) -> RetargetingNetwork:
    """A `RetargetingNetwork` sized by its state dict (``mlp.{i}.weight`` shapes) and loaded
    strictly; DDP ``module.`` prefixes are stripped. The release's sizes and tiny test
    variants load alike, with no sizes file."""
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise CheckpointError(f"{where}: does not hold a state_dict of tensors")
    sd = {k.replace("module.", ""): v for k, v in state_dict.items()}
    layers = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"mlp\.(\d+)\.weight", k)))
    if not layers or any(sd[f"mlp.{i}.weight"].ndim != 2 for i in layers):
        raise CheckpointError(f"{where}: no mlp.N.weight matrices of a retargeting MLP")
    shapes = [tuple(sd[f"mlp.{i}.weight"].shape) for i in layers]  # (out, in)
    net = RetargetingNetwork(shapes[0][1], [out for out, _ in shapes[:-1]], shapes[-1][0])
    load_state_dict_strict(net, sd, where, "retargeting MLP")
    return net.eval()


def load_retargeting_networks(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[RetargetingNetwork, RetargetingNetwork]:
    """The eye and lip MLPs of LivePortrait's ``stitching_retargeting_module.pth``, in eval
    mode on `device` (shared by every method that offers the eye/lip sliders)."""
    container = read_checkpoint(path)
    if not isinstance(container, Mapping) or not {EYE_ENTRY, LIP_ENTRY} <= set(container):
        found = list(container)[:8] if isinstance(container, Mapping) else type(container).__name__
        raise CheckpointError(
            f"{path}: expected LivePortrait's retargeting entries {EYE_ENTRY} and {LIP_ENTRY}, "
            f"found {found}"
        )
    eye = retargeting_network_from_state_dict(container[EYE_ENTRY], f"{path}[{EYE_ENTRY}]")
    lip = retargeting_network_from_state_dict(container[LIP_ENTRY], f"{path}[{LIP_ENTRY}]")
    return eye.to(device), lip.to(device)


__all__ = [
    "EYE_ENTRY",
    "EYE_KEYPOINTS",
    "LIP_ENTRY",
    "LIP_KEYPOINTS",
    "RetargetingNetwork",
    "eye_retargeting_network",
    "lip_retargeting_network",
    "load_retargeting_networks",
    "region_delta",
    "retarget",
    "retargeting_network_from_state_dict",
]
