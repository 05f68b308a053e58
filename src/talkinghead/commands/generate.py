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
from talkinghead.errors import MediaError, TalkingHeadError

METHODS = ("ditto", "dithead", "difftalk")
# Other methods' generation entry points: generate_video(source, audio, output, *, checkpoints, ...).
METHOD_ENTRY_POINTS = {
    "dithead": "talkinghead.pipelines.dithead:generate_video",
    "difftalk": "talkinghead.pipelines.difftalk:generate_video",
}
EMOTION_HELP = (
    "Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise, Contempt (or 0-7; several: comma list)"
)


def _parse_emotion(text: str) -> Any:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    labels: list[Any] = [int(p) if p.isdigit() else p for p in parts]
    return labels[0] if len(labels) == 1 else labels


class _StageProgress:
    """Rich progress bars, one per pipeline stage, fed by the pipeline's callback."""

    def __init__(self, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:>9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=not enabled,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _StageProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


def _check_inputs(source: Path, audio: Path, output: str) -> None:
    for what, path in (("source", source), ("audio", audio)):
        if not path.is_file():
            raise MediaError(f"{path}: {what} file not found")
    if output != "-":
        parent = Path(output).expanduser().resolve().parent
        if not parent.is_dir():
            raise MediaError(f"{output}: the output directory {parent} does not exist")


def generate(
    source: Path = typer.Option(..., "--source", "-s", help="Portrait image or short video."),
    audio: Path = typer.Option(..., "--audio", "-a", help="Speech (wav, flac, mp3, m4a, ogg...)."),
    output: str = typer.Option(
        ..., "--output", "-o", help="Output .mp4, a directory ending in '/' (PNG frames), or '-'."
    ),
    method: str = typer.Option("ditto", help=f"Method: {', '.join(METHODS)}."),
    checkpoints: Path | None = typer.Option(
        None,
        "--checkpoints",
        help="Release checkpoints (ditto_pytorch/, ditto_cfg/). Default: the model hub's cache.",
    ),
    download: bool = typer.Option(
        True, "--download/--no-download", help="Fetch the release from the model hub if missing."
    ),
    hubert: str | None = typer.Option(
        None, help="transformers HuBERT id/path (or .onnx) if the release's HuBERT is absent."
    ),
    emotion: str = typer.Option("Neutral", help=EMOTION_HELP),
    steps: int | None = typer.Option(
        None, min=1, help="Diffusion (DDIM) steps (default: Ditto 50, DiT-Head 250, DiffTalk 200)."
    ),
    seed: int | None = typer.Option(None, help="Random seed (same seed, same video)."),
    delta_pitch: float = typer.Option(0.0, help="Head pitch offset, degrees."),
    delta_yaw: float = typer.Option(0.0, help="Head yaw offset, degrees."),
    delta_roll: float = typer.Option(0.0, help="Head roll offset, degrees."),
    alpha_pitch: float = typer.Option(1.0, help="Head pitch scale."),
    alpha_yaw: float = typer.Option(1.0, help="Head yaw scale."),
    alpha_roll: float = typer.Option(1.0, help="Head roll scale."),
    fade_in: int = typer.Option(0, min=0, help="Frames to fade in from the source's own motion."),
    fade_out: int = typer.Option(0, min=0, help="Frames to fade out to the source's own motion."),
    crop_scale: float = typer.Option(2.3, help="Face crop scale (larger: more around the face)."),
    crop_vy: float = typer.Option(-0.125, help="Face crop vertical offset."),
    max_size: int = typer.Option(1920, min=64, help="Longest side of the source, pixels."),
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
    batch_size: int = typer.Option(4, min=1, help="Frames per warp/decode batch."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse registered avatars."),
    resolution: int = typer.Option(256, help="DiffTalk: 256 or 512."),
    fps: int = typer.Option(25, help="DiT-Head: 25, or 50 with frame interpolation."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Make a talking-head video: SOURCE speaks AUDIO, written to OUTPUT."""
    if method not in METHODS:
        raise TalkingHeadError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    _check_inputs(source, audio, output)
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if method != "ditto":
        options = {"resolution": resolution} if method == "difftalk" else {"fps": fps}
        _generate_other(method, source, audio, output, checkpoints, seed, steps, device, **options)
        return

    from talkinghead.face import CropConfig
    from talkinghead.pipelines.ditto import DittoPipeline

    settings = {
        "emotion": _parse_emotion(emotion),
        "steps": 50 if steps is None else steps,
        "seed": seed,
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
        "device": device,
        "fp16": fp16,
        "batch_size": batch_size,
        "cache": cache,
    }
    start = time.perf_counter()
    pipe = DittoPipeline.from_pretrained(checkpoints, download=download, hubert=hubert, **settings)
    if blink is not None:
        pipe.config = pipe.config.replace(stitch=_blink_setting(pipe.config.stitch, blink))
    err_console.print(f"face backend: {pipe.face_backend}, device: {device}", highlight=False)
    with _StageProgress(enabled=not quiet) as progress:
        if stream:
            result = _run_stream(pipe, source, audio, output, progress)
        else:
            result = pipe.generate(source, audio, output, progress=progress)
    if result.num_faces > 1:
        err_console.print(
            f"note: {result.num_faces} faces found; the largest was used", highlight=False
        )
    elapsed = time.perf_counter() - start
    if output != "-":
        typer.echo(f"{result.output} ({result.num_frames} frames, {elapsed:.1f} s)")


def _blink_setting(stitch: Any, blink: bool) -> Any:
    """Blinks are a clip of eye expression offsets that the release ships in its config."""
    from dataclasses import replace

    if blink and stitch.delta_eye_arr is None:
        raise TalkingHeadError(
            "--blink needs a blink clip (delta_eye_arr), which comes with the release's "
            "ditto_cfg/v0.4_hubert_cfg_pytorch.pkl; none was found"
        )
    # 0: random open-eye gaps of 60-100 frames between blinks (the release's pipeline default).
    return replace(stitch, delta_eye_open_n=0 if blink else -1)


def _run_stream(pipe: Any, source: Path, audio: Path, output: str, progress: Any) -> Any:
    """The streaming pipeline fed from a file in 200 ms chunks, as a live client would."""
    import numpy as np

    from talkinghead.audio.hubert import num_frames
    from talkinghead.audio.io import load_audio
    from talkinghead.media.writer import open_writer
    from talkinghead.pipelines.ditto import GenerationResult, video_options

    pcm = load_audio(audio, 16000)
    total = num_frames(len(pcm))
    session = pipe.stream(source)
    writer = open_writer(
        output, fps=25, audio=(load_audio(audio, 48000), 48000), **video_options(output)
    )
    done = 0
    try:
        chunks = (pcm[i : i + 3200] for i in range(0, len(pcm), 3200))
        for frame in session.frames(chunks):
            writer.write(np.asarray(frame))
            done += 1
            progress("stream", done, total)
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    avatar = session.avatar
    return GenerationResult(path, done, avatar.frame_size, avatar.face_backend, avatar.num_faces)


def _generate_other(
    method: str,
    source: Path,
    audio: Path,
    output: str,
    checkpoints: Path | None,
    seed: int | None,
    steps: int | None,
    device: str,
    **options: Any,
) -> None:
    module_name, _, func = METHOD_ENTRY_POINTS[method].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise TalkingHeadError(f"the {method} method is not available in this version") from None
    if checkpoints is None:
        raise TalkingHeadError(f"--method {method} needs --checkpoints (a trained {method} model)")
    path = getattr(module, func)(
        source,
        audio,
        output,
        checkpoints=checkpoints,
        seed=seed,
        steps=steps,
        device=device,
        **options,
    )
    typer.echo(str(path))


def info(
    checkpoints: Path | None = typer.Option(None, "--checkpoints", help="Checkpoints to inspect."),
) -> None:
    """Show versions, devices and which checkpoints and face backends are available."""
    import numpy
    import torch

    from talkinghead import __version__
    from talkinghead.pipelines.checkpoints import ReleaseCheckpoints, resolve_checkpoints

    typer.echo(f"talkinghead {__version__}, python {sys.version.split()[0]}")
    typer.echo(f"torch {torch.__version__}, numpy {numpy.__version__}")
    for name in ("onnxruntime", "mediapipe", "av", "cv2", "transformers"):
        try:
            mod = importlib.import_module(name)
            typer.echo(f"{name} {getattr(mod, '__version__', '?')}")
        except ImportError:
            typer.echo(f"{name}: not installed")
    cuda = torch.cuda.is_available()
    typer.echo(f"cuda: {torch.cuda.get_device_name(0) if cuda else 'not available'}")
    typer.echo(f"threads: {torch.get_num_threads()} (cpu count {os.cpu_count()})")
    try:
        ckpt = resolve_checkpoints(checkpoints, download=False, strict=False)
    except TalkingHeadError as exc:
        typer.echo(f"checkpoints: none ({exc})")
        return
    assert isinstance(ckpt, ReleaseCheckpoints)
    typer.echo(f"checkpoints: {ckpt.root}")
    for kind, path in {**ckpt.models, **ckpt.aux_models, "config": ckpt.config}.items():
        typer.echo(f"  {kind:22} {'ok' if path.is_file() else 'missing'}  {path}")


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command()(info)
