"""DiT-Head training: stage 1 (two VQGANs) and stage 2 (the diffusion transformer).

Stage ``vq`` trains the full-face and the masked-face VQGAN on a prepared dataset
(`talkinghead.methods.dithead.data.prepare_dataset`) with the reconstruction,
codebook, perceptual (when LPIPS weights are given) and PatchGAN losses. Stage
``dit`` freezes both encoders and trains the DiT to predict the noise added to
the full-face latent, conditioned on the masked-face latent, the latent of a
reference frame (>= 60 frames away) and the 11-frame wav2vec2 window, with the
ADM linear schedule and a constant learning rate.

Every ``log_every`` steps the mean losses since the last line are printed, appended to
``out_dir/log_<stage>/train_log.jsonl`` (``log_vq-full``, ``log_vq-masked``, ``log_dit``)
and given to TensorBoard (``out_dir/log_<stage>/logs``): `talkinghead.training.loss_log`.

At scale both stages run on `accelerate` (`talkinghead.training.distributed`): one
process per GPU and node under ``accelerate launch`` (``batch_size`` is per process),
mixed precision from accelerate's config unless ``mixed_precision`` is given. Rank r
draws its batches from its own generators (seeded ``seed + 10000 r``; rank 0 is a single
process's run), and at every checkpoint each rank writes them and torch's RNG to
``out_dir/state_<stage>/rank_state_<r>.pt``, so a resumed run continues exactly on
every rank.

Checkpoints land in the output directory, which is then the ``--checkpoints``
folder of generation; their format is `talkinghead.methods.dithead.checkpoint`. A stage
whose checkpoint exists is refused unless ``resume`` (continue it) or ``overwrite``
(start again) is set (`talkinghead.training.stage_output`).

Validation samples (`talkinghead.training.samples`): ``holdout`` clips are kept out of
training, and every ``sample_every`` steps the main process renders the first
``sample_seconds`` of the first held-out clip to ``OUT_DIR/samples/<stage>/step_N.mp4``,
truth on the left, the model on the right: the VQGAN's reconstruction of its (masked)
crops, or for the DiT a lip-synced video from the clip's audio features and masked
crops through the inference's own `DiTHeadGenerator` (evolving, ``sample_steps`` DDIM
steps, the EMA weights, the reference the clip's last frame, noise from ``seed``). The
held-out clips' names and the training config are stored in each checkpoint; a resumed
run keeps the clips its checkpoint held out.
The DiT checkpoint's ``latent_scale`` is one over the standard deviation of the
full-face latents, measured when training starts (latent diffusion's "scale by
std"), so the diffusion sees unit-variance latents whatever the VQGAN.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkinghead.diffusion import DiffusionSchedule
from talkinghead.errors import TalkingHeadError
from talkinghead.methods.dithead.checkpoint import (
    DIT_FILE,
    VQ_FILES,
    load_vq_pair,
    read_checkpoint,
    save_checkpoint,
)
from talkinghead.methods.dithead.config import DataSettings, check_audio_dim
from talkinghead.methods.dithead.data import Clip, PreparedDataset, SampleDrawer, load_prepared
from talkinghead.methods.dithead.features import (
    apply_mask,
    audio_windows,
    from_tensor_image,
    lower_face_mask,
    to_tensor_image,
)
from talkinghead.methods.dithead.generation import DiTHeadGenerator, DiTHeadModels, SourceFace
from talkinghead.models.dithead_dit import DiTConfig, DiTHead
from talkinghead.models.dithead_vqgan import VQGANConfig, VQModel
from talkinghead.models.vqgan_losses import VQGANLoss, VQGANLossConfig, load_lpips
from talkinghead.timebase import FPS
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

LPIPS_DIRNAME = "lpips"
# Progress callback: (stage name, items done, total or None).
Progress = Callable[[str, int, int | None], None]


# --------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What a training run did: checkpoint(s), loss history, a fixed-batch evaluation."""

    checkpoints: list[Path]
    history: list[dict[str, float]] = field(default_factory=list)
    initial_loss: float = math.nan  # evaluation loss on a fixed batch, before training
    final_loss: float = math.nan  # ... and after
    seconds: float = 0.0
    holdout: list[str] = field(default_factory=list)  # clips kept out of training
    samples: list[Path] = field(default_factory=list)  # validation samples written


