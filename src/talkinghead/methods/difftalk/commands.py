"""`talkinghead train-difftalk`: DiffTalk's two training stages (autoencoder, then ldm);
`talkinghead convert-difftalk`: CompVis-layout checkpoints into DiffTalk's layout."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from talkinghead.commands.common import (
    description_column,
    err_console,
    labelled,
    transient_progress,
)
from talkinghead.commands.logs import log_lines_through
from talkinghead.methods import METHODS


class Stage(StrEnum):
    autoencoder = "autoencoder"
    ldm = "ldm"


def train_difftalk(
    data_dir: Path = typer.Argument(..., help="Data prepared by `prepare-data --method difftalk`."),
    out_dir: Path = typer.Argument(..., help="Checkpoint directory (both stages write here)."),
    stage: Stage = typer.Option(..., "--stage", help="autoencoder (stage 1) or ldm (stage 2)."),
    preset: str = typer.Option(
        None,
        help="Network sizes: autoencoder f4 | f8 | tiny-f4 | tiny-f8 (default: f4 for 256 px "
        "data, f8 for 512); ldm release | tiny (default: release).",
    ),
    steps: int = typer.Option(None, help="Optimisation steps (default 50k / 100k)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size (default 4 / 8)."),
    lr: float = typer.Option(None, help="Learning rate (default 1e-4 / 6.4e-5)."),
    autoencoder: Path = typer.Option(
        None, help="ldm stage: the autoencoder checkpoint (default OUT_DIR/autoencoder.pt)."
    ),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="ldm stage: keep EMA weights."),
    save_every: int = typer.Option(None, "--save-every", help="Checkpoint every N steps."),
    log_every: int = typer.Option(
        None,
        "--log-every",
        help="Print the mean losses every N steps (default 50) and append them to "
        "OUT_DIR/log_<stage>/train_log.jsonl and TensorBoard.",
    ),
    perceptual: Path = typer.Option(
        None,
        help="autoencoder stage: folder with LPIPS weights (vgg16.pth, vgg.pth); default "
        "OUT_DIR/lpips when present, else no perceptual term.",
    ),
    disc_start: int = typer.Option(
        None, "--disc-start", help="autoencoder stage: steps before the PatchGAN loss (10000)."
    ),
    disc_weight: float = typer.Option(
        None, "--disc-weight", help="autoencoder stage: PatchGAN weight (0.75; 0: off)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the stage from its checkpoint in OUT_DIR, exactly."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the stage's checkpoint in OUT_DIR, starting again."
    ),
    sample_every: int = typer.Option(
        None,
        "--sample-every",
        help="Render a validation sample of a held-out clip every N steps into "
        "OUT_DIR/samples/<stage>/ (0: off; default: off for the tiny presets, else 5000).",
    ),
    holdout: int = typer.Option(
        None,
        "--holdout",
        help="Clips kept out of training for the samples (default: 1 when sampling with "
        ">= 2 clips, else 0; a resume keeps its checkpoint's).",
    ),
    sample_seconds: float = typer.Option(
        None, "--sample-seconds", help="Length of a sample (default 2 s, at most the clip)."
    ),
    sample_steps: int = typer.Option(
        None, "--sample-steps", help="ldm stage: DDIM steps of a sample (default 50)."
    ),
    seed: int = typer.Option(0, help="Seed of initialisation, batches and noise."),
    device: str = typer.Option(
        "auto",
        help="auto (each `accelerate launch` rank's GPU, else the CPU), cpu, cuda, cuda:1 "
        "(one process).",
    ),
    mixed_precision: str = typer.Option(
        None,
        "--mixed-precision",
        help="no | fp16 | bf16 (default: accelerate's config / `accelerate launch` flag, else no).",
    ),
) -> None:
    """Train DiffTalk: first --stage autoencoder, then --stage ldm, into the same OUT_DIR."""
    from talkinghead.validation import check_not_an_input

    inputs = {"DATA_DIR": data_dir, "--autoencoder": autoencoder}
    check_not_an_input(out_dir, inputs, output_is_folder=False)  # checkpoints land in OUT_DIR
    METHODS["difftalk"].check_installed()
    from talkinghead.errors import SettingsError

    if resume and overwrite:
        raise SettingsError("--resume and --overwrite exclude each other: choose one")
    counts = (
        ("--steps", steps), ("--batch-size", batch_size), ("--log-every", log_every),
        ("--save-every", save_every),
    )  # fmt: skip
    for name, value in counts:
        if value is not None and value < 1:
            raise SettingsError(f"{name} must be >= 1, not {value}")
    from talkinghead.training.samples import check_sample_options

    check_sample_options(sample_every, holdout, sample_seconds, sample_steps)
    from talkinghead.training.distributed import MIXED_PRECISIONS

    if mixed_precision is not None and mixed_precision not in MIXED_PRECISIONS:
        raise SettingsError(
            f"--mixed-precision must be one of {', '.join(MIXED_PRECISIONS)}, not {mixed_precision!r}"
        )

    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    from talkinghead.methods.difftalk.data import read_manifest
    from talkinghead.methods.difftalk.train import (
        AutoencoderTrainConfig,
        LdmTrainConfig,
        train_autoencoder,
        train_ldm,
    )

    options = {
        k: v
        for k, v in dict(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            save_every=save_every,
            log_every=log_every,
            seed=seed,
            device=device,
            mixed_precision=mixed_precision,
            resume=resume,
            overwrite=overwrite,
            sample_every=sample_every,
            holdout=holdout,
            sample_seconds=sample_seconds,
        ).items()
        if v is not None
    }
    if stage is Stage.autoencoder:
        if preset is None:
            resolution = int(read_manifest(data_dir)["resolution"])
            preset = "f8" if resolution >= 512 else "f4"
        ae_options = dict(disc_start=disc_start, disc_weight=disc_weight)
        options.update({k: v for k, v in ae_options.items() if v is not None})
        if perceptual is None and (out_dir / "lpips").is_dir():
            perceptual = out_dir / "lpips"
        cfg = AutoencoderTrainConfig(preset=preset, **options)
    else:
        if sample_steps is not None:
            options["sample_steps"] = sample_steps
        cfg = LdmTrainConfig(preset=preset or "release", ema=ema, **options)
    columns = (description_column(), BarColumn(), MofNCompleteColumn())
    from talkinghead.training.distributed import is_main_process

    main = is_main_process()  # one progress bar and summary under `accelerate launch`
    with (
        transient_progress(*columns, TimeRemainingColumn(), main=main) as bar,
        log_lines_through(bar.console),
    ):  # the loss lines, above the bar
        task = bar.add_task(f"training {stage.value}", total=None)

        def progress(_stage: str, done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        if stage is Stage.autoencoder:
            result = train_autoencoder(
                data_dir, out_dir, cfg, progress=progress, perceptual_dir=perceptual
            )
        else:
            result = train_ldm(data_dir, out_dir, cfg, autoencoder=autoencoder, progress=progress)
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    if main:
        samples = result.samples
        shown = f"; {len(samples)} samples in {samples[0].parent}" if samples else ""
        typer.echo(f"{stage.value}: {result.checkpoint} ({result.steps} steps{last}){shown}")


def convert_difftalk(
    checkpoint: Path = typer.Argument(
        ...,
        help="A CompVis-layout .ckpt: sstzal/DiffTalk's latent diffusion, or a VQ first "
        "stage (e.g. CompVis vq-f4).",
    ),
    out_dir: Path = typer.Argument(
        ...,
        help="Checkpoint directory to write (autoencoder.pt; ldm.pt and difftalk.json too "
        "for a latent-diffusion checkpoint).",
    ),
    autoencoder_preset: str = typer.Option(
        None,
        "--autoencoder-preset",
        help="The autoencoder the weights must fit: f4 | f8 | tiny-f4 | tiny-f8 (default: the "
        "sizes read from the checkpoint).",
    ),
    unet_preset: str = typer.Option(
        None,
        "--unet-preset",
        help="The UNet the weights must fit: release | tiny (default: read from the checkpoint).",
    ),
    head_channels: int = typer.Option(
        None,
        "--head-channels",
        help="Channels per attention head; not stored in the weights (default 32, the release's).",
    ),
    resolution: int = typer.Option(
        None,
        help="Image size of the model (default 64 x the first stage's downsampling: "
        "256 for f4, 512 for f8).",
    ),
    ema: bool = typer.Option(
        True, "--ema/--no-ema", help="The UNet's EMA weights (model_ema.*) when the file has them."
    ),
    audio_model: str = typer.Option(
        None,
        "--audio-model",
        help="CTC audio model recorded for generation (default: facebook/wav2vec2-base-960h "
        "when E_A reads its 32 features).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the checkpoint files already in OUT_DIR."
    ),
) -> None:
    """Convert a CompVis-layout checkpoint (DiffTalk release, VQ first stage) to DiffTalk's layout."""
    METHODS["difftalk"].check_installed()
    from talkinghead.methods.difftalk.convert import convert_compvis_checkpoint

    report = convert_compvis_checkpoint(
        checkpoint, out_dir, autoencoder=autoencoder_preset, unet=unet_preset,
        head_channels=head_channels, resolution=resolution, ema=ema, audio_model=audio_model,
        overwrite=overwrite,
    )  # fmt: skip
    for path in report.files:
        typer.echo(str(path))
    if report.kind == "ldm":
        typer.echo(f"UNet weights: {'EMA' if report.ema else 'raw (no EMA used)'}")
    if report.ignored:
        left = ", ".join(f"{k} ({n})" for k, n in report.ignored.items())
        err_console.print(f"left out of the checkpoint: {left}", highlight=False, soft_wrap=True)
    for note in report.notes:
        err_console.print(labelled("note:", "yellow", note), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """The registry's ``commands`` entry point: adds ``train-difftalk`` and
    ``convert-difftalk`` to `app`."""
    app.command("train-difftalk")(train_difftalk)
    app.command("convert-difftalk")(convert_difftalk)
