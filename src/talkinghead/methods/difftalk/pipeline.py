"""DiffTalk inference: source image/video + speech -> talking-head video, by progressive inference.

Per output frame i (paper Sec. 3.3, Fig. 4):

1. the source frame (a video loops back and forth; an image repeats) is cropped around
   the face at the checkpoint's resolution (256 or 512);
2. conditions: the smoothed audio of frames i - 8 .. i + 8, the landmarks outside the
   mouth, the mouth-masked crop x_m, and the reference x_r: the source's first crop for
   frame 0, then the previous *generated* crop (progressive inference);
3. masked DDIM (200 steps, eta 0) in the 64 x 64 x 3 latent: the lower face is sampled
   from noise, the rest is the source crop's latent (CompVis inpainting);
4. the decoded crop is pasted back into the frame (`talkinghead.face.paste`) and kept
   only inside the feathered lower-face mask: the rest of the frame keeps its pixels;
5. frames stream into the writer (H.264 + the input audio).

The crops, conditions and masks are made as for the training data
(`talkinghead.methods.difftalk.features`); the models come from a checkpoint directory
written by `talkinghead train-difftalk` (`talkinghead.methods.difftalk.checkpoint`).
Steps 2-4 are `talkinghead.methods.difftalk.generation.DiffTalkGenerator`, which
training's validation samples run too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from talkinghead.diffusion.seeding import noise_generator
from talkinghead.errors import TalkingHeadError
from talkinghead.frames.interpolation import Interpolators, interpolate_2x
from talkinghead.media.clip import VideoClip, write_or_return
from talkinghead.methods.difftalk.checkpoint import RESOLUTIONS, DiffTalkModels, load_difftalk
from talkinghead.methods.difftalk.generation import (
    DiffTalkConfig,
    DiffTalkGenerator,
    FrameResult,
    Progress,
    SourceFaces,
    compose,
)
from talkinghead.timebase import SAMPLE_RATE
from talkinghead.validation import check_not_an_input, check_output, resolve_device


def _check_resolution(resolution: Any) -> int | None:
    if resolution is not None and int(resolution) not in RESOLUTIONS:
        raise TalkingHeadError(
            f"DiffTalk resolution must be one of {RESOLUTIONS}, got {resolution}"
        )
    return None if resolution is None else int(resolution)


class DiffTalkPipeline:
    """DiffTalk with its networks loaded once: `from_pretrained`, `.to()`, then `generate`
    as often as wanted. The audio model and frame interpolator are made on first use and
    kept for later calls with the same settings; the face analyser is the calling
    thread's (`talkinghead.face.thread_face_analyzer`)."""

    LOAD_OPTIONS: tuple[str, ...] = ("resolution",)  # picks the 256 or 512 px checkpoint

    def __init__(
        self, models: DiffTalkModels, device: str | torch.device = "cpu", *, audio_encoder=None
    ) -> None:
        self.models = models
        self._device = torch.device(device)
        self._audio_encoder = audio_encoder  # a given `CharProbabilityEncoder`: every call
        self._encoders: dict[str | None, Any] = {}
        self._interpolators = Interpolators(models.directory, str(self._device))

    @classmethod
    def from_pretrained(
        cls,
        checkpoints: str | os.PathLike[str],
        *,
        resolution: int | None = None,
        device: str | torch.device = "cpu",
        audio_encoder=None,
    ) -> DiffTalkPipeline:
        """Load a `train-difftalk` folder (``resolution`` 256 | 512 picks between the
        ``difftalk_256/`` and ``difftalk_512/`` subfolders of one holding both)."""
        device = resolve_device(str(device))
        models = load_difftalk(Path(checkpoints), _check_resolution(resolution), device)
        return cls(models, device, audio_encoder=audio_encoder)

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> DiffTalkPipeline:
        """Move the networks to ``device`` (cpu, cuda, cuda:N, auto); returns the pipeline."""
        device = torch.device(resolve_device(str(device)))
        if device != self._device:
            self.models.autoencoder.to(device)
            self.models.ldm.to(device)
            self._device = device
            self._encoders.clear()  # they hold device-bound networks
            self._interpolators = Interpolators(self.models.directory, str(device))
        return self

    def __repr__(self) -> str:
        return (
            f"DiffTalkPipeline(checkpoints={str(self.models.directory)!r}, "
            f"device={self.device}, resolution={self.models.resolution})"
        )

    def _generator(self, config: DiffTalkConfig) -> DiffTalkGenerator:
        encoder = self._audio_encoder or self._encoders.get(config.audio_model)
        gen = DiffTalkGenerator(self.models, config, self.device, audio_encoder=encoder)
        if self._audio_encoder is None:  # loaded (and checked) before any frame is decoded
            self._encoders[config.audio_model] = gen.audio_encoder()
        return gen

    def generate(
        self,
        source: str | os.PathLike[str],
        audio: str | os.PathLike[str],
        output: str | os.PathLike[str] | None = None,
        *,
        seed: int | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
        **options: Any,
    ) -> Path | VideoClip:
        """`source` (image or video) speaking `audio`: the written path, or with
        ``output=None`` a `VideoClip` (every frame in memory).

        ``generator`` (a CPU `torch.Generator`) draws the noise; ``seed=s`` is the same as
        ``generator=torch.Generator().manual_seed(s)``; neither: a fresh random seed.
        Options: the fields of `DiffTalkConfig` (``resolution`` is accepted when it is the
        loaded checkpoint's).
        """
        from talkinghead.audio.io import load_audio

        options = dict(options)
        resolution = _check_resolution(options.pop("resolution", None))
        if resolution is not None and resolution != self.models.resolution:
            raise TalkingHeadError(
                f"this pipeline holds the {self.models.resolution} px DiffTalk checkpoint, "
                f"not {resolution} px: load that one with from_pretrained(resolution={resolution})"
            )
        generator = noise_generator(seed, generator)
        config = DiffTalkConfig().replace(steps=steps, **options)
        if output is not None:
            check_not_an_input(output, {"source": source, "audio": audio})
            check_output(output)  # before the work, not after minutes of it
        gen = self._generator(config)
        # Before any frame is made: "rife" without its weights fails here.
        interpolator = self._interpolators.get(config.interpolation)

        audio_path = Path(audio)
        audio_16k = load_audio(audio_path, SAMPLE_RATE)
        src, n = gen.prepare_source(Path(source), len(audio_16k), progress)
        out_fps = src.fps * 2 if interpolator is not None else src.fps
        stream = (
            r.frame for r in gen.frames(src, audio_16k, n, generator=generator, progress=progress)
        )
        if interpolator is not None:
            stream = interpolate_2x(stream, interpolator)
        mux_rate = 48000
        mux_audio = load_audio(audio_path, mux_rate)
        return write_or_return(stream, output, fps=out_fps, audio=mux_audio, sample_rate=mux_rate)


