"""One batch worker: a loaded pipeline that runs job after job on one device.

A `JobWorker` lives in a worker process (local pool) or a Ray actor. It loads the
Ditto release once, when it starts, and keeps it for every Ditto job it runs; a job
with another crop gets a pipeline sharing the same networks with its own face
analyser (the crop is fixed when the analyser is built). A portrait is registered
once (through the avatar disk cache, which all workers share) and its avatar kept in
memory for the worker's next jobs with it. DiT-Head and DiffTalk jobs run on the
methods registry's ``pipeline`` class, loaded on a worker's first job with those
checkpoints and kept for its later ones (the last `OTHER_PIPELINES_KEPT`); a method
without one goes through its ``generate`` entry point. Each job is written by the
media writers (temp file + rename), so a job
that fails, or a worker that is killed, never leaves a partial output under its name.

A job's failure (a picture without a face, an unreadable file, any exception) is
returned as a `JobOutcome` with its reason; it never ends the worker.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talkinghead.batch.jobs import BatchJob
from talkinghead.training.prepare import error_message

# DiT-Head / DiffTalk pipelines a worker keeps loaded (least recently used go first):
# enough for a batch alternating between two models without holding many in memory.
OTHER_PIPELINES_KEPT = 2

log = logging.getLogger(__name__)

# (stage, done, total) as the pipelines report it.
StageProgress = Callable[[str, int, int | None], None]
# How many crop variants a worker keeps (each holds a face analyser).
MAX_CROP_PIPELINES = 4
# Portrait avatars a worker keeps in memory (one 512 px portrait's is about 10 MB).
MAX_AVATARS = 8
# Environment a worker takes from the batch's process (the avatar cache's place and size).
FORWARDED_ENV = ("TALKINGHEAD_CACHE", "TALKINGHEAD_CACHE_MAX_MB", "HF_HOME", "HF_HUB_CACHE")


@dataclass(frozen=True)
class WorkerSettings:
    """What every worker of a batch loads with (picklable: it travels to each worker).

    checkpoints: the Ditto release folder, resolved (and downloaded) by the batch before
                 any worker starts; None when the batch has no Ditto job to run
    ditto:       `DittoConfig` fields fixed per worker (face_backend, fp16, batch_size, cache)
    """

    checkpoints: str | None = None
    hubert: str | None = None
    ditto: Mapping[str, Any] = field(default_factory=dict)
    verbose: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    torch_threads: int | None = None

    @classmethod
    def forwarding_env(cls, **kwargs: Any) -> WorkerSettings:
        """Settings whose `env` carries this process's `FORWARDED_ENV` variables."""
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        return cls(env={**env, **kwargs.pop("env", {})}, **kwargs)


@dataclass
class JobOutcome:
    """What a worker made of a job: ``ok`` with the video's frames and size, or the reason."""

    key: str
    ok: bool
    reason: str | None = None
    frames: int | None = None
    size: tuple[int, int] | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    avatar_cached: bool | None = None  # whether registration was an avatar-cache hit


def quiet_logs(verbose: bool, *, silence_native: bool) -> None:
    """Keep a worker's third-party log lines off the terminal unless `verbose`.

    `silence_native`: also point descriptor 2 at /dev/null for the rest of the process
    (mediapipe and TFLite write there from native threads); a local worker process
    does, a Ray actor keeps its descriptor 2, which Ray writes to its log files.
    """
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return
    from talkinghead.commands.logs import NATIVE_LOG_ENV, THIRD_PARTY_LOGGERS

    for name, value in NATIVE_LOG_ENV.items():
        os.environ.setdefault(name, value)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if silence_native:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)


# The Ditto pipeline's stages that start a report phase, and that phase's name.
DITTO_PHASES = {"features": "motion", "render": "render", "stream": "stream"}


def stage_timings(
    start: float,
    stamps: Mapping[str, float],
    end: float,
    phases: Mapping[str, str] | None = DITTO_PHASES,
    first: str = "register",
) -> dict[str, float]:
    """Seconds per phase, from the first time each pipeline stage reported.

    A phase runs from its stage's first report to the next phase's; `first` names the one
    from `start` to there. ``phases`` maps the stages that start a phase to its name (None:
    every stage starts a phase of its own name). Ditto's: register: start -> speech
    features (audio decoding, registration or its cache hit); motion: features ->
    rendering; render: rendering and encoding -> end. A streamed job has one phase after
    registration, ``stream``.
    """
    marks = [(first, start)]
    for stage, t in stamps.items():
        phase = stage if phases is None else phases.get(stage)
        if phase is not None:
            marks.append((phase, t))
    marks.sort(key=lambda m: m[1])
    out = {}
    for (phase, t0), (_, t1) in zip(marks, [*marks[1:], ("end", end)], strict=True):
        out[phase] = round(t1 - t0, 4)
    out["total"] = round(end - start, 4)
    return out


