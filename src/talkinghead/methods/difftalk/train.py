"""Training DiffTalk in two stages, on data from `talkinghead.methods.difftalk.data.prepare_dataset`.

Stage ``autoencoder``: the VQ autoencoder E_I / D_I learns to reconstruct the face crops
with the CompVis first stage's objective (taming's VQLPIPSWithDiscriminator, shared with
DiT-Head as `talkinghead.models.vqgan_losses.VQGANLoss`): L1 + codebook/commitment loss
+ LPIPS (when its VGG weights are given: ``perceptual_dir``) + a PatchGAN hinge loss with
the adaptive weight, on after ``disc_start`` steps.

Stage ``ldm``: with the autoencoder frozen, the denoiser M and the condition encoders
E_A, E_L are optimised jointly on L = E||eps - M(z_t, t, C)||^2 (paper Eq. 3), t uniform
over the 1000-step schedule. As in the release: AdamW, gradient-norm clipping at 0.1,
an exponential moving average of the weights (decay 0.9999, warmed up as CompVis'
LitEma), which is what the checkpoint stores. Latents of every frame and of its
mouth-masked version are computed once when the dataset is small enough
(``cache_latents``): the frozen encoder makes that exact.

Resume and overwrite: a stage whose checkpoint exists is refused unless ``resume`` (continue
from its step, optimiser, EMA, discriminator and random state: bit for bit the run that was
not interrupted, since batches are a function of the step) or ``overwrite`` (start again).
A resumed stage that already reached ``steps`` is refused too: raise ``steps``.

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
    read_component,
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
from talkinghead.models.vqgan_losses import VQGANLoss, VQGANLossConfig, load_lpips
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
    # taming's VQLPIPSWithDiscriminator weights (CompVis vq-f4: disc_weight 0.75, codebook 1.0)
    perceptual_weight: float = 1.0  # only with LPIPS weights (perceptual_dir)
    disc_weight: float = 0.75  # 0: no discriminator
    disc_start: int = 10_000
    resume: bool = False
    overwrite: bool = False


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
    resume: bool = False
    overwrite: bool = False


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[float]
    steps: int


def batch_at(step: int, n: int, batch_size: int, seed: int) -> tuple[int, np.ndarray]:
    """(epoch, indices) of the 1-based `step`: each epoch a fresh permutation of the n
    examples from (seed, epoch), so a resumed run draws the batches it would have drawn."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step - 1, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return epoch, order[k * batch_size : (k + 1) * batch_size]


def start_state(path: Path, kind: str, steps: int, resume: bool, overwrite: bool) -> dict | None:
    """The checkpoint payload to continue from (None: start afresh); refuses to replace a
    stage's checkpoint unless asked. Called before any data or model is loaded."""
    if not path.is_file():
        return None
    if overwrite:
        return None
    if not resume:
        raise TalkingHeadError(
            f"{path} exists: pass --resume to continue that {kind} run or --overwrite to replace it"
        )
    payload = read_component(path, kind)
    if "train_state" not in payload:
        raise CheckpointError(f"{path}: holds no training state to resume (use --overwrite)")
    done = int(payload.get("step", 0))
    if done >= steps:
        raise TalkingHeadError(
            f"{path}: the {kind} stage already reached step {done}; pass --steps above {done} "
            "to train on, or --overwrite to start again"
        )
    return payload


