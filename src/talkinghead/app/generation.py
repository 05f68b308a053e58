"""What the creator's app runs: the CLI's checks, then one shared Ditto pipeline.

The app is a front end like `talkinghead generate`: every request is checked with the
same validation (`talkinghead.validation`, `talkinghead.methods.ditto.validation`)
before any model is loaded, so bad input gets the CLI's one-line messages. Ditto's
pipeline is loaded on the first request and kept for the process; the other methods
(DiT-Head, DiffTalk: no public weights) run through the registry's ``generate`` entry
point with the model folder the app was started with.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talkinghead.errors import CheckpointError, SettingsError
from talkinghead.methods import METHODS, get_method

# (stage, done, total): the pipelines' progress callback.
Progress = Callable[[str, int, int | None], None]

EMOTIONS = ("Neutral", "Happy", "Sad", "Angry", "Surprise", "Fear", "Disgust", "Contempt")


@dataclass
class AppSettings:
    """How the app finds and runs its models (fixed for the process, as `serve`'s)."""

    checkpoints: Path | None = None  # None: the model hub's cache, as `generate`
    download: bool = True
    revision: str | None = None
    hubert: str | None = None
    device: str = "cpu"  # already resolved (`talkinghead.validation.resolve_device`)
    fp16: bool = False
    face_backend: str = "auto"
    batch_size: int = 4
    max_size: int = 1920
    # Trained models of the other methods: method name -> checkpoint folder.
    other_models: Mapping[str, Path] = field(default_factory=dict)
    output_dir: Path | None = None  # None: a temporary folder of the process


@dataclass
class Request:
    """One clip to make: the page's fields, in the CLI's units."""

    source: str | None  # a portrait image or a video file
    audio: str | None
    method: str = "ditto"
    emotion: str = "Neutral"
    delta_pitch: float = 0.0
    delta_yaw: float = 0.0
    delta_roll: float = 0.0
    alpha_pitch: float = 1.0
    alpha_yaw: float = 1.0
    alpha_roll: float = 1.0
    crop_scale: float = 2.3
    crop_vy: float = -0.125
    steps: int = 50
    seed: int | None = 0
    fade_in: int = 0
    fade_out: int = 0


def _whole(value: Any, name: str) -> int:
    """A slider or number box value as an int (gradio sends floats)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer():
        raise SettingsError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _emotion(text: Any) -> Any:
    """The CLI's reading of ``--emotion``: a label or 0-7, or a comma list of them."""
    if not isinstance(text, str):
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    labels: list[Any] = [int(p) if p.isdigit() else p for p in parts]
    return labels[0] if len(labels) == 1 else labels


class Generator:
    """Checks a `Request`, runs it, returns the mp4 written (temp file + rename)."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self._pipe: Any = None
        self._other_pipes: dict[str, Any] = {}  # method -> its pipeline, loaded on first use
        # One generation at a time: the pipeline and its face analyser's crop are shared.
        self._lock = threading.Lock()
        if settings.output_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="talkinghead-app-")
            self.output_dir = Path(self._tmp.name)
        else:
            self._tmp = None
            self.output_dir = Path(settings.output_dir)
            self.output_dir.mkdir(parents=True, exist_ok=True)

    @property
    def methods(self) -> list[str]:
        """Ditto, and the other methods the app was given models for."""
        return ["ditto", *(m for m in self.settings.other_models if m != "ditto")]

    def weights_status(self) -> str | None:
        """None when Ditto's weights are on disk; else what is missing and how to get them."""
        from talkinghead.methods.ditto.checkpoints import download_command
        from talkinghead.methods.ditto.validation import local_checkpoints

        s = self.settings
        local = local_checkpoints(s.checkpoints, revision=s.revision)
        where = s.checkpoints if s.checkpoints is not None else "the model hub's cache"
        get = download_command(s.checkpoints or "./checkpoints", s.revision)
        missing = None if local is None else local.missing(include_aux=False)
        missing = [p for p in (missing or []) if p != getattr(local, "config", None)]
        if local is not None and not missing:
            return None
        if s.checkpoints is None and s.download:
            return (
                "Ditto's weights are not in the model hub's cache yet: the first clip "
                "downloads them (about 2.3 GB)."
            )
        what = "not found" if local is None else f"{len(missing)} checkpoint file(s) missing"
        return (
            f"Ditto's weights are missing ({where}: {what}); get them with `{get}` and "
            "start the app with --checkpoints DIR"
        )

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def new_output(self) -> Path:
        return self.output_dir / f"talkinghead-{uuid.uuid4().hex[:12]}.mp4"

    def run(self, request: Request, progress: Progress | None = None) -> Path:
        """The clip of `request` as an mp4 in the app's output folder; raises `TalkingHeadError`."""
        method = get_method(request.method)
        if request.method not in self.methods:
            if method.generate is None:
                raise SettingsError(f"{request.method} does not make clips from speech")
            raise SettingsError(
                f"no {request.method} model: start the app with --model {request.method}=DIR "
                "(a trained model folder)"
            )
        if not request.source:
            raise SettingsError("no source: upload a portrait image or a short video")
        if not request.audio:
            raise SettingsError("no speech: upload an audio file or record from the microphone")
        output = self.new_output()
        with self._lock:
            if request.method == "ditto":
                return self._run_ditto(request, output, progress)
            return self._run_other(request, output, progress)

    # ------------------------------------------------------------------ Ditto

    def _ditto_settings(self, request: Request) -> dict[str, Any]:
        from talkinghead.face import CropConfig

        r = request
        seed = None if r.seed is None or r.seed == "" else _whole(r.seed, "seed")
        return {
            "emotion": _emotion(r.emotion),
            "delta_pitch": float(r.delta_pitch),
            "delta_yaw": float(r.delta_yaw),
            "delta_roll": float(r.delta_roll),
            "alpha_pitch": float(r.alpha_pitch),
            "alpha_yaw": float(r.alpha_yaw),
            "alpha_roll": float(r.alpha_roll),
            "fade_in": _whole(r.fade_in, "fade_in"),
            "fade_out": _whole(r.fade_out, "fade_out"),
            "crop": CropConfig(scale=float(r.crop_scale), vy_ratio=float(r.crop_vy)),
            "steps": _whole(r.steps, "steps"),
            "seed": seed,
        }

    def _run_ditto(self, request: Request, output: Path, progress: Progress | None) -> Path:
        from talkinghead import validation as check
        from talkinghead.methods.ditto import validation as ditto_check
        from talkinghead.methods.ditto.config import DittoConfig

        s = self.settings
        settings = self._ditto_settings(request)
        # The CLI's order: option values, output, source, audio, release settings, face.
        ditto_check.check_ditto_config(DittoConfig().replace(**settings, device=s.device))
        checked = check.check_inputs(request.source, request.audio, output, max_size=s.max_size)
        analyzer = None
        if self._pipe is None:
            status = self.weights_status()
            if status is not None and not (s.checkpoints is None and s.download):
                raise CheckpointError(status)
            local = ditto_check.local_checkpoints(s.checkpoints, revision=s.revision)
            final = s.checkpoints is not None or not s.download
            ditto_check.check_release_settings(settings, local, final=final)
            face = ditto_check.face_check_analyzer(s.face_backend, local, settings["crop"])
            analyzer = face.analyzer
            try:
                check.check_face(checked.frame, analyzer, Path(request.source).name)
            except BaseException:
                _close(analyzer)
                raise
            if not face.same_as_generation:
                _close(analyzer)
                analyzer = None
            self._pipe = self._load_ditto(analyzer)
        pipe = self._pipe
        face_analyzer = pipe.models.registrar.face_analyzer
        # The crop is the face analyser's (and part of the avatar cache's key): set per clip.
        face_analyzer.crop_config = settings["crop"]
        if analyzer is None:
            check.check_face(checked.frame, face_analyzer, Path(request.source).name)
        result = pipe.generate(request.source, request.audio, output, progress=progress, **settings)
        return Path(result.output)

    def _load_ditto(self, face_analyzer: Any) -> Any:
        from talkinghead.methods.ditto.pipeline import DittoPipeline

        s = self.settings
        return DittoPipeline.from_pretrained(
            s.checkpoints,
            download=s.download,
            revision=s.revision,
            hubert=s.hubert,
            face_analyzer=face_analyzer,
            device=s.device,
            fp16=s.fp16,
            batch_size=s.batch_size,
            max_size=s.max_size,
            face_backend=s.face_backend,
        )

    # ------------------------------------------------------------------ DiT-Head, DiffTalk

    def _run_other(self, request: Request, output: Path, progress: Progress | None) -> Path:
        from talkinghead import validation as check
        from talkinghead.face import thread_face_analyzer

        s = self.settings
        steps = _whole(request.steps, "steps")
        seed = None if request.seed is None or request.seed == "" else _whole(request.seed, "seed")
        check.check_steps(steps)
        check.check_seed(seed)
        checked = check.check_inputs(request.source, request.audio, output, max_size=s.max_size)
        # Both methods find faces with mediapipe; its graph is built once per worker thread.
        analyzer = thread_face_analyzer("mediapipe")
        check.check_face(checked.frame, analyzer, Path(request.source).name)
        method = METHODS[request.method]
        checkpoints = s.other_models[request.method]
        if method.pipeline is None:  # no pipeline class: the one-video entry point
            result = method.entry_point("generate")(
                request.source,
                request.audio,
                str(output),
                checkpoints=checkpoints,
                seed=seed,
                steps=steps,
                device=s.device,
                progress=progress,
            )
            return Path(getattr(result, "output", result))
        pipe = self._other_pipes.get(request.method)
        if pipe is None:
            pipe = method.entry_point("pipeline").from_pretrained(checkpoints, device=s.device)
            self._other_pipes[request.method] = pipe
        result = pipe.generate(
            request.source, request.audio, str(output), seed=seed, steps=steps, progress=progress
        )
        return Path(result)


def _close(analyzer: Any) -> None:
    close = getattr(analyzer, "close", None)
    if close is not None:
        close()


def parse_models(items: list[str]) -> dict[str, Path]:
    """``--model dithead=DIR`` values as {method: folder}; one-line errors for bad ones."""
    models: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise SettingsError(f"--model {item!r}: use METHOD=DIR, e.g. dithead=./my-dithead")
        method = get_method(name.strip())
        if method.name == "ditto":
            raise SettingsError("--model ditto=DIR: Ditto's weights come with --checkpoints DIR")
        if method.generate is None:
            raise SettingsError(f"--model {item!r}: {method.name} does not make clips from speech")
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise CheckpointError(f"--model {item!r}: {path} is not a folder")
        models[method.name] = path
    return models


__all__ = ["EMOTIONS", "AppSettings", "Generator", "Request", "parse_models"]