class JobWorker:
    """Runs batch jobs on `device` with models loaded once; see the module's docstring."""

    def __init__(self, settings: WorkerSettings, device: str = "cpu", name: str = "worker") -> None:
        os.environ.update(settings.env)
        self.settings = settings
        self.device = device
        self.name = name
        self.load_seconds: float | None = None  # the Ditto release's; None without one
        self.pipe: Any = None
        self._crop_pipes: dict[Any, Any] = {}
        self._other_pipes: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._avatars: OrderedDict[str, Any] = OrderedDict()  # avatar_key -> Avatar
        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        if settings.checkpoints is not None:
            from talkinghead.methods.ditto.pipeline import DittoPipeline

            start = time.perf_counter()
            self.pipe = DittoPipeline.from_pretrained(
                settings.checkpoints,
                download=False,  # the batch resolved (and fetched) the release already
                hubert=settings.hubert,
                device=device,
                **settings.ditto,
            )
            self.load_seconds = time.perf_counter() - start

    # -- Ditto ---------------------------------------------------------------------------------

    def _pipeline_for(self, crop: Any) -> Any:
        """The pipeline whose face analyser makes `crop` (None: the worker's own)."""
        base = self.pipe
        if crop is None or crop == base.config.crop:
            return base
        if crop not in self._crop_pipes:
            import dataclasses

            from talkinghead.face import create_face_analyzer
            from talkinghead.methods.ditto.avatar import AvatarRegistrar
            from talkinghead.methods.ditto.checkpoints import ReleaseCheckpoints
            from talkinghead.methods.ditto.pipeline import DittoPipeline

            if len(self._crop_pipes) >= MAX_CROP_PIPELINES:
                oldest = next(iter(self._crop_pipes))
                _close_analyzer(self._crop_pipes.pop(oldest))
            reg = base.models.registrar
            aux_dir = ReleaseCheckpoints.from_root(self.settings.checkpoints).aux_models
            analyzer = create_face_analyzer(
                base.config.face_backend, aux_dir=aux_dir["hubert"].parent, crop=crop
            )
            registrar = AvatarRegistrar(
                analyzer,
                reg.motion_extractor,
                reg.appearance_extractor,
                device=reg.device,
                batch_size=reg.batch_size,
                smooth_k=reg.smooth_k,
                model_identity=reg.model_identity,
            )
            models = dataclasses.replace(base.models, registrar=registrar)
            self._crop_pipes[crop] = DittoPipeline(models, base.config.replace(crop=crop))
        return self._crop_pipes[crop]

    def _image_avatar(
        self, pipe: Any, job: BatchJob, cfg: Any, progress: StageProgress
    ) -> tuple[Any, bool | None]:
        """(the registered avatar, whether it was cached) for a portrait; (the path, None)
        for a video source, which the pipeline registers for each job's length.

        A portrait's avatar does not depend on the audio, so it is registered once with
        one frame: the worker keeps it in memory for the next jobs, and the disk cache
        entry is the same whatever the audio's length (the pipeline's own key counts the
        frames a video source needs, and so a portrait's too).
        """
        from talkinghead.media.source import source_media

        key = job.avatar_key
        if key in self._avatars:
            self._avatars.move_to_end(key)
            return self._avatars[key], True
        if not source_media(job.source, max_side=cfg.max_size, max_frames=1).is_image:
            return job.source, None
        avatar = pipe.register(job.source, max_frames=1, config=cfg, progress=progress)
        cached = bool(pipe.cache.last_hit) if pipe.cache is not None and cfg.cache else False
        self._avatars[key] = avatar
        if len(self._avatars) > MAX_AVATARS:
            self._avatars.popitem(last=False)
        return avatar, cached

    def _run_ditto(self, job: BatchJob, progress: StageProgress) -> JobOutcome:
        if self.pipe is None:
            raise RuntimeError("this worker has no Ditto pipeline (no checkpoints were given)")
        settings = dict(job.settings)
        pipe = self._pipeline_for(settings.pop("crop", None))
        cfg = pipe.config.replace(**settings)  # the values were checked before the run
        source, cached = self._image_avatar(pipe, job, cfg, progress)
        result = pipe.generate(
            source,
            job.audio,
            job.output,
            streaming=job.streaming,
            progress=progress,
            **settings,
        )
        if cached is None and pipe.cache is not None and cfg.cache:
            cached = pipe.cache.last_hit
        h, w = result.size
        return JobOutcome(
            job.key, True, frames=result.num_frames, size=(h, w), avatar_cached=cached
        )

    # -- DiT-Head, DiffTalk ----------------------------------------------------------------------

    def _other_pipeline(self, job: BatchJob, stamps: dict[str, float]) -> Any:
        """The job's method's pipeline for its checkpoints, loaded once per worker (a job
        that loads it gets a ``prepare`` stamp when the load ends)."""
        from talkinghead.methods import get_method

        cls = get_method(job.method).entry_point("pipeline")
        load = {k: job.options[k] for k in cls.LOAD_OPTIONS if job.options.get(k) is not None}
        key = (job.method, str(job.checkpoints), tuple(sorted(load.items())))
        if key in self._other_pipes:
            self._other_pipes.move_to_end(key)
            return self._other_pipes[key]
        while len(self._other_pipes) >= OTHER_PIPELINES_KEPT:
            self._other_pipes.popitem(last=False)
        pipe = cls.from_pretrained(job.checkpoints, device=self.device, **load)
        stamps["prepare"] = time.perf_counter()
        self._other_pipes[key] = pipe
        return pipe

    def _run_other(
        self, job: BatchJob, progress: StageProgress, stamps: dict[str, float]
    ) -> JobOutcome:
        from talkinghead.methods import get_method

        method = get_method(job.method)
        common = {"seed": job.settings.get("seed"), "steps": job.settings.get("steps")}
        if method.pipeline is None:
            generate = method.entry_point("generate")
            path = generate(
                job.source,
                job.audio,
                job.output,
                checkpoints=job.checkpoints,
                device=self.device,
                progress=progress,
                **common,
                **job.options,
            )
        else:
            path = self._other_pipeline(job, stamps).generate(
                job.source, job.audio, job.output, progress=progress, **common, **job.options
            )
        frames, size = probe_video(Path(path))
        return JobOutcome(job.key, True, frames=frames, size=size)

    # -- any job ------------------------------------------------------------------------------------

    def run(self, job: BatchJob, progress: StageProgress | None = None) -> JobOutcome:
        """Make one job's video; a failure comes back as the outcome's reason."""
        stamps: dict[str, float] = {}

        def report(stage: str, done: int, total: int | None) -> None:
            stamps.setdefault(stage, time.perf_counter())
            if progress is not None:
                progress(stage, done, total)

        ditto = job.method == "ditto"
        start = time.perf_counter()
        try:
            outcome = (
                self._run_ditto(job, report) if ditto else self._run_other(job, report, stamps)
            )
        except Exception as exc:  # one bad job must not end the worker
            log.debug("job %s failed", job.key, exc_info=True)
            outcome = JobOutcome(job.key, False, reason=error_message(exc))
        end = time.perf_counter()
        outcome.seconds = round(end - start, 4)
        if outcome.ok and ditto:
            outcome.timings = stage_timings(start, stamps, end)
        elif outcome.ok:  # the method's own stages; "load" when this job loaded its pipeline
            first = "load" if "prepare" in stamps else "prepare"
            outcome.timings = stage_timings(start, stamps, end, phases=None, first=first)
        return outcome

    def close(self) -> None:
        for pipe in self._crop_pipes.values():
            _close_analyzer(pipe)
        if self.pipe is not None:
            _close_analyzer(self.pipe)
        self._crop_pipes.clear()


def _close_analyzer(pipe: Any) -> None:
    close = getattr(pipe.models.registrar.face_analyzer, "close", None)
    if close is not None:
        close()


def probe_video(path: Path) -> tuple[int | None, tuple[int, int] | None]:
    """Frame count and (height, width) of a written video or frames folder."""
    if path.is_dir():
        from PIL import Image

        frames = sorted(path.glob("*.png"))
        if not frames:
            return 0, None
        with Image.open(frames[0]) as im:
            return len(frames), (im.height, im.width)
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = stream.frames or sum(1 for _ in container.decode(video=0))
        return count, (stream.codec_context.height, stream.codec_context.width)


__all__ = [
    "FORWARDED_ENV",
    "JobOutcome",
    "JobWorker",
    "StageProgress",
    "WorkerSettings",
    "probe_video",
    "quiet_logs",
]
