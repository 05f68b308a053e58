"""`talkinghead generate` (the main job) and `talkinghead info`."""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

from talkinghead.commands.common import err_console
from talkinghead.commands.logs import third_party_logs
from talkinghead.errors import SettingsError, TalkingHeadError
from talkinghead.methods import METHODS, get_method

EMOTION_HELP = (
    "Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise, Contempt (or 0-7; several: comma list)"
)


def _parse_emotion(text: str) -> Any:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    labels: list[Any] = [int(p) if p.isdigit() else p for p in parts]
    return labels[0] if len(labels) == 1 else labels


# What each stage counts; the rate column shows frames per second for the frame stages.
STAGE_UNITS = {
    "register": "frames",
    "features": "frames",
    "motion": "windows",
    "render": "frames",
    "stream": "frames",
    # DiT-Head and DiffTalk
    "faces": "frames",
    "denoise": "frames",
    "source": "frames",
    "frames": "frames",
}
RATE_STAGES = ("render", "stream", "denoise", "frames")


def _rate_and_time(task: Any) -> str:
    """While running: frame rate (frame stages), elapsed<left, as tqdm; when done: elapsed."""
    elapsed = _clock(task.finished_time if task.finished else task.elapsed)
    if task.finished or task.total is None:
        return elapsed
    rate = f"{task.speed:5.1f} fps  " if task.description in RATE_STAGES and task.speed else ""
    left = _clock(task.time_remaining) if task.time_remaining is not None else "-:--:--"
    return f"{rate}{elapsed}<{left}"


def _clock(seconds: float | None) -> str:
    total = int(seconds or 0)
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


