"""The methods, one folder each, and the registry the CLI reads.

Each method lives in ``talkinghead/methods/<name>/`` with its config, checkpoint
format, inference pipeline, data preparation and training; everything it shares
with the others (media, audio, face, diffusion, models, the stage runner,
training utilities, evaluation) lives below, in the shared layers. A method's
folder offers these entry points, named in its `Method` line:

- ``generate``: ``generate_video(source, audio, output, *, checkpoints, seed, steps,
  device, progress=None, **options) -> Path`` (``talkinghead generate --method``);
  Ditto's returns its `GenerationResult` instead (``output`` is the path; the CLI
  reports its ``num_frames`` and ``num_faces``)
- ``pipeline``: a class with ``from_pretrained(checkpoints, *, device, **load_options)``
  and ``generate(source, audio, output, *, seed, steps, progress=None, **options)``
  whose networks stay loaded between videos (batch workers keep one per checkpoint);
  ``LOAD_OPTIONS`` names the options that choose the weights (DiffTalk's ``resolution``)
- ``prepare``: ``prepare_dataset(videos_dir, out_dir, *, checkpoints=None, workers=1,
  progress=None, **options) -> PrepareReport`` (``talkinghead prepare-data --method``)
- ``commands``: ``register(app)``, adding the method's own commands (training)

Adding a method: write its folder, then add one line to `METHODS`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from talkinghead.errors import SettingsError, TalkingHeadError

_WHAT = {
    "generate": "generation",
    "pipeline": "pipeline class",
    "prepare": "data preparation",
    "commands": "the commands",
}


@dataclass(frozen=True)
class Method:
    """One method: its name, a one-line summary, and where its entry points are.

    Entry points are ``"module:attribute"`` below the method's package, imported only
    when used, so ``talkinghead --help`` stays fast and a method's heavy dependencies
    are needed only by those who run it.
    """

    name: str
    summary: str
    generate: str | None = "pipeline:generate_video"  # None: the method has no such entry
    pipeline: str | None = None  # None: batch runs and the app call `generate` per video
    prepare: str | None = "data:prepare_dataset"
    commands: str = "commands:register"
    # Packages its networks need beyond the base install, and the extra that brings them.
    requires: tuple[str, ...] = ()
    extra: str | None = None

    def missing_packages(self) -> list[str]:
        """The packages in `requires` that are not installed (found without importing them)."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def check_installed(self) -> None:
        """A one-line `SettingsError` naming what is missing and the extra to install."""
        missing = self.missing_packages()
        if missing:
            raise SettingsError(
                f"--method {self.name} needs {' and '.join(missing)}, not installed here: "
                f'pip install -c constraints.txt -e ".[{self.extra}]" (or pip install '
                f"'talkinghead[{self.extra}]')"
            )

    @property
    def package(self) -> str:
        return f"{__name__}.{self.name}"

    def entry_point(self, kind: str) -> Callable[..., Any]:
        """The callable behind `kind` ("generate", "pipeline", "prepare" or "commands")."""
        target = getattr(self, kind)
        if target is None:
            raise TalkingHeadError(
                f"{self.name!r} offers no {_WHAT[kind]}; see its own commands (talkinghead --help)"
            )
        module_name, _, attr = f"{self.package}.{target}".partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only the method's own module being absent means "not available"; a missing
            # dependency inside it is a real error and keeps its traceback.
            if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
                raise
            raise TalkingHeadError(
                f"{_WHAT[kind]} for {self.name!r} is not available ({module_name} is missing)"
            ) from None
        fn = getattr(module, attr, None)
        if fn is None:
            raise TalkingHeadError(f"{module_name} has no {attr}; cannot {kind} {self.name!r}")
        return fn


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ditto", "motion-space diffusion (LMDM) rendered by LivePortrait networks"),
        Method(
            "dithead",
            "DiT-Head: latent diffusion transformer, lip sync by inpainting",
            pipeline="pipeline:DiTHeadPipeline",
            requires=("transformers",),  # wav2vec2 CTC audio features
            extra="latent",
        ),
        Method(
            "difftalk",
            "DiffTalk: latent-diffusion UNet with audio and landmark conditions",
            pipeline="pipeline:DiffTalkPipeline",
            requires=("diffusers", "transformers"),  # its UNet and VQ blocks; wav2vec2 CTC
            extra="latent",
        ),
        Method("liveportrait", "LivePortrait: video-driven animation", generate=None, prepare=None),
    )
}


def get_method(name: str) -> Method:
    """The registered method `name`, or a one-line error listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise SettingsError(f"unknown method {name!r}: use one of {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Method", "get_method"]
