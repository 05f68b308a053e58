"""`talkinghead train-dithead`: DiT-Head's two training stages."""

from __future__ import annotations

from pathlib import Path

import typer

from talkinghead.commands.common import transient_progress
from talkinghead.commands.logs import log_lines_through
from talkinghead.errors import TalkingHeadError

STAGES = ("vq", "dit")


def train_dithead(
    data_dir: Path = typer.Argument(
        ..., help="Dataset written by `prepare-data --method dithead`."
    ),
    out_dir: Path = typer.Argument(
        ..., help="Checkpoint folder (vq_full.pt, vq_masked.pt, dit.pt); generation reads it."
    ),
    stage: str = typer.Option(..., "--stage", help="vq: the two VQGANs; dit: the transformer."),
    preset: str = typer.Option(
        None,
        help="Model size: vq 'paper' (default) or 'tiny'; dit 'dit-l/2' (default, the paper's), "
        "'dit-b/2', 'dit-s/2' or 'tiny'.",
    ),
    which: str = typer.Option("both", help="vq stage: 'full', 'masked' or 'both'."),
    steps: int = typer.Option(None, help="Optimiser steps (per VQGAN for the vq stage)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Images per step."),
    lr: float = typer.Option(None, help="Learning rate (constant)."),
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
    seed: int = typer.Option(0, help="Seed of initialisation, sampling and noise."),
    vq_dir: Path = typer.Option(
        None, "--vq-dir", help="dit stage: folder of vq_full.pt / vq_masked.pt (default OUT_DIR)."
    ),
    perceptual: Path = typer.Option(
        None,
        help="vq stage: folder with LPIPS weights (vgg16.pth, vgg.pth); default OUT_DIR/lpips "
        "when present, else pixel loss only.",
    ),
    disc_start: int = typer.Option(
        None, "--disc-start", help="vq stage: steps before the GAN loss."
    ),
    ema_decay: float = typer.Option(None, "--ema-decay", help="dit stage: EMA decay (0: off)."),
    ema_warmup: bool = typer.Option(
        True,
        "--ema-warmup/--no-ema-warmup",
        help="dit stage: EMA decay min(decay, (1+n)/(10+n)) after n steps (off: the plain decay).",
    ),
    log_every: int = typer.Option(
        None,
        "--log-every",
        help="Print the mean losses and log them every N steps "
        "(default 100; 0: off): OUT_DIR/log_<stage>/train_log.jsonl and TensorBoard.",
    ),
    save_every: int = typer.Option(None, "--save-every", help="Checkpoint every N steps."),
    sample_every: int = typer.Option(
        None,
        "--sample-every",
        help="Render a validation sample of a held-out clip every N steps into "
        "OUT_DIR/samples/<stage>/ (0: off; default: off for the tiny preset, else 5000).",
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
        None, "--sample-steps", help="dit stage: DDIM steps of a sample (default 50)."
    ),
    resume: bool = typer.Option(False, help="Continue from the checkpoint in OUT_DIR."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the stage's checkpoint in OUT_DIR, starting again."
    ),
) -> None:
    """Train DiT-Head: `--stage vq` (full- and masked-face VQGANs), then `--stage dit`."""
    from talkinghead.validation import check_not_an_input

    # --vq-dir and --perceptual may be OUT_DIR (their default); the data may not.
    check_not_an_input(out_dir, {"DATA_DIR": data_dir}, output_is_folder=False)
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from talkinghead.methods.dithead.train import (
        LPIPS_DIRNAME,
        DiTTrainConfig,
        VQTrainConfig,
        train_dit,
        train_vq,
        with_overrides,
    )

    if stage not in STAGES:
        raise TalkingHeadError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if which not in ("full", "masked", "both"):
        raise TalkingHeadError(f"--which must be full, masked or both, not {which!r}")
    if log_every is not None and log_every < 0:
        raise TalkingHeadError(f"--log-every must be >= 0, not {log_every}")
    from talkinghead.training.samples import check_sample_options

    check_sample_options(sample_every, holdout, sample_seconds, sample_steps)
    from talkinghead.methods.dithead.checkpoint import DIT_FILE, VQ_FILES
    from talkinghead.training.stage_output import continue_existing

    # Every checkpoint the stage writes, before any training: `--which both` must not train
    # the full-face VQGAN and then refuse the masked one.
    outputs = {"dit": DIT_FILE} if stage == "dit" else {
        f"vq-{w}": VQ_FILES[w] for w in (("full", "masked") if which == "both" else (which,))
    }  # fmt: skip
    for name, file in outputs.items():
        continue_existing(out_dir / file, name, resume=resume, overwrite=overwrite)
    from talkinghead.training.distributed import MIXED_PRECISIONS, is_main_process

    if mixed_precision is not None and mixed_precision not in MIXED_PRECISIONS:
        raise TalkingHeadError(
            f"--mixed-precision must be one of {', '.join(MIXED_PRECISIONS)}, not {mixed_precision!r}"
        )
    main = is_main_process()  # one progress bar and summary under `accelerate launch`
    common = dict(
        steps=steps, batch_size=batch_size, lr=lr, save_every=save_every, log_every=log_every,
        mixed_precision=mixed_precision, overwrite=overwrite, sample_every=sample_every,
        holdout=holdout, sample_seconds=sample_seconds,
    )  # fmt: skip
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    # Summaries wait for the bar to close (a line echoed under a live bar lands inside it),
    # and a VQGAN that finished is still reported when the next one fails.
    finished: list[tuple[str, object]] = []
    try:
        with (
            transient_progress(*columns, TimeRemainingColumn(), main=main) as bar,
            log_lines_through(bar.console),
        ):
            tasks: dict[str, int] = {}

            def report(name: str, done: int, total: int | None) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done, total=total)

            if stage == "vq":
                cfg = with_overrides(
                    VQTrainConfig(
                        preset=preset or "paper", device=device, seed=seed, resume=resume
                    ),
                    **common,
                )
                if disc_start is not None:
                    cfg = replace(cfg, loss=replace(cfg.loss, disc_start=disc_start))
                lpips_dir = perceptual
                if lpips_dir is None and (out_dir / LPIPS_DIRNAME).is_dir():
                    lpips_dir = out_dir / LPIPS_DIRNAME
                for w in ("full", "masked") if which == "both" else (which,):
                    result = train_vq(
                        data_dir, out_dir, cfg, which=w, perceptual_dir=lpips_dir, progress=report
                    )
                    finished.append((f"vq-{w}", result))
            else:
                cfg = with_overrides(
                    DiTTrainConfig(
                        preset=preset or "dit-l/2", device=device, seed=seed, resume=resume
                    ),
                    ema_decay=ema_decay,
                    ema_warmup=ema_warmup,
                    sample_steps=sample_steps,
                    **common,
                )
                result = train_dit(data_dir, out_dir, cfg, vq_dir=vq_dir, progress=report)
                finished.append(("dit", result))
    finally:
        for name, result in finished:
            _summary(name, result, main)


def _summary(name: str, result, main: bool = True) -> None:
    if not main:
        return
    samples = (
        f"; {len(result.samples)} samples in {result.samples[0].parent}" if result.samples else ""
    )
    typer.echo(
        f"{name}: eval loss {result.initial_loss:.4g} -> {result.final_loss:.4g} "
        f"in {result.seconds:.0f}s; wrote {', '.join(str(p) for p in result.checkpoints)}"
        f"{samples}"
    )


def register(app: typer.Typer) -> None:
    app.command("train-dithead")(train_dithead)