class _StageProgress:
    """Rich progress bars, one per pipeline stage, fed by the pipeline's callback.

    A bar appears with the stage's first report (render and motion report 0/N as
    they start) and shows its count, its unit, the frame rate and the time left.
    """

    def __init__(self, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        class RateAndTime(TextColumn):
            def render(self, task: Any) -> Any:
                from rich.text import Text

                return Text(_rate_and_time(task), style="progress.remaining")

        self.progress = Progress(
            TextColumn("{task.description:>9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            RateAndTime(""),
            console=err_console,
            disable=not enabled,
        )
        self.tasks: dict[str, Any] = {}
        self.started = False

    def __enter__(self) -> _StageProgress:
        # The display starts with the first report: what is printed while the models
        # load (the face backend line) stays above the bars.
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.progress.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.started:
            self.started = True
            self.progress.__enter__()
        if stage not in self.tasks:
            unit = STAGE_UNITS.get(stage, "")
            self.tasks[stage] = self.progress.add_task(stage, total=total, unit=unit)
        self.progress.update(self.tasks[stage], completed=done, total=total)


# The options only some methods read (the rest every method takes). One given to a method
# that would ignore it is refused: `--emotion Happy` must not pass silently with DiT-Head.
DITTO_ONLY = (
    "download", "revision", "hubert", "emotion", "delta_pitch", "delta_yaw", "delta_roll",
    "alpha_pitch", "alpha_yaw", "alpha_roll", "fade_in", "fade_out", "controls",
    "retargeting", "eye_open", "lip_open", "crop_scale", "crop_vy", "blink", "stream",
    "online", "face_backend", "fp16", "batch_size", "runtime", "cache",
)  # fmt: skip
OPTION_METHODS: dict[str, tuple[str, ...]] = {
    **{name: ("ditto",) for name in DITTO_ONLY},
    "resolution": ("difftalk",),
    "fps": ("dithead", "difftalk"),
}


def check_method_options(ctx: typer.Context, method: str) -> None:
    """Refuse an option given on the command line that `method` does not read."""
    for param in ctx.command.params:
        owners = OPTION_METHODS.get(param.name or "")
        if owners is None or method in owners:
            continue
        # By name: typer carries its own copy of click, whose ParameterSource is not click's.
        source = ctx.get_parameter_source(param.name or "")
        if getattr(source, "name", None) not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        flag = "/".join(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        raise SettingsError(
            f"{flag} is for --method {' or '.join(owners)}; --method {method} does not use "
            "it (leave it out)"
        )


def generate(
    ctx: typer.Context,
    source: Path = typer.Option(..., "--source", "-s", help="Portrait image or short video."),
    audio: Path = typer.Option(..., "--audio", "-a", help="Speech (wav, flac, mp3, m4a, ogg...)."),
    output: str = typer.Option(
        ..., "--output", "-o", help="Output .mp4, a directory ending in '/' (PNG frames), or '-'."
    ),
    method: str = typer.Option(
        "ditto", help=f"Method: {', '.join(n for n, m in METHODS.items() if m.generate)}."
    ),
    checkpoints: Path | None = typer.Option(
        None,
        "--checkpoints",
        help="Release checkpoints (ditto_pytorch/, ditto_cfg/). Default: the model hub's cache.",
    ),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Fetch the release from the model hub if missing."
    ),
    revision: str | None = typer.Option(
        None,
        "--revision",
        help="Model-hub branch, tag or commit of the release. Default: the pinned release commit.",
    ),
    hubert: str | None = typer.Option(
        None, help="transformers HuBERT id/path (or .onnx) if the release's HuBERT is absent."
    ),
    emotion: str = typer.Option("Neutral", help=EMOTION_HELP),
    steps: int | None = typer.Option(
        None, help="Diffusion (DDIM) steps (default: Ditto 50, DiT-Head 250, DiffTalk 200)."
    ),
    seed: int | None = typer.Option(None, help="Random seed (same seed, same video)."),
    delta_pitch: float = typer.Option(0.0, help="Head pitch offset, degrees."),
    delta_yaw: float = typer.Option(0.0, help="Head yaw offset, degrees."),
    delta_roll: float = typer.Option(0.0, help="Head roll offset, degrees."),
    alpha_pitch: float = typer.Option(1.0, help="Head pitch scale."),
    alpha_yaw: float = typer.Option(1.0, help="Head yaw scale."),
    alpha_roll: float = typer.Option(1.0, help="Head roll scale."),
    fade_in: int = typer.Option(0, help="Frames to fade in from the source's own motion."),
    fade_out: int = typer.Option(0, help="Frames to fade out to the source's own motion."),
    controls: Path | None = typer.Option(
        None,
        "--controls",
        help="Ditto: a control timeline, JSON or YAML (keyframed pose, expression, gaze, "
        "eyes, emotion, fades; or the release's ctrl_info). See docs/ditto.md.",
    ),
    retargeting: Path | None = typer.Option(
        None,
        "--retargeting",
        help="Ditto: LivePortrait's stitching_retargeting_module.pth, for --eye-open/--lip-open.",
    ),
    eye_open: float | None = typer.Option(
        None, "--eye-open", help="Ditto: eye-open slider, a close ratio (0 closed .. 0.4 wide)."
    ),
    lip_open: float | None = typer.Option(
        None, "--lip-open", help="Ditto: lip-open slider, a close ratio (0 closed .. 0.8 wide)."
    ),
    crop_scale: float = typer.Option(2.3, help="Face crop scale (larger: more around the face)."),
    crop_vy: float = typer.Option(-0.125, help="Face crop vertical offset."),
    max_size: int = typer.Option(1920, help="Longest side of the source, pixels (>= 64)."),
    blink: bool | None = typer.Option(
        None,
        "--blink/--no-blink",
        help="Insert blinks (needs the release config's blink clip). Default: as the config.",
    ),
    stream: bool = typer.Option(
        False, "--stream", help="Run the streaming pipeline (audio fed in chunks) instead."
    ),
    online: bool = typer.Option(
        False, "--online", help="Offline run with the streaming motion settings."
    ),
    face_backend: str = typer.Option("auto", help="auto, mediapipe or release."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1... (auto: cuda if available)."),
    fp16: bool = typer.Option(False, help="Half-precision rendering (CUDA)."),
    batch_size: int = typer.Option(4, help="Frames per warp/decode batch."),
    runtime: str = typer.Option(
        "auto",
        help="Ditto renderer runtime: auto (on CPU the decoder on onnxruntime, both networks "
        "in polyphase form), torch (the release's arithmetic exactly), compile, onnx or "
        "tensorrt (CUDA).",
    ),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse registered avatars."),
    resolution: int = typer.Option(256, help="DiffTalk: 256 or 512."),
    fps: int | None = typer.Option(
        None,
        help="DiT-Head: 50 (default, the paper's 2x frame interpolation) or 25. "
        "DiffTalk: 25, or 50 with the same interpolation (default: the source's rate).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Show log messages, including mediapipe's and TFLite's."
    ),
) -> None:
    """Make a talking-head video: SOURCE speaks AUDIO, written to OUTPUT."""
    ctx.with_resource(third_party_logs(verbose))
    from talkinghead import validation as check

    # Every option and input file is checked before any model is loaded or downloaded.
    chosen = get_method(method)  # an unknown method is refused first
    chosen.check_installed()  # then one whose packages (an extra) are not installed
    check_method_options(ctx, method)
    check.check_face_backend(face_backend)
    device = check.resolve_device(device)
    options: dict[str, Any]
    if method == "ditto":
        from talkinghead.face import CropConfig
        from talkinghead.methods.ditto import validation as ditto_check
        from talkinghead.methods.ditto.config import DittoConfig
        from talkinghead.methods.ditto.controls import load_controls

        steps = 50 if steps is None else steps  # the CLI's default wins over the release config's
        timeline = load_controls(controls) if controls is not None else None
        settings = {
            "emotion": _parse_emotion(emotion),
            "delta_pitch": delta_pitch,
            "delta_yaw": delta_yaw,
            "delta_roll": delta_roll,
            "alpha_pitch": alpha_pitch,
            "alpha_yaw": alpha_yaw,
            "alpha_roll": alpha_roll,
            "fade_in": fade_in,
            "fade_out": fade_out,
            "crop": CropConfig(scale=crop_scale, vy_ratio=crop_vy),
            "max_size": max_size,
            "online": online,
            "face_backend": face_backend,
            "fp16": fp16,
            "batch_size": batch_size,
            "runtime": runtime,
            "cache": cache,
            "blink": blink,
        }
        if timeline is not None:  # absent: the release config's ctrl_info, if any, applies
            settings["controls"] = timeline
        if retargeting is not None or eye_open is not None or lip_open is not None:
            settings.update(
                retargeting=retargeting, eye_open_retarget=eye_open, lip_open_retarget=lip_open
            )
        run_settings = {**settings, "steps": steps, "seed": seed, "device": device}
        ditto_check.check_ditto_config(DittoConfig().replace(**run_settings))
        checked = check.check_inputs(source, audio, output, max_size=max_size)
        local = ditto_check.local_checkpoints(checkpoints, revision=revision)
        # --blink needs the release config's blink clip: checkable now if the config is local.
        final = checkpoints is not None or not download  # no download can bring a config pkl
        ditto_check.check_release_settings(run_settings, local, final=final)
        # The face check runs the backend generation will run when the checkpoints are on disk.
        face_check = ditto_check.face_check_analyzer(face_backend, local, settings["crop"])
        analyzer = _check_face(face_check.analyzer, checked.frame, source)
        if not face_check.same_as_generation:
            _close(analyzer)
            analyzer = None

        def loaded(pipe: Any) -> None:
            err_console.print(
                f"face backend: {pipe.face_backend}, device: {device}", highlight=False
            )

        options = {
            **settings,
            "download": download,
            "revision": revision,
            "hubert": hubert,
            "face_analyzer": analyzer,
            "streaming": stream,
            "on_load": loaded,
        }
    else:
        from talkinghead.face import create_face_analyzer

        if method == "difftalk":
            options = {"resolution": resolution}
            if fps is not None:
                options["fps"] = fps
        else:
            options = {"fps": 50 if fps is None else fps}  # the paper's stage 3 by default
        _check_other_options(method, checkpoints, steps, seed, max_size, **options)
        options["max_size" if method == "difftalk" else "max_side"] = max_size
        if method == "difftalk" and options.get("fps") == 50:
            # DiffTalk generates at 25 fps; the other half of the frames are interpolated.
            options.update(fps=25, interpolation="auto")
        checked = check.check_inputs(source, audio, output, max_size=max_size)
        # Both methods find faces with mediapipe.
        _close(_check_face(create_face_analyzer("mediapipe"), checked.frame, source))
    start = time.perf_counter()
    # DiT-Head and DiffTalk report their stages too, but draw no bars (as before).
    with _StageProgress(enabled=not quiet) as progress:
        result = chosen.entry_point("generate")(
            source,
            audio,
            output,
            checkpoints=checkpoints,
            seed=seed,
            steps=steps,
            device=device,
            progress=progress,
            **options,
        )
    if not hasattr(result, "num_frames"):  # DiT-Head, DiffTalk: the written path
        typer.echo(str(result))
        return
    if result.num_faces > 1:
        err_console.print(
            f"note: {result.num_faces} faces found; the largest was used", highlight=False
        )
    elapsed = time.perf_counter() - start
    if output != "-":
        typer.echo(f"{result.output} ({result.num_frames} frames, {elapsed:.1f} s)")


def _check_other_options(
    method: str,
    checkpoints: Path | None,
    steps: int | None,
    seed: int | None,
    max_size: int,
    **options: Any,
) -> None:
    """DiT-Head's and DiffTalk's options, as far as they can be checked without their models."""
    from talkinghead.validation import check_max_size, check_seed, check_steps

    if checkpoints is None:
        raise SettingsError(f"--method {method} needs --checkpoints (a trained {method} model)")
    if steps is not None:
        check_steps(steps)
    check_seed(seed)
    check_max_size(max_size)
    allowed = {"resolution": (256, 512), "fps": (25, 50)}
    for name, value in options.items():
        if value not in allowed[name]:
            choices = " or ".join(map(str, allowed[name]))
            raise SettingsError(f"--{name} {value}: {method} supports {choices}")


def _check_face(analyzer: Any, frame: Any, source: Path) -> Any:
    """The face check's `analyzer`, closed if no face was found (its threads log on the way)."""
    from talkinghead.validation import check_face

    try:
        check_face(frame, analyzer, source)
    except BaseException:
        _close(analyzer)
        raise
    return analyzer


def _close(analyzer: Any) -> None:
    close = getattr(analyzer, "close", None)
    if close is not None:
        close()


def info(
    checkpoints: Path | None = typer.Option(None, "--checkpoints", help="Checkpoints to inspect."),
) -> None:
    """Show versions, devices, the methods that can run, and the checkpoints found."""
    import numpy
    import torch

    from talkinghead import __version__
    from talkinghead.face.mediapipe_backend import offline_backend_available
    from talkinghead.methods.ditto.checkpoints import ReleaseCheckpoints, resolve_checkpoints

    typer.echo(f"talkinghead {__version__}, python {sys.version.split()[0]}")
    typer.echo(f"torch {torch.__version__}, numpy {numpy.__version__}")
    for name in ("onnxruntime", "mediapipe", "av", "cv2", "transformers", "diffusers"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            typer.echo(f"{name}: not installed")
            continue
        note = ""
        if name == "mediapipe" and not offline_backend_available():
            note = " (tasks API only: the release's face models run, the offline backend not)"
        typer.echo(f"{name} {getattr(mod, '__version__', '?')}{note}")
    typer.echo(f"methods: {_methods_line()}")
    cuda = torch.cuda.is_available()
    typer.echo(f"cuda: {torch.cuda.get_device_name(0) if cuda else 'not available'}")
    typer.echo(f"threads: {torch.get_num_threads()} (cpu count {os.cpu_count()})")
    _echo_what_runs_where("cuda" if cuda else "cpu")
    try:
        ckpt = resolve_checkpoints(checkpoints, download=False, strict=False)
    except TalkingHeadError as exc:
        typer.echo(f"checkpoints: none ({exc})")
        return
    assert isinstance(ckpt, ReleaseCheckpoints)
    typer.echo(f"checkpoints: {ckpt.root}")
    for kind, path in {**ckpt.models, **ckpt.aux_models, "config": ckpt.config}.items():
        typer.echo(f"  {kind:22} {'ok' if path.is_file() else 'missing'}  {path}")
    if ckpt.models["lmdm"].is_file():
        typer.echo(f"motion model conditions: {_condition_blocks(ckpt)}")


def _condition_blocks(ckpt: Any) -> str:
    """The condition blocks generate builds for the checkpoints' motion model, in order."""
    from talkinghead.methods.ditto.motion.conditions import ConditionConfig
    from talkinghead.methods.ditto.validation import motion_conditions

    try:
        layout = ConditionConfig(**motion_conditions(ckpt))
    except TalkingHeadError as exc:  # a damaged config pkl or sidecar
        return f"unknown ({exc})"
    return " + ".join(name for name, _ in layout.blocks)


def _methods_line() -> str:
    """The methods that generate here, then each one whose packages are missing and why."""
    ready, lacking = [], []
    for name, m in METHODS.items():
        if m.generate is None:
            continue
        missing = m.missing_packages()
        if missing:
            lacking.append(f"{name} needs {' and '.join(missing)} (the {m.extra} extra)")
        else:
            ready.append(name)
    return "; ".join([", ".join(ready) or "none ready", *lacking])


def _echo_what_runs_where(device: str) -> None:
    """Where `--device auto` puts each part: networks, ONNX runtimes, encoder, HuBERT."""
    from talkinghead.export.runtime import (
        RENDER_NETWORKS,
        available_providers,
        resolve_runtime,
        uses_inference_forms,
    )
    from talkinghead.media.writer import hardware_encoder_works

    typer.echo(f"networks (torch): {device}")
    chosen = ", ".join(
        f"{kind.removesuffix('_network')} {resolve_runtime('auto', kind, device)}"
        for kind in RENDER_NETWORKS
    )
    forms = " (polyphase inference forms)" if uses_inference_forms("auto", device) else ""
    typer.echo(f"renderer runtime (--runtime auto): {chosen}{forms}")
    providers = available_providers()
    if providers:
        kinds = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider"}
        kinds["TensorRT"] = "TensorrtExecutionProvider"
        flags = ", ".join(f"{k} {'yes' if v in providers else 'no'}" for k, v in kinds.items())
        typer.echo(f"onnxruntime providers: {flags} ({', '.join(providers)})")
    else:
        typer.echo("onnxruntime providers: none (onnxruntime not installed)")
    nvenc = hardware_encoder_works("h264_nvenc")
    typer.echo(
        f"video encoder: {'h264_nvenc (NVENC)' if nvenc else 'libx264 (CPU; NVENC not available)'}"
    )
    if providers:
        from talkinghead.audio.hubert import onnx_providers

        hubert = onnx_providers(device)[0]
        note = (
            ""
            if device == "cpu" or hubert != "CPUExecutionProvider"
            else (" (install onnxruntime-gpu for CUDA: see the README's gpu install)")
        )
        typer.echo(f"hubert (release ONNX): onnxruntime {hubert}{note}")
    else:
        typer.echo(f"hubert: transformers on {device} (release ONNX needs onnxruntime)")


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(info)
