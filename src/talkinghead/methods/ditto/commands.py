"""`talkinghead train-motion`: train Ditto's motion model (LMDM) on prepared data.

Runs on one CPU or GPU as it is; for several GPUs or nodes start it through accelerate:
``accelerate launch -m talkinghead train-motion DATA_DIR OUT_DIR ...``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from talkinghead.commands.common import description_column, transient_progress
from talkinghead.errors import TalkingHeadError


def train_motion(
    data_dir: Path = typer.Argument(
        ..., help="Prepared data: the prepare-data folder or a data_list.json."
    ),
    out_dir: Path = typer.Argument(..., help="Run folder: states, checkpoints, logs (resumable)."),
    preset: str = typer.Option("release", "--preset", help="release (the v0.4 model) or tiny."),
    epochs: int | None = typer.Option(None, "--epochs", min=1),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1),
    lr: float | None = typer.Option(None, "--lr"),
    save_ckpt_freq: int | None = typer.Option(
        None, "--save-ckpt-freq", min=1, help="Epochs between saved checkpoints."
    ),
    save_every_steps: int | None = typer.Option(
        None, "--save-every-steps", min=0, help="Also save every N steps."
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", min=0, help="Stop after N steps."),
    use_sc: bool | None = typer.Option(None, "--use-sc/--no-use-sc"),
    use_last_frame: bool | None = typer.Option(None, "--use-last-frame/--no-use-last-frame"),
    use_last_frame_loss: bool | None = typer.Option(
        None, "--use-last-frame-loss/--no-use-last-frame-loss"
    ),
    use_emo: bool | None = typer.Option(None, "--use-emo/--no-use-emo"),
    use_eye_open: bool | None = typer.Option(None, "--use-eye-open/--no-use-eye-open"),
    use_eye_ball: bool | None = typer.Option(None, "--use-eye-ball/--no-use-eye-ball"),
    use_lmk: bool | None = typer.Option(
        None,
        "--use-lmk/--no-use-lmk",
        help="Add a random frame's 478x3 MediaPipe landmarks to the condition (+1434; data "
        "from prepare-data --landmarks). generate cannot use such a model.",
    ),
    use_cond_end: bool | None = typer.Option(
        None,
        "--use-cond-end/--no-use-cond-end",
        help="Also load each window's clip-end frame, as the release does (no network input "
        "takes it there or here).",
    ),
    use_reg_loss: bool | None = typer.Option(
        None,
        "--use-reg-loss/--no-use-reg-loss",
        help="Add 1e-4 x mean |prediction| per motion part but the scale (the release's).",
    ),
    audio_feat_dim: int | None = typer.Option(
        None, "--audio-feat-dim", help="Condition size (0: from the data)."
    ),
    motion_feat_dim: int | None = typer.Option(None, "--motion-feat-dim"),
    seq_frames: int | None = typer.Option(None, "--seq-frames", min=2),
    data_preload: bool | None = typer.Option(
        None, "--data-preload/--no-data-preload", help="Hold all data in memory."
    ),
    data_preload_path: Path | None = typer.Option(
        None, "--data-preload-path", help="Preload cache (default DATA_DIR/data_preload.npz)."
    ),
    num_workers: int | None = typer.Option(None, "--num-workers", min=0),
    mixed_precision: str | None = typer.Option(None, "--mixed-precision", help="no, fp16 or bf16."),
    grad_clip: float | None = typer.Option(None, "--grad-clip", help="Max gradient norm (0: off)."),
    ema_decay: float | None = typer.Option(None, "--ema-decay", help="0 disables the EMA."),
    cond_drop_prob: float | None = typer.Option(None, "--cond-drop-prob"),
    seed: int | None = typer.Option(None, "--seed"),
    init_checkpoint: Path | None = typer.Option(
        None, "--init-checkpoint", help="Start from these LMDM weights (fine-tuning)."
    ),
    tensorboard: bool | None = typer.Option(None, "--tensorboard/--no-tensorboard"),
    optimizer: str | None = typer.Option(
        None, "--optimizer", help="adamw, or adan (the release's; pytorch-optimizer)."
    ),
    mtn_mean_var_npy: Path | None = typer.Option(
        None, "--mtn-mean-var-npy", help="[2, 265] mean/variance to normalise the motion by."
    ),
    dim_ws_npy: Path | None = typer.Option(
        None, "--dim-ws-npy", help="[265] per-dimension loss weights."
    ),
    part_weight: list[str] = typer.Option(
        [], "--part-weight", help="PART=W loss weight (scale pitch yaw roll t exp); repeatable."
    ),
    ema_warmup: bool | None = typer.Option(None, "--ema-warmup/--no-ema-warmup"),
    log_every: int | None = typer.Option(
        None, "--log-every", min=1, help="Steps between printed/logged loss lines."
    ),
    max_open_files: int | None = typer.Option(
        None, "--max-open-files", min=1, help="Memory-mapped arrays open at once."
    ),
    sample_every: int | None = typer.Option(
        None,
        "--sample-every",
        min=0,
        help="Sample motion for a held-out video every N steps into OUT_DIR/samples "
        "(0: never; default 5000, off for the tiny preset).",
    ),
    holdout: int | None = typer.Option(
        None,
        "--holdout",
        min=0,
        help="Videos kept out of training for the samples (default 1 when sampling and the "
        "data has 2 or more; a resume keeps its own).",
    ),
    sample_seconds: float | None = typer.Option(
        None, "--sample-seconds", min=0.04, help="Seconds from a video's start per sample (2)."
    ),
    sample_steps: int | None = typer.Option(
        None, "--sample-steps", min=1, help="DDIM steps of a sample (50)."
    ),
    sample_renderer: Path | None = typer.Option(
        None,
        "--sample-renderer",
        help="A Ditto release folder (as generate's --checkpoints): each sample is also "
        "rendered as OUT_DIR/samples/step_N.mp4 by generate with the EMA weights.",
    ),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue a run in OUT_DIR."),
    install_to: Path | None = typer.Option(
        None,
        "--install-to",
        help="Afterwards, put the result into this checkpoints root for `generate`.",
    ),
) -> None:
    """Train the motion diffusion model (MotionDiT) on data from `prepare-data`."""
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    from talkinghead.methods.ditto.train import PRESETS, install_checkpoint
    from talkinghead.methods.ditto.train import train_motion as run

    if preset not in PRESETS:
        raise TalkingHeadError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if not data_dir.exists():
        raise TalkingHeadError(f"{data_dir}: data not found (run `talkinghead prepare-data`)")
    from talkinghead.validation import check_not_an_input

    inputs = {
        "DATA_DIR": data_dir,
        "--init-checkpoint": init_checkpoint,
        "--sample-renderer": sample_renderer,
    }
    for flag, path in (("--mtn-mean-var-npy", mtn_mean_var_npy), ("--dim-ws-npy", dim_ws_npy)):
        if path is not None and not path.is_file():
            raise TalkingHeadError(f"{flag} {path}: file not found")
    part_weights = _parse_part_weights(part_weight)
    check_not_an_input(out_dir, inputs, output_is_folder=False)  # the run's files land in OUT_DIR
    given: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "save_ckpt_freq": save_ckpt_freq,
        "save_every_steps": save_every_steps,
        "max_steps": max_steps,
        "use_sc": use_sc,
        "use_last_frame": use_last_frame,
        "use_last_frame_loss": use_last_frame_loss,
        "use_emo": use_emo,
        "use_eye_open": use_eye_open,
        "use_eye_ball": use_eye_ball,
        "use_lmk": use_lmk,
        "use_cond_end": use_cond_end,
        "use_reg_loss": use_reg_loss,
        "motion_feat_dim": motion_feat_dim,
        "seq_frames": seq_frames,
        "data_preload": data_preload,
        "data_preload_path": None if data_preload_path is None else str(data_preload_path),
        "num_workers": num_workers,
        "mixed_precision": mixed_precision,
        "grad_clip": grad_clip,
        "ema_decay": ema_decay,
        "cond_drop_prob": cond_drop_prob,
        "seed": seed,
        "init_checkpoint": None if init_checkpoint is None else str(init_checkpoint),
        "tensorboard": tensorboard,
        "optimizer": optimizer,
        "mtn_mean_var_npy": None if mtn_mean_var_npy is None else str(mtn_mean_var_npy),
        "dim_ws_npy": None if dim_ws_npy is None else str(dim_ws_npy),
        "part_weights": part_weights or None,
        "ema_warmup": ema_warmup,
        "log_every": log_every,
        "max_open_files": max_open_files,
        "sample_every": sample_every,
        "holdout": holdout,
        "sample_seconds": sample_seconds,
        "sample_steps": sample_steps,
        "sample_renderer": None if sample_renderer is None else str(sample_renderer),
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    if audio_feat_dim is not None:
        overrides["audio_feat_dim"] = audio_feat_dim or None
    try:
        config = replace(PRESETS[preset], **overrides)
    except ValueError as exc:  # the config's own checks (loss type, precision...)
        raise TalkingHeadError(str(exc)) from None

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    columns = (
        description_column(),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    from talkinghead.training.distributed import is_main_process

    main = is_main_process()  # one bar, not one per `accelerate launch` process
    with transient_progress(*columns, main=main) as bar:
        task = bar.add_task("training", total=None)

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, description=f"loss {loss:.4f}")

        result = run(
            data_dir, out_dir, config, resume=resume, progress=progress, echo=bar.console.print
        )
    if not result.is_main_process:  # the other processes of `accelerate launch` stay quiet
        return
    if result.start_step:
        typer.echo(f"resumed at step {result.start_step}")
    epochs = f"{result.epoch} full epoch{'' if result.epoch == 1 else 's'}"  # --max-steps may end one early
    typer.echo(f"trained to step {result.step} ({epochs}) in {out_dir}")
    if result.holdout:
        typer.echo(f"held out of training: {', '.join(result.holdout)}")
    if result.samples:
        typer.echo(f"validation samples: {len(result.samples)} in {result.samples[-1].parent}")
    if result.checkpoint is not None:
        typer.echo(f"checkpoint: {result.checkpoint}")
        if result.sidecar is not None:
            typer.echo(f"network config (sidecar): {result.sidecar}")
        if install_to is not None:
            target = install_checkpoint(out_dir, install_to)
            typer.echo(f"installed as {target}")


def _parse_part_weights(items: list[str]) -> dict[str, float]:
    """``["exp=2", "t=0.5"]`` -> {"exp": 2.0, "t": 0.5}, with a one-line error otherwise."""
    from talkinghead.methods.ditto.motion.format import MOTION_LAYOUT

    parts = [f.name for f in MOTION_LAYOUT.fields]
    weights: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or name not in parts or weight is None:
            raise TalkingHeadError(
                f"--part-weight {item!r}: expected PART=WEIGHT with PART one of {', '.join(parts)}"
            )
        weights[name] = weight
    return weights


def register(app: typer.Typer) -> None:
    app.command("train-motion")(train_motion)
