"""Training DiffTalk in two stages, on data from `talkinghead.methods.difftalk.data.prepare_dataset`.

Stage ``autoencoder``: the VQ autoencoder E_I / D_I learns to reconstruct the face crops
(L1 + the codebook/commitment loss). The CompVis first stage DiffTalk uses was trained
with an LPIPS perceptual loss and a patch discriminator as well; neither is here (LPIPS
needs pretrained VGG weights), so reconstructions are softer. Users with a CompVis VQ
checkpoint should convert it rather than retrain.

Stage ``ldm``: with the autoencoder frozen, the denoiser M and the condition encoders
E_A, E_L are optimised jointly on L = E||eps - M(z_t, t, C)||^2 (paper Eq. 3), t uniform
over the 1000-step schedule. As in the release: AdamW, gradient-norm clipping at 0.1,
an exponential moving average of the weights (decay 0.9999, warmed up as CompVis'
LitEma), which is what the checkpoint stores. Latents of every frame and of its
mouth-masked version are computed once when the dataset is small enough
(``cache_latents``): the frozen encoder makes that exact.

Both stages write into OUT_DIR (``autoencoder.pt``, ``ldm.pt``, ``difftalk.json``,
``train_<stage>.jsonl``; the format is `talkinghead.methods.difftalk.checkpoint`'s), so
after both OUT_DIR is a checkpoint directory for ``talkinghead generate --method difftalk``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkinghead.diffusion import DiffusionSchedule
from talkinghead.diffusion.latent_inpainting import difftalk_schedule
from talkinghead.errors import CheckpointError, TalkingHeadError
from talkinghead.methods.difftalk.checkpoint import (
    AUTOENCODER_FILE,
    LDM_FILE,
    load_autoencoder,
    save_component,
    write_manifest,
)
from talkinghead.methods.difftalk.data import DiffTalkDataset, reference_index
from talkinghead.methods.difftalk.features import (
    LANDMARK_POINTS,
    landmark_condition,
    masked_frame,
    to_tensor_image,
)
from talkinghead.models.difftalk_autoencoder import (
    DiffTalkAutoencoder,
    DiffTalkAutoencoderConfig,
    autoencoder_preset,
)
from talkinghead.models.difftalk_conditions import DiffTalkConditionConfig
from talkinghead.models.difftalk_unet import DiffTalkLDM, DiffTalkLDMConfig, unet_preset
from talkinghead.training.ema import EMA

log = logging.getLogger(__name__)

STAGES = ("autoencoder", "ldm")
# Progress callback: (stage name, items done, total or None).
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """Stage 1. ``preset``: an `AUTOENCODER_PRESETS` name (f4 for 256 px, f8 for 512 px);
    its resolution is replaced by the dataset's."""

    preset: str = "f4"
    steps: int = 50_000
    batch_size: int = 4
    lr: float = 1e-4
    codebook_weight: float = 1.0
    seed: int = 0
    device: str = "cpu"
    log_every: int = 50
    save_every: int = 2_000
    cache_frames: bool = False