def _rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Log:
    """``train_<stage>.jsonl``: appended by a resumed run, started afresh otherwise."""

    def __init__(self, path: Path, every: int, append: bool) -> None:
        self.path, self.every = path, every
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a" if append else "w")

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
    perceptual_dir: Path | None = None,
) -> TrainResult:
    """Train the VQ autoencoder on the prepared crops; writes OUT_DIR/autoencoder.pt.

    ``perceptual_dir``: LPIPS weights (``vgg16.pth``, ``vgg.pth``; see
    `talkinghead.models.vqgan_losses.load_lpips`); without them the perceptual term is off."""
    cfg = config or AutoencoderTrainConfig()
    out_dir = Path(out_dir)
    path = out_dir / AUTOENCODER_FILE
    resumed = start_state(path, "autoencoder", cfg.steps, cfg.resume, cfg.overwrite)
    perceptual = load_lpips(perceptual_dir) if perceptual_dir is not None else None
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
    if resumed is not None:
        ae_cfg = DiffTalkAutoencoderConfig.from_dict(resumed["config"])
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = DiffTalkAutoencoder(ae_cfg).to(device).train()
    loss_cfg = VQGANLossConfig(
        pixel="l1",
        codebook_weight=cfg.codebook_weight,
        perceptual_weight=cfg.perceptual_weight,
        disc_weight=cfg.disc_weight,
        disc_start=cfg.disc_start,
    )
    criterion = VQGANLoss(loss_cfg, perceptual).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.9), foreach=True)
    opt_d = torch.optim.Adam(
        criterion.discriminator.parameters(), lr=cfg.lr, betas=(0.5, 0.9), foreach=True
    )
    first = 1
    if resumed is not None:
        state = resumed["train_state"]
        model.load_state_dict(resumed["state_dict"])
        opt.load_state_dict(state["opt"])
        opt_d.load_state_dict(state["opt_d"])
        criterion.discriminator.load_state_dict(state["discriminator"])
        _restore_rng(state["rng"])
        first = int(resumed["step"]) + 1
    last_layer = model.vq.decoder.conv_out.weight  # the adaptive GAN weight's reference
    logger = _Log(out_dir / "train_autoencoder.jsonl", cfg.log_every, append=resumed is not None)
    losses: list[float] = []
    extra = {"train": asdict(cfg), "data": data.manifest_settings()}

    def save(step: int) -> None:
        train_state = {
            "opt": opt.state_dict(),
            "opt_d": opt_d.state_dict(),
            "discriminator": criterion.discriminator.state_dict(),
            "rng": _rng_state(),
        }
        save_component(
            path, "autoencoder", model, ae_cfg.to_dict(), step=step, train_state=train_state,
            **extra,
        )  # fmt: skip

    try:
        for step in range(first, cfg.steps + 1):
            _, idx = batch_at(step, len(data), cfg.batch_size, cfg.seed)
            images = torch.stack([to_tensor_image(data.frame(*data.index[i])) for i in idx]).to(
                device
            )
            recon, vq_loss = model(images)
            # taming counts the GAN's start in optimiser steps from 0
            loss, logs = criterion.generator_loss(images, recon, vq_loss, step - 1, last_layer)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if criterion.gan_active(step - 1):
                d_loss = criterion.discriminator_loss(images, recon)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                logs["d"] = d_loss.item()
            values = {"loss": logs.pop("total"), **logs}
            if not math.isfinite(values["loss"]):
                raise TalkingHeadError(f"the loss diverged at step {step}")
            losses.append(values["loss"])
            logger(step, values)
            if progress:
                progress("autoencoder", step, cfg.steps)
            if step % cfg.save_every == 0 or step == cfg.steps:
                save(step)
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
    path = out_dir / LDM_FILE
    resumed = start_state(path, "ldm", cfg.steps, cfg.resume, cfg.overwrite)
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
    if resumed is not None:
        model_config = DiffTalkLDMConfig.from_dict(resumed["config"])
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
    generator = torch.Generator().manual_seed(cfg.seed)
    first = 1
    if resumed is not None:
        state = resumed["train_state"]
        ldm.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if ema is not None:
            if "ema" not in state:
                raise CheckpointError(f"{path}: trained without EMA; resume with --no-ema")
            ema.load_state_dict(state["ema"])
        _restore_rng(state["rng"], generator)
        first = int(resumed["step"]) + 1
    logger = _Log(out_dir / "train_ldm.jsonl", cfg.log_every, append=resumed is not None)
    settings = data.manifest_settings()
    settings.update(smooth_radius=cfg.smooth_radius, min_reference_gap=cfg.min_reference_gap)
    losses: list[float] = []

    def save(step: int) -> None:
        weights = ema.averaged(ldm) if ema is not None else ldm
        train_state = {"model": ldm.state_dict(), "opt": opt.state_dict()}
        train_state["rng"] = _rng_state(generator)
        if ema is not None:
            train_state["ema"] = ema.state_dict()
        save_component(
            path,
            "ldm",
            weights,
            model_config.to_dict(),
            step=step,
            ema=ema is not None,
            train_state=train_state,
            train={k: v for k, v in asdict(cfg).items() if k != "unet_overrides"},
            data=settings,
            autoencoder=str(ae_path),
        )
        write_manifest(out_dir, data.resolution, settings)

    try:
        for step in range(first, cfg.steps + 1):
            epoch, idx = batch_at(step, len(data), cfg.batch_size, cfg.seed)
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
    "batch_at",
    "ldm_loss",
    "start_state",
    "train_autoencoder",
    "train_ldm",
]
