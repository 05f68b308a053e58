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
not interrupted, since batches are a function of the step) or ``overwrite`` (start again),
as DiT-Head does (`talkinghead.training.stage_output`). A resumed stage that already
reached ``steps`` is refused too: raise ``steps``.

Validation samples (`talkinghead.training.samples`): ``holdout`` clips are kept out of
training, and every ``sample_every`` steps the main process renders the first
``sample_seconds`` of the first held-out clip to ``OUT_DIR/samples/<stage>/step_N.mp4``
at the clip's frame rate, truth on the left, the model on the right: the autoencoder's
reconstruction, or for the LDM a lip-synced video from the clip's audio windows and
crops through the inference's own progressive `DiffTalkGenerator` (``sample_steps``
DDIM steps, the EMA weights, noise from ``seed``). The held-out clips' names are stored
in the checkpoints next to the training config; a resumed run keeps them.

At scale: both stages run on `accelerate` (`talkinghead.training.distributed`), one
process per GPU and node under ``accelerate launch``, mixed precision from its config
unless ``mixed_precision`` is given. ``batch_size`` is per process: step s trains on the
global batch `batch_at(s, n, batch_size x processes)`, rank r on its r-th slice, so the
data a step sees depends on the step alone. Each rank writes its random state (its noise
generator, torch's RNG) to ``OUT_DIR/state_<stage>/rank_state_<rank>.pt`` beside the
checkpoint, so resuming is exact on every rank. Every ``log_every`` steps the means of
the losses (over the steps and the ranks) are printed and appended to
``OUT_DIR/log_<stage>/train_log.jsonl`` and TensorBoard (`talkinghead.training.loss_log`).

Both stages write into OUT_DIR (``autoencoder.pt``, ``ldm.pt``, ``difftalk.json``,
``log_<stage>/``, ``state_<stage>/``; the format is `talkinghead.methods.difftalk.checkpoint`'s),
so after both OUT_DIR is a checkpoint directory for ``talkinghead generate --method difftalk``.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkinghead.audio.ctc import neighbour_windows
from talkinghead.diffusion import DiffusionSchedule
from talkinghead.diffusion.latent_inpainting import difftalk_schedule
from talkinghead.errors import CheckpointError, TalkingHeadError
from talkinghead.methods.difftalk.checkpoint import (
    AUTOENCODER_FILE,
    LDM_FILE,
    DiffTalkModels,
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
from talkinghead.methods.difftalk.generation import (
    DiffTalkConfig,
    DiffTalkGenerator,
    SourceFaces,
)
from talkinghead.models.difftalk_autoencoder import (
    DiffTalkAutoencoder,
    DiffTalkAutoencoderConfig,
    autoencoder_preset,
)
from talkinghead.models.difftalk_conditions import DiffTalkConditionConfig
from talkinghead.models.difftalk_unet import DiffTalkLDM, DiffTalkLDMConfig, unet_preset
from talkinghead.models.vqgan_losses import VQGANLoss, VQGANLossConfig, load_lpips
from talkinghead.training.config_checks import check_train_fields
from talkinghead.training.distributed import (
    build_accelerator_for_device,
    end_training,
    load_rank_state,
    save_rank_state,
)
from talkinghead.training.ema import EMA
from talkinghead.training.loss_log import LossLog
from talkinghead.training.samples import (
    DEFAULT_SAMPLE_SECONDS,
    DEFAULT_SAMPLE_STEPS,
    PeriodicSamples,
    Render,
    choose_holdout,
    resolve_sample_every,
    side_by_side,
    write_sample_video,
)
from talkinghead.training.stage_output import continue_existing

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
    device: str = "auto"  # auto: accelerate's (each launched rank's GPU, else CPU)
    mixed_precision: str | None = None  # None: accelerate's (launcher / config), else no
    log_every: int = 50
    save_every: int = 2_000
    cache_frames: bool = False
    # taming's VQLPIPSWithDiscriminator weights (CompVis vq-f4: disc_weight 0.75, codebook 1.0)
    perceptual_weight: float = 1.0  # only with LPIPS weights (perceptual_dir)
    disc_weight: float = 0.75  # 0: no discriminator
    disc_start: int = 10_000
    resume: bool = False
    overwrite: bool = False
    sample_every: int | None = None  # None: 0 (off) for the tiny presets, else 5000
    holdout: int | None = None  # clips kept out; None: 1 when sampling and >= 2 clips
    sample_seconds: float = DEFAULT_SAMPLE_SECONDS

    def __post_init__(self) -> None:
        check_train_fields(self)


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
    device: str = "auto"
    mixed_precision: str | None = None
    log_every: int = 50
    save_every: int = 5_000
    cache_latents: bool | None = None  # None: when the dataset has <= 20k frames
    unet_overrides: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    overwrite: bool = False
    sample_every: int | None = None  # None: 0 (off) for the tiny preset, else 5000
    holdout: int | None = None  # clips kept out; None: 1 when sampling and >= 2 clips
    sample_seconds: float = DEFAULT_SAMPLE_SECONDS
    sample_steps: int = DEFAULT_SAMPLE_STEPS  # DDIM steps of a sample

    def __post_init__(self) -> None:
        check_train_fields(self)


@dataclass
class TrainResult:
    checkpoint: Path
    losses: list[float]
    steps: int
    holdout: list[str] = field(default_factory=list)  # clips kept out of training
    samples: list[Path] = field(default_factory=list)  # validation samples written


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
    if not continue_existing(path, kind, resume=resume, overwrite=overwrite):
        return None
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


def _restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    # Checkpoints from before the per-rank state files kept rank 0's RNG here.
    torch.set_rng_state(state["torch"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _accelerator(cfg: Any):
    try:
        return build_accelerator_for_device(cfg.device, cfg.mixed_precision)
    except ValueError as e:
        raise TalkingHeadError(str(e)) from None


def rank_slice(step: int, n: int, batch_size: int, seed: int, rank: int, world: int):
    """(epoch, indices) rank `rank` of `world` trains on at `step`: its slice of the global
    batch of ``batch_size x world`` (`batch_at`), the same whatever was run before."""
    epoch, idx = batch_at(step, n, batch_size * world, seed)
    return epoch, idx[rank * batch_size : (rank + 1) * batch_size]


def _noise_seed(seed: int, rank: int) -> int:
    return seed + 10_000 * rank  # rank 0 draws what a single process draws


def _state_dir(out_dir: Path, stage: str) -> Path:
    return out_dir / f"state_{stage}"


def _resume_rng(
    out_dir: Path, stage: str, resumed: dict, accelerator, generator: torch.Generator | None
) -> None:
    """Each rank's random state at the checkpoint's step (rank files, else the old field)."""
    state_dir = _state_dir(out_dir, stage)
    step = int(resumed["step"])
    rank = accelerator.process_index
    if (state_dir / f"rank_state_{rank}.pt").is_file():
        gens = {"noise": generator} if generator is not None else None
        saved = load_rank_state(state_dir, rank, gens)
        if int(saved.get("step", -1)) != step:
            raise CheckpointError(
                f"{state_dir}: random state of step {saved.get('step')}, checkpoint at step "
                f"{step}; resume is not exact (use --overwrite to start again)"
            )
        if int(saved.get("world", 1)) != accelerator.num_processes:
            raise TalkingHeadError(
                f"{state_dir}: saved by {saved.get('world')} processes; resume with as many "
                f"(this run has {accelerator.num_processes})"
            )
    elif accelerator.num_processes == 1 and "rng" in resumed["train_state"]:
        _restore_rng(resumed["train_state"]["rng"], generator)
    else:
        raise CheckpointError(f"{state_dir}: no random state for rank {rank} to resume from")


def _loss_log(out_dir: Path, stage: str, cfg: Any, accelerator, resumed: bool) -> LossLog:
    log_dir = out_dir / f"log_{stage}"
    if accelerator.is_main_process and not resumed:
        (log_dir / "train_log.jsonl").unlink(missing_ok=True)  # a fresh run starts a fresh log

    def echo(line: str) -> None:
        log.info("%s %s", stage, line)

    return LossLog(
        log_dir, every=cfg.log_every, enabled=accelerator.is_main_process, echo=echo,
        total_steps=cfg.steps, console_keys=None,
    )  # fmt: skip


def _mean_over_ranks(accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(t, "mean").tolist(), strict=True))


def _average_gradients(accelerator, module: torch.nn.Module) -> None:
    # The discriminator is called several times per step outside DDP: average its grads.
    if accelerator.num_processes == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            p.grad.copy_(accelerator.reduce(p.grad, "mean"))


# ---------------------------------------------------------------------------- samples


def _hold_out(data: DiffTalkDataset, cfg: Any, resumed: dict | None) -> tuple[Any, list]:
    """(config with its sampling settings resolved, the held-out clips), taken out of `data`;
    a resumed run keeps the clips its checkpoint was trained without."""
    every = resolve_sample_every(cfg.sample_every, cfg.preset)
    recorded = None if resumed is None else list(resumed.get("holdout_clips", []))
    names = [c.name for c in data.clips]
    chosen = choose_holdout(
        names, cfg.holdout, sampling=every > 0, seed=cfg.seed, recorded=recorded
    )
    held = data.hold_out(chosen)
    return replace(cfg, sample_every=every, holdout=len(held)), held


def _samples(
    out_dir: Path, stage: str, cfg: Any, data: DiffTalkDataset, held: list, accelerator,
    resumed: bool, make_render: Callable[[Any], Render],
) -> PeriodicSamples:  # fmt: skip
    """The stage's samples, from the first held-out clip (a training clip if none is)."""
    render = None
    if cfg.sample_every:
        if not held and accelerator.is_main_process:
            log.warning("no clip is held out: the validation samples show a training clip")
        render = make_render(held[0] if held else data.clips[0])
    samples = PeriodicSamples(out_dir, render, every=cfg.sample_every, subdir=stage)
    if accelerator.is_main_process and not resumed:
        samples.reset()
    return samples


def _sample_crops(clip, seconds: float) -> np.ndarray:
    """The clip's first `seconds` of crops [n, R, R, 3] (at least one frame)."""
    n = max(1, min(clip.num_frames, round(seconds * clip.fps)))
    return np.stack([DiffTalkDataset.clip_frame(clip, i) for i in range(n)])


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    x = (images.detach().float().clamp(-1, 1) + 1) * 127.5
    return x.round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _autoencoder_render(model: DiffTalkAutoencoder, seconds: float, device):
    def make(clip) -> Render:
        def render(step: int, path: Path) -> None:
            crops = _sample_crops(clip, seconds)
            batches = []
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    for i in range(0, len(crops), 16):
                        x = torch.stack([to_tensor_image(c) for c in crops[i : i + 16]])
                        batches.append(_to_uint8(model(x.to(device))[0]))
            finally:
                model.train(was_training)
            rec = np.concatenate(batches)
            write_sample_video(path, map(side_by_side, crops, rec), clip.fps)

        return render

    return make


def _ldm_render(
    ldm: DiffTalkLDM, ema: EMA | None, ae: DiffTalkAutoencoder, resolution: int,
    settings: dict[str, Any], cfg: LdmTrainConfig, device, out_dir: Path,
):  # fmt: skip
    def make(clip) -> Render:
        def render(step: int, path: Path) -> None:
            crops = _sample_crops(clip, cfg.sample_seconds)
            n = len(crops)
            # The crops are the frames: identity crop transforms, nothing to track.
            source = SourceFaces(
                list(crops), crops, clip.landmarks[:n], np.tile(np.eye(3), (n, 1, 1)),
                fps=clip.fps, is_image=False,
            )  # fmt: skip
            windows = neighbour_windows(clip.audio, cfg.smooth_radius)[:n]
            weights = ema.averaged(ldm) if ema is not None else ldm
            was_training = weights.training
            weights.eval()
            try:
                models = DiffTalkModels(ae, weights, resolution, settings, out_dir)
                config = DiffTalkConfig(steps=cfg.sample_steps)
                generator = DiffTalkGenerator(models, config, device)
                frames = generator.frames_from_windows(source, windows, seed=cfg.seed)
                pairs = zip(crops, frames, strict=True)
                write_sample_video(path, (side_by_side(c, r.frame) for c, r in pairs), clip.fps)
            finally:
                weights.train(was_training)

        return render

    return make


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
    cfg, held = _hold_out(data, cfg, resumed)
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
    accelerator = _accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(cfg.seed)
    device = accelerator.device
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
        _resume_rng(out_dir, "autoencoder", resumed, accelerator, None)
        first = int(resumed["step"]) + 1
    raw_model = model
    model, opt = accelerator.prepare(model, opt)
    last_layer = raw_model.vq.decoder.conv_out.weight  # the adaptive GAN weight's reference
    logger = _loss_log(out_dir, "autoencoder", cfg, accelerator, resumed is not None)
    losses: list[float] = []
    holdout = [c.name for c in held]
    extra = {"train": asdict(cfg), "data": data.manifest_settings(), "holdout_clips": holdout}
    samples = _samples(
        out_dir, "autoencoder", cfg, data, held, accelerator, resumed is not None,
        _autoencoder_render(raw_model, cfg.sample_seconds, device),
    )  # fmt: skip

    def save(step: int) -> None:
        accelerator.wait_for_everyone()
        save_rank_state(
            _state_dir(out_dir, "autoencoder"), rank, extra={"step": step, "world": world}
        )
        if accelerator.is_main_process:
            train_state = {
                "opt": opt.state_dict(),
                "opt_d": opt_d.state_dict(),
                "discriminator": criterion.discriminator.state_dict(),
            }
            save_component(
                path, "autoencoder", raw_model, ae_cfg.to_dict(), step=step,
                train_state=train_state, **extra,
            )  # fmt: skip
        accelerator.wait_for_everyone()

    try:
        for step in range(first, cfg.steps + 1):
            _, idx = rank_slice(step, len(data), cfg.batch_size, cfg.seed, rank, world)
            images = torch.stack([to_tensor_image(data.frame(*data.index[i])) for i in idx]).to(
                device
            )
            recon, vq_loss = model(images)
            recon, vq_loss = recon.float(), vq_loss.float()
            # taming counts the GAN's start in optimiser steps from 0
            loss, logs = criterion.generator_loss(images, recon, vq_loss, step - 1, last_layer)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            if criterion.gan_active(step - 1):
                d_loss = criterion.discriminator_loss(images, recon)
                opt_d.zero_grad(set_to_none=True)
                accelerator.backward(d_loss)
                _average_gradients(accelerator, criterion.discriminator)
                opt_d.step()
                logs["d"] = d_loss.item()
            values = _mean_over_ranks(accelerator, {"loss": logs.pop("total"), **logs})
            if not math.isfinite(values["loss"]):
                raise TalkingHeadError(f"the loss diverged at step {step}")
            losses.append(values["loss"])
            logger.add(step, values, samples=len(idx) * world)
            if progress and accelerator.is_main_process:
                progress("autoencoder", step, cfg.steps)
            if step % cfg.save_every == 0 or step == cfg.steps:
                save(step)
            samples.maybe_on_main(step, accelerator)
    finally:
        logger.close()
    model = opt = None  # the DDP wrapper goes before the process group
    end_training(accelerator)
    return TrainResult(path, losses, cfg.steps, holdout, samples.written)


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


class LdmObjective(torch.nn.Module):
    """||eps - M(z_t, t, C)||^2 as one module, so DDP sees the conditions and the UNet in one
    forward (`DiffTalkLDM.context` is a method, not part of its forward)."""

    def __init__(self, ldm: DiffTalkLDM, schedule: DiffusionSchedule) -> None:
        super().__init__()
        self.ldm, self.schedule = ldm, schedule

    def forward(
        self, batch: dict[str, torch.Tensor], t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        noisy = self.schedule.q_sample(batch["z"], t, noise)
        context = self.ldm.context(batch["audio"], batch["landmarks"])
        pred = self.ldm(noisy, t, batch["masked"], batch["reference"], context)
        return torch.nn.functional.mse_loss(pred.float(), noise)


def draw_noise(
    z: torch.Tensor, n_timestep: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, eps) for a batch of latents, drawn from `generator` (CPU) in a fixed order."""
    t = torch.randint(0, n_timestep, (z.shape[0],), generator=generator)
    noise = torch.randn(z.shape, generator=generator)
    return t.to(z.device), noise.to(z.device)


def ldm_loss(
    ldm: DiffTalkLDM,
    schedule: DiffusionSchedule,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
) -> torch.Tensor:
    """||eps - M(z_t, t, C)||^2 for one batch; t and eps drawn from `generator` (CPU)."""
    t, noise = draw_noise(batch["z"], schedule.n_timestep, generator)
    return LdmObjective(ldm, schedule)(batch, t, noise)


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
    accelerator = _accelerator(cfg)  # a bad --device fails before any model loads
    # On the CPU until the accelerator picks this rank's device.
    ae = load_autoencoder(ae_path, torch.device("cpu")).requires_grad_(False)
    data = DiffTalkDataset(
        data_dir,
        min_reference_gap=cfg.min_reference_gap,
        smooth_radius=cfg.smooth_radius,
        seed=cfg.seed,
    )
    cfg, held = _hold_out(data, cfg, resumed)
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
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    torch.manual_seed(cfg.seed)
    ldm = DiffTalkLDM(model_config).to(device).train()
    ema = EMA(ldm, cfg.ema_decay) if cfg.ema else None
    opt = torch.optim.AdamW(
        ldm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True
    )
    schedule = difftalk_schedule()
    cache = cfg.cache_latents if cfg.cache_latents is not None else len(data) <= 20_000
    ae = ae.to(device)
    source = _LatentSource(data, ae, device, cache)
    generator = torch.Generator().manual_seed(_noise_seed(cfg.seed, rank))
    first = 1
    if resumed is not None:
        state = resumed["train_state"]
        ldm.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if ema is not None:
            if "ema" not in state:
                raise CheckpointError(f"{path}: trained without EMA; resume with --no-ema")
            ema.load_state_dict(state["ema"])
        _resume_rng(out_dir, "ldm", resumed, accelerator, generator)
        first = int(resumed["step"]) + 1
    objective, opt = accelerator.prepare(LdmObjective(ldm, schedule), opt)
    logger = _loss_log(out_dir, "ldm", cfg, accelerator, resumed is not None)
    settings = data.manifest_settings()
    settings.update(smooth_radius=cfg.smooth_radius, min_reference_gap=cfg.min_reference_gap)
    losses: list[float] = []
    holdout = [c.name for c in held]
    samples = _samples(
        out_dir, "ldm", cfg, data, held, accelerator, resumed is not None,
        _ldm_render(ldm, ema, ae, data.resolution, settings, cfg, device, out_dir),
    )  # fmt: skip

    def save(step: int) -> None:
        accelerator.wait_for_everyone()
        save_rank_state(
            _state_dir(out_dir, "ldm"), rank, {"noise": generator},
            extra={"step": step, "world": world},
        )  # fmt: skip
        if accelerator.is_main_process:
            weights = ema.averaged(ldm) if ema is not None else ldm
            train_state = {"model": ldm.state_dict(), "opt": opt.state_dict()}
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
                holdout_clips=holdout,
            )
            write_manifest(out_dir, data.resolution, settings)
        accelerator.wait_for_everyone()

    try:
        for step in range(first, cfg.steps + 1):
            epoch, idx = rank_slice(step, len(data), cfg.batch_size, cfg.seed, rank, world)
            batch = source.batch(idx, epoch)
            t, noise = draw_noise(batch["z"], schedule.n_timestep, generator)
            loss = objective(batch, t, noise)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if cfg.grad_clip and cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(ldm.parameters(), cfg.grad_clip)
            opt.step()
            if ema is not None:
                ema.update(ldm)
            value = _mean_over_ranks(accelerator, {"loss": loss.item()})["loss"]
            if not math.isfinite(value):
                raise TalkingHeadError(f"the loss diverged at step {step}")
            losses.append(value)
            logger.add(step, {"loss": value}, samples=len(idx) * world)
            if progress and accelerator.is_main_process:
                progress("ldm", step, cfg.steps)
            if step % cfg.save_every == 0 or step == cfg.steps:
                save(step)
            samples.maybe_on_main(step, accelerator)
    finally:
        logger.close()
    if accelerator.is_main_process and ae_path.parent.resolve() != out_dir.resolve():
        # difftalk.json names autoencoder.pt beside it: keep the directory self-contained.
        shutil.copyfile(ae_path, out_dir / AUTOENCODER_FILE)
    accelerator.wait_for_everyone()
    objective = opt = None  # the DDP wrapper goes before the process group
    end_training(accelerator)
    return TrainResult(path, losses, cfg.steps, holdout, samples.written)


__all__ = [
    "EMA",
    "STAGES",
    "AutoencoderTrainConfig",
    "LdmObjective",
    "LdmTrainConfig",
    "TrainResult",
    "batch_at",
    "draw_noise",
    "ldm_loss",
    "rank_slice",
    "start_state",
    "train_autoencoder",
    "train_ldm",
]