@dataclass(frozen=True)
class LdmTrainConfig:
    """Stage 2. ``preset``: a `UNET_PRESETS` name ("release" or "tiny"); ``lr`` is the
    release's 1e-6 scaled by its batch of 8 on 8 GPUs."""

    preset: str = "release"
    steps: int = 100_000
    batch_size: int = 8
    lr: float = 6.4e-5
    weight_decay: float = 0.01
    grad_clip: float = 0.1
    ema: bool = True
    ema_decay: float = 0.9999
    min_reference_gap: int = 60
    smooth_radius: int = 8
    seed: int = 0
    device: str = "cpu"
    log_every: int = 50
    save_every: int = 5_000
    cache_latents: bool | None = None  # None: when the dataset has <= 20k frames
    unet_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[float]
    steps: int


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless shuffled index batches (epoch number, indices)."""
    epoch = 0
    while True:
        order = rng.permutation(n)
        for s in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield epoch, order[s : s + batch_size]
        epoch += 1


class _Log:
    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a")

    def __call__(self, step: int, losses: dict[str, float]) -> None:
        if step % self.every == 0 or step == 1:
            self.file.write(json.dumps({"step": step, **losses}) + "\n")
            self.file.flush()
            log.info("step %d: %s", step, losses)

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------------------- stage 1


def train_autoencoder(
    data_dir: Path,
    out_dir: Path,
    config: AutoencoderTrainConfig | None = None,
    *,
    progress: Progress | None = None,
    model_config: DiffTalkAutoencoderConfig | None = None,
) -> TrainResult:
    """Train the VQ autoencoder on the prepared crops; writes OUT_DIR/autoencoder.pt."""
    cfg = config or AutoencoderTrainConfig()
    out_dir = Path(out_dir)
    data = DiffTalkDataset(data_dir, seed=cfg.seed, cache=cfg.cache_frames)
    try:
        ae_cfg = model_config or autoencoder_preset(cfg.preset, resolution=data.resolution)
    except ValueError as e:
        raise TalkingHeadError(str(e)) from None
    if ae_cfg.resolution != data.resolution:
        raise TalkingHeadError(
            f"the autoencoder is for {ae_cfg.resolution} px; the data is {data.resolution} px"
        )
    if data.resolution % ae_cfg.downsample:
        raise TalkingHeadError(f"{data.resolution} px is not a multiple of f = {ae_cfg.downsample}")
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = DiffTalkAutoencoder(ae_cfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.9), foreach=True)
    rng = np.random.default_rng(cfg.seed)
    logger = _Log(out_dir / "train_autoencoder.jsonl", cfg.log_every)
    losses: list[float] = []
    extra = {"train": asdict(cfg), "data": data.manifest_settings()}
    path = out_dir / AUTOENCODER_FILE
    try:
        for step, (_, idx) in enumerate(_batches(len(data), cfg.batch_size, rng), start=1):
            images = torch.stack([to_tensor_image(data.frame(*data.index[i])) for i in idx]).to(
                device
            )
            recon, vq_loss = model(images)
            rec = (recon - images).abs().mean()
            loss = rec + cfg.codebook_weight * vq_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            values = {"loss": loss.item(), "l1": rec.item(), "vq": vq_loss.item()}
            losses.append(values["loss"])
            logger(step, values)
            if progress:
                progress("autoencoder", step, cfg.steps)
            if step % cfg.save_every == 0 or step == cfg.steps:
                save_component(path, "autoencoder", model, ae_cfg.to_dict(), step=step, **extra)
            if step >= cfg.steps:
                break
    finally:
        logger.close()
    return TrainResult(path, losses, cfg.steps)


# ---------------------------------------------------------------------------- stage 2


class _LatentSource:
    """Training latents of (frame, masked frame, reference) plus conditions, per example."""

    def __init__(self, data: DiffTalkDataset, ae: DiffTalkAutoencoder, device, cache: bool) -> None:
        self.data, self.ae, self.device = data, ae, device
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if cache:
            self.cache = []
            for c, clip in enumerate(data.clips):
                z, zm = [], []
                for s in range(0, clip.num_frames, 16):
                    frames = [data.frame(c, i) for i in range(s, min(s + 16, clip.num_frames))]
                    masked = [masked_frame(f, clip.landmarks[s + k]) for k, f in enumerate(frames)]
                    # Kept in host memory; batches move to the device.
                    z.append(self._encode(frames).cpu())
                    zm.append(self._encode(masked).cpu())
                self.cache.append((torch.cat(z), torch.cat(zm)))

    @torch.no_grad()
    def _encode(self, images: list[np.ndarray]) -> torch.Tensor:
        x = torch.stack([to_tensor_image(im) for im in images]).to(self.device)
        return self.ae.encode(x)

    def batch(self, idx: np.ndarray, epoch: int) -> dict[str, torch.Tensor]:
        from talkinghead.audio.ctc import neighbour_indices

        d = self.data
        z, zm, zr, audio, lms = [], [], [], [], []
        for j in idx:
            c, i = d.index[j]
            clip = d.clips[c]
            rng = np.random.default_rng([d.seed, epoch, int(j)])
            r = reference_index(i, clip.num_frames, rng, d.min_reference_gap)
            if self.cache is not None:
                zc, zmc = self.cache[c]
                z.append(zc[i])
                zm.append(zmc[i])
                zr.append(zc[r])
            else:
                frame = d.frame(c, i)
                enc = self._encode(
                    [frame, masked_frame(frame, clip.landmarks[i]), d.frame(c, r)]
                ).cpu()
                z.append(enc[0])
                zm.append(enc[1])
                zr.append(enc[2])
            nb = neighbour_indices(clip.num_frames, d.smooth_radius, np.array([i]))[0]
            audio.append(torch.from_numpy(clip.audio[nb]))
            lms.append(torch.from_numpy(landmark_condition(clip.landmarks[i], d.resolution)))
        dev = self.device
        return {
            "z": torch.stack(z).to(dev),
            "masked": torch.stack(zm).to(dev),
            "reference": torch.stack(zr).to(dev),
            "audio": torch.stack(audio).float().to(dev),
            "landmarks": torch.stack(lms).to(dev),
        }


def ldm_loss(
    ldm: DiffTalkLDM,
    schedule: DiffusionSchedule,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
) -> torch.Tensor:
    """||eps - M(z_t, t, C)||^2 for one batch; t and eps drawn from `generator` (CPU)."""
    z = batch["z"]
    b = z.shape[0]
    t = torch.randint(0, schedule.n_timestep, (b,), generator=generator)
    noise = torch.randn(z.shape, generator=generator).to(z.device)
    t = t.to(z.device)
    noisy = schedule.q_sample(z, t, noise)
    context = ldm.context(batch["audio"], batch["landmarks"])
    pred = ldm(noisy, t, batch["masked"], batch["reference"], context)
    return torch.nn.functional.mse_loss(pred, noise)


def train_ldm(
    data_dir: Path,
    out_dir: Path,
    config: LdmTrainConfig | None = None,
    *,
    autoencoder: Path | None = None,
    progress: Progress | None = None,
    model_config: DiffTalkLDMConfig | None = None,
) -> TrainResult:
    """Train M, E_A, E_L with the frozen autoencoder; writes ldm.pt and difftalk.json."""
    cfg = config or LdmTrainConfig()
    out_dir = Path(out_dir)
    ae_path = Path(autoencoder) if autoencoder is not None else out_dir / AUTOENCODER_FILE
    if not ae_path.is_file():
        raise CheckpointError(
            f"{ae_path}: no autoencoder; train --stage autoencoder first (or pass --autoencoder)"
        )
    device = torch.device(cfg.device)
    ae = load_autoencoder(ae_path, device).requires_grad_(False)
    data = DiffTalkDataset(
        data_dir,
        min_reference_gap=cfg.min_reference_gap,
        smooth_radius=cfg.smooth_radius,
        seed=cfg.seed,
    )
    if ae.config.resolution != data.resolution:
        raise TalkingHeadError(
            f"{ae_path}: the autoencoder is for {ae.config.resolution} px; the data is {data.resolution} px"
        )
    if model_config is None:
        cond = DiffTalkConditionConfig(
            audio_feature_dim=data.feature_dim,
            smooth_radius=cfg.smooth_radius,
            num_landmarks=len(LANDMARK_POINTS),
        )
        try:
            unet = unet_preset(
                cfg.preset,
                sample_size=ae.config.latent_size,
                latent_channels=ae.config.latent_channels,
                context_dim=cond.context_dim,
                **cfg.unet_overrides,
            )
        except ValueError as e:
            raise TalkingHeadError(str(e)) from None
        model_config = DiffTalkLDMConfig(unet=unet, conditions=cond)
    if model_config.conditions.audio_feature_dim != data.feature_dim:
        raise TalkingHeadError(
            f"the data has {data.feature_dim} audio features per step; the model expects "
            f"{model_config.conditions.audio_feature_dim}"
        )
    torch.manual_seed(cfg.seed)
    ldm = DiffTalkLDM(model_config).to(device).train()
    ema = EMA(ldm, cfg.ema_decay) if cfg.ema else None
    opt = torch.optim.AdamW(
        ldm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True
    )
    schedule = difftalk_schedule()
    cache = cfg.cache_latents if cfg.cache_latents is not None else len(data) <= 20_000
    source = _LatentSource(data, ae, device, cache)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    logger = _Log(out_dir / "train_ldm.jsonl", cfg.log_every)
    settings = data.manifest_settings()
    settings.update(smooth_radius=cfg.smooth_radius, min_reference_gap=cfg.min_reference_gap)
    path = out_dir / LDM_FILE
    losses: list[float] = []

    def save(step: int) -> None:
        weights = ema.averaged(ldm) if ema is not None else ldm
        save_component(
            path,
            "ldm",
            weights,
            model_config.to_dict(),
            step=step,
            ema=ema is not None,
            train={k: v for k, v in asdict(cfg).items() if k != "unet_overrides"},
            data=settings,
            autoencoder=str(ae_path),
        )
        write_manifest(out_dir, data.resolution, settings)

    try:
        for step, (epoch, idx) in enumerate(_batches(len(data), cfg.batch_size, rng), start=1):
            loss = ldm_loss(ldm, schedule, source.batch(idx, epoch), generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip and cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(ldm.parameters(), cfg.grad_clip)
            opt.step()
            if ema is not None:
                ema.update(ldm)
            value = loss.item()
            if not math.isfinite(value):
                raise TalkingHeadError(f"the loss diverged at step {step}")
            losses.append(value)
            logger(step, {"loss": value})
            if progress:
                progress("ldm", step, cfg.steps)
            if step % cfg.save_every == 0 or step == cfg.steps:
                save(step)
            if step >= cfg.steps:
                break
    finally:
        logger.close()
    if ae_path.parent.resolve() != out_dir.resolve():
        # difftalk.json names autoencoder.pt beside it: keep the directory self-contained.
        import shutil

        shutil.copyfile(ae_path, out_dir / AUTOENCODER_FILE)
    return TrainResult(path, losses, cfg.steps)


__all__ = [
    "EMA",
    "STAGES",
    "AutoencoderTrainConfig",
    "LdmTrainConfig",
    "TrainResult",
    "ldm_loss",
    "train_autoencoder",
    "train_ldm",
]