def _accelerator(config: Any):
    try:
        return build_accelerator_for_device(config.device, config.mixed_precision)
    except ValueError as e:
        raise TalkingHeadError(str(e)) from None


def _rank_seed(seed: int, rank: int) -> int:
    return seed + 10_000 * rank  # rank 0 draws what a single process draws


def _state_dir(out_dir: Path, stage: str) -> Path:
    return Path(out_dir) / f"state_{stage}"


def _save_rank(
    out_dir: Path, stage: str, accelerator, drawer: SampleDrawer, step: int,
    generators: dict[str, torch.Generator] | None = None,
) -> None:  # fmt: skip
    extra = {"step": step, "world": accelerator.num_processes,
             "drawer": drawer.rng.bit_generator.state}  # fmt: skip
    save_rank_state(_state_dir(out_dir, stage), accelerator.process_index, generators, extra)


def _resume_rank(
    out_dir: Path, stage: str, accelerator, drawer: SampleDrawer, step: int,
    generators: dict[str, torch.Generator] | None = None,
) -> None:  # fmt: skip
    """This rank's generators at the checkpoint's `step` (a checkpoint from before the
    per-rank files continues, with a warning, from fresh random streams)."""
    state_dir = _state_dir(out_dir, stage)
    rank = accelerator.process_index
    if not (state_dir / f"rank_state_{rank}.pt").is_file():
        if accelerator.num_processes > 1 or rank:
            raise TalkingHeadError(f"{state_dir}: no random state for rank {rank} to resume from")
        log.warning("%s: no saved random state; the resumed run is not bit-exact", state_dir)
        return
    saved = load_rank_state(state_dir, rank, generators)
    if int(saved.get("world", 1)) != accelerator.num_processes:
        raise TalkingHeadError(
            f"{state_dir}: saved by {saved.get('world')} processes; resume with as many "
            f"(this run has {accelerator.num_processes})"
        )
    if int(saved.get("step", -1)) != step:
        raise TalkingHeadError(
            f"{state_dir}: random state of step {saved.get('step')}, checkpoint at step {step}"
        )
    drawer.rng.bit_generator.state = saved["drawer"]


