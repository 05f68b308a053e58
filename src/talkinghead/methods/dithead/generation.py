"""DiT-Head's frame generation, shared by inference and training's validation samples.

`DiTHeadGenerator` is the paper's evolving inference over prepared source faces: the
masked crop's latent, a reference latent (a source frame for the first frame, the
previous generated latent afterwards) and the 11-frame audio window condition DDIM,
the full-face VQGAN decodes, and the mask blends the generated lower face back in
(`paste_masked`). `talkinghead.methods.dithead.pipeline` feeds it tracked faces of a
source video and a new audio track; training (`talkinghead.methods.dithead.train`)
feeds it a held-out clip's prepared crops and audio features with the current weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from talkinghead.diffusion import DDIMSampler, DiffusionSchedule
from talkinghead.errors import CheckpointError
from talkinghead.methods.dithead.checkpoint import DIT_FILE, VQ_FILES, load_checkpoint
from talkinghead.methods.dithead.config import DataSettings
from talkinghead.methods.dithead.features import apply_mask, from_tensor_image, to_tensor_image
from talkinghead.models.dithead_dit import DiTHead
from talkinghead.models.dithead_vqgan import VQModel

DEFAULT_STEPS = 250
# Progress callback: (stage name, items done, total or None).
Progress = Callable[[str, int, int | None], None]


@dataclass
class DiTHeadModels:
    """The three trained networks and the data settings they were trained with."""

    vq_full: VQModel
    vq_masked: VQModel
    dit: DiTHead
    settings: DataSettings
    latent_scale: float
    n_timestep: int
    root: Path

    @classmethod
    def load(cls, checkpoints: Path, device: str = "cpu") -> DiTHeadModels:
        root = Path(checkpoints)
        if not (root / DIT_FILE).is_file() and (root / "dithead" / DIT_FILE).is_file():
            root = root / "dithead"
        dit, meta = load_checkpoint(root / DIT_FILE, "dit", device)
        vq_full, _ = load_checkpoint(root / VQ_FILES["full"], "vq", device)
        vq_masked, _ = load_checkpoint(root / VQ_FILES["masked"], "vq", device)
        settings: DataSettings = meta["data"]
        size = settings.crop.size
        if vq_full.latent_shape(size, size) != (
            dit.config.latent_channels,
            dit.config.input_size,
            dit.config.input_size,
        ):
            raise CheckpointError(f"{root}: the DiT does not fit the VQGAN's {size}px latents")
        return cls(
            vq_full=vq_full,  # type: ignore[arg-type]
            vq_masked=vq_masked,  # type: ignore[arg-type]
            dit=dit,  # type: ignore[arg-type]
            settings=settings,
            latent_scale=float(meta.get("latent_scale", 1.0)),
            n_timestep=int(meta.get("n_timestep", 1000)),
            root=root,
        )


@dataclass
class SourceFace:
    """One source frame prepared for generation."""

    frame: np.ndarray  # [H, W, 3] uint8
    crop: np.ndarray  # [S, S, 3] uint8
    mask: np.ndarray  # [S, S] float32
    M_c2o: np.ndarray  # 3x3


def pingpong(k: int, n: int) -> int:
    """Index of output frame k in a source of n frames played forwards, backwards, ..."""
    if n <= 1:
        return 0
    period = 2 * (n - 1)
    r = k % period
    return r if r < n else period - r


def paste_masked(
    frame: np.ndarray, crop: np.ndarray, mask: np.ndarray, M_c2o: np.ndarray
) -> np.ndarray:
    """Blend ``crop`` into ``frame`` through ``mask`` (both crop-sized), warped by M_c2o."""
    h, w = frame.shape[:2]
    s = crop.shape[0]
    corners = np.array([[0, 0], [s, 0], [0, s], [s, s]], np.float64)
    pts = corners @ M_c2o[:2, :2].T + M_c2o[:2, 2]
    x0, y0 = max(0, math.floor(pts[:, 0].min()) - 1), max(0, math.floor(pts[:, 1].min()) - 1)
    x1, y1 = min(w, math.ceil(pts[:, 0].max()) + 2), min(h, math.ceil(pts[:, 1].max()) + 2)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    M = np.asarray(M_c2o, np.float64)[:2].copy()
    M[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(crop, M, size, flags=cv2.INTER_LINEAR).astype(np.float32)
    alpha = cv2.warpAffine(mask, M, size, flags=cv2.INTER_LINEAR)[..., None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(alpha * warped + (1 - alpha) * region + 0.5, 0, 255).astype(
        np.uint8
    )
    return out


class DiTHeadGenerator:
    """Evolving-inference sampler over prepared source faces (see the module docstring)."""

    def __init__(
        self,
        models: DiTHeadModels,
        steps: int = DEFAULT_STEPS,
        eta: float = 0.0,
        device: str = "cpu",
    ) -> None:
        self.models = models
        self.device = torch.device(device)
        schedule = DiffusionSchedule.adm_linear(models.n_timestep)
        self.sampler = DDIMSampler(steps, eta, schedule, prediction="epsilon", spacing="adm")

    @torch.no_grad()
    def encode(self, vq: VQModel, images: np.ndarray) -> torch.Tensor:
        x = to_tensor_image(images[None]).to(self.device)
        return vq.encode(x).float() * self.models.latent_scale

    @torch.no_grad()
    def frames(
        self,
        faces: list[SourceFace],
        audio: np.ndarray,
        *,
        generator: torch.Generator,
        reference: int,
        evolve: bool = True,
        progress: Progress | None = None,
    ) -> Iterator[np.ndarray]:
        """Generated, pasted-back frames, one per audio window row."""
        m = self.models
        ref = self.encode(m.vq_full, faces[reference].crop)
        n = len(audio)
        if progress:
            progress("denoise", 0, n)
        for k in range(n):
            face = faces[pingpong(k, len(faces))]
            masked = self.encode(m.vq_masked, apply_mask(face.crop, face.mask))
            aud = torch.from_numpy(audio[k : k + 1]).to(self.device)

            def eps(x: torch.Tensor, t: torch.Tensor, masked=masked, ref=ref, aud=aud):
                return m.dit(x, t, masked, ref, aud).float()

            z0 = self.sampler.sample(eps, ref.shape, generator=generator, device=self.device)
            if evolve:
                ref = z0
            image = m.vq_full.decode(z0 / m.latent_scale)
            crop = from_tensor_image(image[0])
            yield paste_masked(face.frame, crop, face.mask, face.M_c2o)
            if progress:
                progress("denoise", k + 1, n)


__all__ = [
    "DEFAULT_STEPS",
    "DiTHeadGenerator",
    "DiTHeadModels",
    "SourceFace",
    "paste_masked",
    "pingpong",
]
