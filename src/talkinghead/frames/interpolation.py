"""2x video frame interpolation: DiT-Head's stage 3 (against jitter), offered to DiffTalk too.

Two interpolators make the frame halfway between two RGB uint8 frames:

* `RIFEInterpolator`: the RIFE network (`talkinghead.models.dithead_rife.RIFE`) with
  the authors' published weights, ``<checkpoints>/rife/flownet.pkl`` (the paper's
  choice);
* `FlowInterpolator`: a classical one for when those weights are absent. OpenCV's
  DIS optical flow (or Farneback) gives the flows F01 and F10 between the frames;
  the flows from the middle frame back to each of them are approximated as in
  Super SloMo (Jiang et al. 2018) for t = 1/2, F_t0 = (F10 - F01) / 4 and
  F_t1 = (F01 - F10) / 4, both frames are backward-warped there and averaged.

`interpolate_2x` turns N frames into 2N: every frame followed by the middle frame
to the next one, and the last frame repeated, so the video at twice the frame
rate lasts exactly as long as the input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from talkinghead.errors import CheckpointError

RIFE_DIRNAME = "rife"
RIFE_FILE = "flownet.pkl"
KINDS = ("auto", "rife", "flow", "farneback", "none")


class Interpolator(Protocol):
    name: str

    def middle(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


class FlowInterpolator:
    """Classical flow-based middle frame (see the module docstring)."""

    def __init__(self, method: str = "dis") -> None:
        if method not in ("dis", "farneback"):
            raise ValueError(f"unknown optical flow method {method!r}")
        self.name = f"flow-{method}"
        self.method = method
        self._dis = None
        if method == "dis":
            self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Dense flow [H, W, 2] (pixels) such that a(x) ~ b(x + flow(x))."""
        ga = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
        gb = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
        if self._dis is not None:
            return self._dis.calc(ga, gb, None)
        return cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 4, 15, 5, 7, 1.5, 0)

    def middle(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        f01, f10 = self.flow(a, b), self.flow(b, a)
        ft0 = 0.25 * (f10 - f01)
        ft1 = 0.25 * (f01 - f10)
        h, w = a.shape[:2]
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

        def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
            return cv2.remap(
                img,
                gx + flow[..., 0],
                gy + flow[..., 1],
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )

        wa = warp(a, ft0).astype(np.float32)
        wb = warp(b, ft1).astype(np.float32)
        return np.clip((wa + wb) * 0.5 + 0.5, 0, 255).astype(np.uint8)


class RIFEInterpolator:
    """The RIFE network on frames in BGR order (as RIFE's own scripts read them)."""

    name = "rife"

    def __init__(self, model, device: str = "cpu", scale: float = 1.0) -> None:
        import torch

        self._torch = torch
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.scale = scale

    @classmethod
    def from_file(cls, path: Path, device: str = "cpu", scale: float = 1.0) -> RIFEInterpolator:
        import torch

        from talkinghead.models.dithead_rife import RIFE

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: RIFE weights not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            from talkinghead.models.loading import load_failure

            raise CheckpointError(
                f"{path}: cannot read the RIFE weights: {load_failure(path, e)}"
            ) from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        model = RIFE()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: not the RIFE (ECCV 2022) flownet ({e})") from None
        return cls(model, device, scale)

    def _tensor(self, rgb: np.ndarray):
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        t = self._torch.from_numpy(bgr).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        return t

    def middle(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            mid = self.model.interpolate(self._tensor(a), self._tensor(b), self.scale)
        out = (mid[0].permute(1, 2, 0) * 255.0 + 0.5).clamp(0, 255).byte().cpu().numpy()
        return np.ascontiguousarray(out[..., ::-1])


def rife_weights(checkpoints: Path | None) -> Path | None:
    """``<checkpoints>/rife/flownet.pkl`` (or ``<checkpoints>/flownet.pkl``) if present."""
    if checkpoints is None:
        return None
    for p in (Path(checkpoints) / RIFE_DIRNAME / RIFE_FILE, Path(checkpoints) / RIFE_FILE):
        if p.is_file():
            return p
    return None


def create_interpolator(
    kind: str = "auto", checkpoints: Path | None = None, device: str = "cpu"
) -> Interpolator | None:
    """ "auto": RIFE when its weights are in ``checkpoints``, else DIS flow; "rife" requires
    them; "flow" / "farneback": the classical one; "none": None."""
    if kind not in KINDS:
        raise ValueError(f"unknown interpolation {kind!r}; expected one of {', '.join(KINDS)}")
    if kind == "none":
        return None
    if kind in ("auto", "rife"):
        weights = rife_weights(checkpoints)
        if weights is not None:
            return RIFEInterpolator.from_file(weights, device)
        if kind == "rife":
            raise CheckpointError(
                f"{checkpoints}: RIFE weights not found (expected {RIFE_DIRNAME}/{RIFE_FILE})"
            )
    return FlowInterpolator("farneback" if kind == "farneback" else "dis")


class Interpolators:
    """`create_interpolator`'s interpolators for one checkpoints folder and device, each
    made on first use and kept: a pipeline loads RIFE's weights once for all its videos."""

    def __init__(self, checkpoints: Path | None = None, device: str = "cpu") -> None:
        self.checkpoints = checkpoints
        self.device = device
        self._made: dict[str, Interpolator | None] = {}

    def get(self, kind: str = "auto") -> Interpolator | None:
        if kind not in self._made:
            self._made[kind] = create_interpolator(kind, self.checkpoints, self.device)
        return self._made[kind]


def interpolate_2x(
    frames: Iterable[np.ndarray], interpolator: Interpolator
) -> Iterator[np.ndarray]:
    """f0, mid(f0, f1), f1, ..., f_{N-1}, f_{N-1}: 2N frames for N, streamed."""
    prev = None
    for frame in frames:
        if prev is not None:
            yield interpolator.middle(prev, frame)
        yield frame
        prev = frame
    if prev is not None:
        yield prev