def _mean_over_ranks(accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    return dict(zip(keys, accelerator.reduce(t, "mean").tolist(), strict=True))


# --------------------------------------------------------------------------- samples


def _hold_out(
    data: PreparedDataset, config: Any, payload: dict[str, Any] | None
) -> tuple[Any, PreparedDataset, list[Clip]]:
    """(config with its sampling settings resolved, the training clips, the held-out ones);
    a resumed run (`payload`) keeps the clips its checkpoint was trained without."""
    every = resolve_sample_every(config.sample_every, config.preset)
    recorded = None if payload is None else list(payload.get("holdout_clips", []))
    names = [c.name for c in data.clips]
    held = set(
        choose_holdout(
            names, config.holdout, sampling=every > 0, seed=config.seed, recorded=recorded
        )
    )
    config = replace(config, sample_every=every, holdout=len(held))
    train = replace(data, clips=[c for c in data.clips if c.name not in held])
    return config, train, [c for c in data.clips if c.name in held]


def _sample_clip(train: PreparedDataset, held: list[Clip], every: int, main: bool) -> Clip | None:
    if not every:
        return None
    if not held:
        if main:
            log.warning("no clip is held out: the validation samples show a training clip")
        return train.clips[0]
    return held[0]


def _sample_length(clip: Clip, seconds: float) -> int:
    return max(1, min(len(clip), round(seconds * FPS)))


def _samples(
    out_dir: Path, stage: str, config: Any, render: Render | None, accelerator, resumed: bool
) -> PeriodicSamples:
    samples = PeriodicSamples(out_dir, render, every=config.sample_every, subdir=stage)
    if accelerator.is_main_process and not resumed:
        samples.reset()
    return samples


def _vq_render(
    vq: VQModel, clip: Clip, settings: DataSettings, masked: bool, seconds: float, device
) -> Render:
    """Sample: the clip's first frames (masked for the masked VQGAN) | their reconstruction."""

    def render(step: int, path: Path) -> None:
        n = _sample_length(clip, seconds)
        crops = np.stack([np.asarray(clip.frames[i]) for i in range(n)])
        if masked:
            size = settings.crop.size
            crops = np.stack(
                [apply_mask(c, lower_face_mask(clip.landmarks[i], size, settings.mask))
                 for i, c in enumerate(crops)]
            )  # fmt: skip
        was_training = vq.training
        vq.eval()
        try:
            with torch.no_grad():
                rec = np.concatenate(
                    [from_tensor_image(vq(to_tensor_image(crops[i : i + 16]).to(device))[0])
                     for i in range(0, n, 16)]
                )  # fmt: skip
        finally:
            vq.train(was_training)
        write_sample_video(path, map(side_by_side, crops, rec), FPS)

    return render


def _dit_render(
    dit: DiTHead,
    ema: EMA | None,
    encoder: LatentEncoder,
    clip: Clip,
    settings: DataSettings,
    config: DiTTrainConfig,
    device,
    out_dir: Path,
) -> Render:
    """Sample: the clip's first frames | the DiT's lip sync of them from the clip's audio
    features, by the inference's evolving generator with the EMA weights."""

    def render(step: int, path: Path) -> None:
        n = _sample_length(clip, config.sample_seconds)
        size = settings.crop.size
        # The sample's frames, then the first reference: the clip's last frame, the one
        # farthest from the first (training draws references >= min_ref_distance away).
        indices = [*range(n), len(clip) - 1] if len(clip) > n else list(range(n))
        faces = []
        for i in indices:
            crop = np.asarray(clip.frames[i])
            mask = lower_face_mask(clip.landmarks[i], size, settings.mask)
            faces.append(SourceFace(crop, crop, mask, np.eye(3)))
        windows = audio_windows(clip.audio, settings.audio.window)[:n]
        weights = ema.averaged(dit) if ema is not None else dit
        was_training = weights.training
        weights.eval()
        try:
            models = DiTHeadModels(
                encoder.full, encoder.masked, weights, settings, encoder.scale,
                config.n_timestep, out_dir,
            )  # fmt: skip
            generator = DiTHeadGenerator(models, steps=config.sample_steps, device=str(device))
            frames = generator.frames(
                faces, windows, generator=torch.Generator().manual_seed(config.seed),
                reference=len(faces) - 1,
            )  # fmt: skip
            pairs = zip(faces[:n], frames, strict=True)
            write_sample_video(path, (side_by_side(f.crop, out) for f, out in pairs), FPS)
        finally:
            weights.train(was_training)

    return render


# --------------------------------------------------------------------------- stage 1


@dataclass(frozen=True)
class VQTrainConfig:
    preset: str = "paper"  # VQGANConfig preset: "paper" | "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # VQGANConfig overrides
    loss: VQGANLossConfig = field(default_factory=VQGANLossConfig)
    steps: int = 100_000
    batch_size: int = 8
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    seed: int = 0
    device: str = "auto"  # auto: accelerate's (each launched rank's GPU, else the CPU)
    mixed_precision: str | None = None  # None: accelerate's (launcher / config), else no
    augment: bool = True  # random mask shifts for the masked VQGAN
    save_every: int = 5000
    log_every: int = 100
    eval_batch: int = 8
    resume: bool = False
    overwrite: bool = False  # replace an existing checkpoint of the stage
    sample_every: int | None = None  # None: 0 (off) for the tiny preset, else 5000
    holdout: int | None = None  # clips kept out; None: 1 when sampling and >= 2 clips
    sample_seconds: float = DEFAULT_SAMPLE_SECONDS

    def __post_init__(self) -> None:
        check_train_fields(self, zero_is_off=("log_every", "save_every"))


def _vq_eval(vq: VQModel, images: torch.Tensor) -> float:
    with torch.no_grad():
        rec, _ = vq(images)
        return float((rec - images).abs().mean())


def train_vq(
    data_dir: Path,
    out_dir: Path,
    config: VQTrainConfig = VQTrainConfig(),
    *,
    which: str = "full",
    perceptual_dir: Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train one VQGAN (``which``: "full" or "masked"); writes ``out_dir/vq_<which>.pt``.

    The evaluation loss is the pixel L1 reconstruction error on a fixed batch.
    Without ``perceptual_dir`` (holding LPIPS weights, see `load_lpips`) the
    perceptual term is off (L1/L2-only mode).
    """
    if which not in VQ_FILES:
        raise TalkingHeadError(f"unknown VQGAN {which!r}; expected 'full' or 'masked'")
    out = Path(out_dir) / VQ_FILES[which]
    stage = f"vq-{which}"
    resuming = continue_existing(out, stage, resume=config.resume, overwrite=config.overwrite)
    start_time = time.monotonic()
    accelerator = _accelerator(config)  # a bad --device fails before the data loads
    rank, world = accelerator.process_index, accelerator.num_processes
    payload = read_checkpoint(out, "vq") if resuming else None
    config, data, held = _hold_out(load_prepared(data_dir), config, payload)
    device = accelerator.device
    torch.manual_seed(config.seed)
    overrides = {"resolution": data.size, **config.model}
    vq = VQModel(VQGANConfig.from_preset(config.preset, **overrides)).to(device)
    vq.latent_shape(data.size, data.size)  # fails early on sizes f does not divide
    perceptual = load_lpips(perceptual_dir).to(device) if perceptual_dir else None
    if perceptual is None:
        log.info("no LPIPS weights: training %s VQGAN with the pixel loss only", which)
    criterion = VQGANLoss(config.loss, perceptual).to(device)
    opt_g = torch.optim.Adam(vq.parameters(), lr=config.lr, betas=config.betas, foreach=True)
    opt_d = torch.optim.Adam(
        criterion.discriminator.parameters(), lr=config.lr, betas=config.betas, foreach=True
    )
    masked = which == "masked"
    drawer = SampleDrawer(data, seed=_rank_seed(config.seed, rank), augment=config.augment)
    step = 0
    if payload is not None:
        vq.load_state_dict(payload["state_dict"])
        state = payload.get("train_state") or {}
        if state:
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            criterion.discriminator.load_state_dict(state["discriminator"])
        step = int(payload.get("step", 0))
        _resume_rank(out_dir, stage, accelerator, drawer, step)
    raw_vq = vq
    vq, opt_g = accelerator.prepare(vq, opt_g)
    eval_images = (
        SampleDrawer(data, seed=config.seed + 1, augment=False)
        .images(config.eval_batch, masked)
        .to(device)
    )
    result = TrainResult(
        checkpoints=[out], initial_loss=_vq_eval(raw_vq, eval_images),
        holdout=[c.name for c in held],
    )  # fmt: skip
    clip = _sample_clip(data, held, config.sample_every, accelerator.is_main_process)
    render = None if clip is None else _vq_render(
        raw_vq, clip, data.settings, masked, config.sample_seconds, device
    )  # fmt: skip
    samples = _samples(Path(out_dir), stage, config, render, accelerator, payload is not None)

    def save(at: int) -> None:
        accelerator.wait_for_everyone()
        _save_rank(out_dir, stage, accelerator, drawer, at)
        if accelerator.is_main_process:
            train_state = {
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "discriminator": criterion.discriminator.state_dict(),
            }
            save_checkpoint(
                out, "vq", raw_vq, data=data.settings, step=at, which=which,
                train_state=train_state, train=asdict(config), holdout_clips=result.holdout,
            )  # fmt: skip
        accelerator.wait_for_everyone()

    loss_log = _loss_log(Path(out_dir), stage, config, accelerator)
    vq.train()
    criterion.train()
    if progress and accelerator.is_main_process:
        progress(stage, step, config.steps)
    while step < config.steps:
        x = drawer.images(config.batch_size, masked).to(device)
        rec, qloss = vq(x)
        rec = rec.float()
        loss, logs = criterion.generator_loss(x, rec, qloss.float(), step, raw_vq.last_layer)
        opt_g.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt_g.step()
        if criterion.gan_active(step):
            d_loss = criterion.discriminator_loss(x, rec)
            opt_d.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            if world > 1:  # called several times per step outside DDP: average by hand
                for p in criterion.discriminator.parameters():
                    if p.grad is not None:
                        p.grad.copy_(accelerator.reduce(p.grad, "mean"))
            opt_d.step()
            logs["d"] = d_loss.item()
        step += 1
        logs = _mean_over_ranks(accelerator, logs)
        result.history.append(logs)
        if loss_log is not None:
            loss_log.add(step, logs, samples=config.batch_size * world)
        if config.save_every and step % config.save_every == 0:
            save(step)
        samples.maybe_on_main(step, accelerator)
        if progress and accelerator.is_main_process:
            progress(stage, step, config.steps)
    if loss_log is not None:
        loss_log.close()
    vq.eval()
    save(step)
    result.samples = samples.written
    result.final_loss = _vq_eval(raw_vq, eval_images)
    result.seconds = time.monotonic() - start_time
    vq = opt_g = None  # the DDP wrapper goes before the process group
    end_training(accelerator)
    return result


def _loss_log(out_dir: Path, name: str, config: Any, accelerator) -> LossLog | None:
    if not config.log_every:
        return None

    def echo(line: str) -> None:
        log.info("%s %s", name, line)

    return LossLog(
        out_dir / f"log_{name}", every=config.log_every, echo=echo, total_steps=config.steps,
        console_keys=None, enabled=accelerator.is_main_process,
    )  # fmt: skip


# --------------------------------------------------------------------------- stage 2


@dataclass(frozen=True)
class DiTTrainConfig:
    preset: str = "dit-l/2"  # DiTConfig preset: "dit-l/2" (paper) | "dit-b/2" | "dit-s/2" | "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # DiTConfig overrides
    steps: int = 400_000
    batch_size: int = 32
    lr: float = 1e-4  # constant, as in DiT
    weight_decay: float = 0.0
    ema_decay: float = 0.9999  # 0 disables the EMA copy
    # min(decay, (1 + n) / (10 + n)) after n updates: without it a short run's average is
    # still almost the random initialisation ("eval loss 0.9976 -> 0.9976").
    ema_warmup: bool = True
    grad_clip: float | None = None
    n_timestep: int = 1000
    scale_by_std: bool = True
    seed: int = 0
    device: str = "auto"
    mixed_precision: str | None = None
    augment: bool = True
    save_every: int = 10_000
    log_every: int = 100
    eval_batch: int = 8
    resume: bool = False
    overwrite: bool = False  # replace an existing checkpoint of the stage
    sample_every: int | None = None  # None: 0 (off) for the tiny preset, else 5000
    holdout: int | None = None  # clips kept out; None: 1 when sampling and >= 2 clips
    sample_seconds: float = DEFAULT_SAMPLE_SECONDS
    sample_steps: int = DEFAULT_SAMPLE_STEPS  # DDIM steps of a sample

    def __post_init__(self) -> None:
        check_train_fields(self, zero_is_off=("log_every", "save_every"))


@dataclass
class _Latents:
    target: torch.Tensor
    masked: torch.Tensor
    reference: torch.Tensor
    audio: torch.Tensor


class LatentEncoder:
    """The two frozen VQGAN encoders: images -> scaled latents for the DiT."""

    def __init__(self, vq_full: VQModel, vq_masked: VQModel, scale: float = 1.0) -> None:
        self.full = vq_full.eval().requires_grad_(False)
        self.masked = vq_masked.eval().requires_grad_(False)
        self.scale = scale

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor], device: torch.device) -> _Latents:
        def enc(vq: VQModel, x: torch.Tensor) -> torch.Tensor:
            return vq.encode(x.to(device)).float() * self.scale

        # Target and reference share the full-face encoder: one pass for both.
        target, reference = enc(self.full, torch.cat([batch["target"], batch["reference"]])).chunk(
            2
        )
        return _Latents(
            target=target,
            masked=enc(self.masked, batch["masked"]),
            reference=reference,
            audio=batch["audio"].to(device).float(),
        )


def _dit_eval(
    dit: DiTHead, schedule: DiffusionSchedule, lat: _Latents, t: torch.Tensor, noise: torch.Tensor
) -> float:
    with torch.no_grad():
        return float(
            schedule.training_loss(
                lambda x, tt: dit(x, tt, lat.masked, lat.reference, lat.audio),
                lat.target,
                t=t,
                noise=noise,
            )
        )


def train_dit(
    data_dir: Path,
    out_dir: Path,
    config: DiTTrainConfig = DiTTrainConfig(),
    *,
    vq_dir: Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the DiT on frozen VQGAN latents; writes ``out_dir/dit.pt``.

    ``vq_dir`` holds ``vq_full.pt`` and ``vq_masked.pt`` (default: ``out_dir``). The
    evaluation loss is the epsilon MSE on a fixed batch with fixed timesteps and noise.
    """
    out_dir = Path(out_dir)
    out = out_dir / DIT_FILE
    resuming = continue_existing(out, "dit", resume=config.resume, overwrite=config.overwrite)
    start_time = time.monotonic()
    vq_dir = Path(vq_dir) if vq_dir is not None else out_dir
    accelerator = _accelerator(config)  # a bad --device fails before the models load
    rank, world = accelerator.process_index, accelerator.num_processes
    payload = read_checkpoint(out, "dit") if resuming else None
    config, data, held = _hold_out(load_prepared(data_dir), config, payload)
    device = accelerator.device
    torch.manual_seed(config.seed)
    vq_full, vq_masked, _ = load_vq_pair(vq_dir, device)
    channels, lh, _lw = vq_full.latent_shape(data.size, data.size)
    overrides = {
        "input_size": lh,
        "latent_channels": channels,
        "audio_dim": data.settings.audio.dim,
        **config.model,
    }
    dit_cfg = DiTConfig.from_preset(config.preset, **overrides)
    check_audio_dim(data.settings, dit_cfg.audio_dim)
    dit = DiTHead(dit_cfg).to(device)
    schedule = DiffusionSchedule.adm_linear(config.n_timestep)

    drawer = SampleDrawer(data, seed=_rank_seed(config.seed, rank), augment=config.augment)
    gen = torch.Generator().manual_seed(_rank_seed(config.seed, rank))
    encoder = LatentEncoder(vq_full, vq_masked)
    step, scale = 0, 1.0
    ema = EMA(dit, config.ema_decay, warmup=config.ema_warmup) if config.ema_decay > 0 else None
    opt = torch.optim.AdamW(
        dit.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True
    )
    if payload is not None:
        state = payload.get("train_state") or {}
        dit.load_state_dict(state.get("model", payload["state_dict"]))
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])  # the average and its update count
        elif ema is not None:  # a checkpoint from before the count was stored
            ema.load_average(payload["state_dict"])
        if "opt" in state:
            opt.load_state_dict(state["opt"])
        step = int(payload.get("step", 0))
        scale = float(payload.get("latent_scale", 1.0))
        _resume_rank(out_dir, "dit", accelerator, drawer, step, {"noise": gen})
    elif config.scale_by_std:
        probe = encoder(drawer.dit_batch(max(config.batch_size, 8)), device)
        # One scale for all ranks: the mean of their probes' variances.
        var = _mean_over_ranks(accelerator, {"var": float(probe.target.float().var())})["var"]
        scale = 1.0 / max(math.sqrt(var), 1e-6)
    encoder.scale = scale
    model, opt = accelerator.prepare(dit, opt)

    eval_drawer = SampleDrawer(data, seed=config.seed + 1, augment=False)
    eval_lat = encoder(eval_drawer.dit_batch(config.eval_batch), device)
    eval_gen = torch.Generator().manual_seed(config.seed + 1)
    eval_t = schedule.sample_timesteps(config.eval_batch, eval_gen).to(device)
    eval_noise = torch.randn(eval_lat.target.shape, generator=eval_gen).to(device)
    result = TrainResult(
        checkpoints=[out], initial_loss=_dit_eval(dit, schedule, eval_lat, eval_t, eval_noise),
        holdout=[c.name for c in held],
    )  # fmt: skip
    clip = _sample_clip(data, held, config.sample_every, accelerator.is_main_process)
    render = None if clip is None else _dit_render(
        dit, ema, encoder, clip, data.settings, config, device, out_dir
    )  # fmt: skip
    samples = _samples(out_dir, "dit", config, render, accelerator, payload is not None)

    def save(at: int) -> None:
        accelerator.wait_for_everyone()
        _save_rank(out_dir, "dit", accelerator, drawer, at, {"noise": gen})
        if accelerator.is_main_process:
            weights = ema.averaged_state_dict(dit) if ema is not None else dit.state_dict()
            train_state = {"model": dit.state_dict(), "opt": opt.state_dict()}
            if ema is not None:
                train_state["ema"] = ema.state_dict()
            save_checkpoint(
                out,
                "dit",
                dit,
                data=data.settings,
                step=at,
                state_dict=weights,
                latent_scale=scale,
                n_timestep=config.n_timestep,
                train_state=train_state,
                train=asdict(config),
                holdout_clips=result.holdout,
            )
        accelerator.wait_for_everyone()

    loss_log = _loss_log(out_dir, "dit", config, accelerator)
    model.train()
    if progress and accelerator.is_main_process:
        progress("dit", step, config.steps)
    while step < config.steps:
        lat = encoder(drawer.dit_batch(config.batch_size), device)
        loss = schedule.training_loss(
            lambda x, t, lat=lat: model(x, t, lat.masked, lat.reference, lat.audio),
            lat.target,
            generator=gen,
        )
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if config.grad_clip:
            accelerator.clip_grad_norm_(dit.parameters(), config.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(dit)
        step += 1
        logs = _mean_over_ranks(accelerator, {"loss": loss.item()})
        result.history.append(logs)
        if loss_log is not None:
            loss_log.add(step, logs, samples=config.batch_size * world)
        if config.save_every and step % config.save_every == 0:
            save(step)
        samples.maybe_on_main(step, accelerator)
        if progress and accelerator.is_main_process:
            progress("dit", step, config.steps)
    if loss_log is not None:
        loss_log.close()
    dit.eval()
    save(step)
    result.samples = samples.written
    final = ema.averaged(dit) if ema is not None else dit
    result.final_loss = _dit_eval(final, schedule, eval_lat, eval_t, eval_noise)
    result.seconds = time.monotonic() - start_time
    model = opt = None  # the DDP wrapper goes before the process group
    end_training(accelerator)
    return result


def with_overrides(config: Any, **changes: Any) -> Any:
    """A copy of a frozen train config with the non-None ``changes`` applied."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


__all__ = [
    "LPIPS_DIRNAME",
    "DiTTrainConfig",
    "LatentEncoder",
    "PreparedDataset",
    "TrainResult",
    "VQTrainConfig",
    "load_lpips",
    "train_dit",
    "train_vq",
    "with_overrides",
]