def generate_video(
    source: Path,
    audio: Path,
    output: Path | str,
    *,
    checkpoints: Path,
    seed: int | None = None,
    steps: int | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    **method_options: Any,
) -> Path:
    """Write a DiffTalk video of `source` (image or video) speaking `audio` to `output`.

    The registry's entry point (``talkinghead generate --method difftalk``): loads a
    `DiffTalkPipeline` for this one video. Method options: ``resolution`` (256 | 512:
    which checkpoint), ``audio_encoder`` (a `CharProbabilityEncoder` object) and the
    fields of `DiffTalkConfig`.
    """
    options = dict(method_options)
    resolution = _check_resolution(options.pop("resolution", None))
    encoder = options.pop("audio_encoder", None)
    DiffTalkConfig().replace(steps=steps, **options).check()  # before any model loads
    pipe = DiffTalkPipeline.from_pretrained(
        checkpoints, resolution=resolution, device=device, audio_encoder=encoder
    )
    out = pipe.generate(source, audio, output, seed=seed, steps=steps, progress=progress, **options)
    assert isinstance(out, Path)
    return out


__all__ = [
    "DiffTalkConfig",
    "DiffTalkGenerator",
    "DiffTalkPipeline",
    "FrameResult",
    "SourceFaces",
    "compose",
    "generate_video",
]
