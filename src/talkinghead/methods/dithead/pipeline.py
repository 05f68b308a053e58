"""DiT-Head inference: dub a source video so that its lips follow new audio.

Per output frame (25 fps, as many as the audio lasts; the source is played
forwards and backwards when it is shorter, and a still image is repeated):

1. the face of the source frame is tracked and cropped exactly as in training
   (`talkinghead.methods.dithead.features`, with the checkpoint's `DataSettings`),
   its lower face masked with the blurred mask;
2. the masked crop is encoded with the masked-face VQGAN; the reference latent is
   a random source frame encoded with the full-face VQGAN for the first frame, and
   the previous frame's generated latent afterwards (the paper's evolving
   inference), so consecutive frames stay coherent;
3. DDIM (250 steps by default, eta = 0) denoises pure noise into the target latent,
   the DiT seeing the masked latent, the reference latent and the 11-frame wav2vec2
   window of that frame;
4. the full-face VQGAN decodes it and the mask blends the generated lower face into
   the source frame (only the masked region changes);
5. with ``fps=50`` (the default, the paper's stage 3) every pair of frames gets an
   interpolated middle frame (RIFE when ``<checkpoints>/rife/flownet.pkl`` exists,
   else DIS optical flow); ``fps=25`` skips it.

The video is written with the (16 kHz) audio. Everything random (the reference
frame, the initial noise of each frame) comes from one ``torch.Generator`` (``seed``).
`DiTHeadPipeline` holds the loaded networks for many videos; `generate_video` is the
one-video entry point the CLI and batch runs call. Steps 2-4 are
`talkinghead.methods.dithead.generation.DiTHeadGenerator`, which training's validation
samples run too.

Checkpoints directory: ``vq_full.pt``, ``vq_masked.pt``, ``dit.pt`` (written by
``talkinghead train-dithead``, format in `talkinghead.methods.dithead.checkpoint`;
also accepted under ``<checkpoints>/dithead/``),
optionally ``wav2vec2/`` (a local copy of the audio model) and ``rife/flownet.pkl``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talkinghead.audio.ctc import LOCAL_MODEL_DIRNAME, Wav2Vec2CTCEncoder
from talkinghead.diffusion.seeding import noise_generator
from talkinghead.errors import CheckpointError, MediaError, NoFaceError, TalkingHeadError
from talkinghead.face import thread_face_analyzer
from talkinghead.frames.interpolation import Interpolators, interpolate_2x
from talkinghead.media.clip import VideoClip, write_or_return
from talkinghead.media.video import iter_video_frames
from talkinghead.methods.dithead.config import DataSettings
from talkinghead.methods.dithead.features import audio_windows, crop_face, lower_face_mask
from talkinghead.methods.dithead.generation import (
    DEFAULT_STEPS,
    DiTHeadGenerator,
    DiTHeadModels,
    Progress,
    SourceFace,
    paste_masked,
    pingpong,
)
from talkinghead.timebase import FPS, SAMPLE_RATE
from talkinghead.validation import check_not_an_input, check_output, check_steps, resolve_device

_OPTIONS = {
    "fps", "interpolation", "eta", "face_backend", "aux_dir", "audio_model", "max_side",
    "evolve", "reference_frame", "resolution",
}  # fmt: skip


def _source_frames(
    source: Path, max_side: int | None, limit: int | None = None
) -> list[np.ndarray]:
    """Up to ``limit`` source frames at 25 fps (nearest frame in time), decoded as a
    stream so a long source costs only what is used; one frame for a still image."""
    from talkinghead.media.source import load_source

    probe = load_source(source, max_side=max_side, max_frames=1)
    if probe.is_image:
        return probe.frames
    return list(iter_video_frames(source, fps=FPS, fit=True, max_side=max_side, max_frames=limit))


def analyze_source(
    frames: list[np.ndarray],
    settings: DataSettings,
    analyzer: Any,
    progress: Progress | None = None,
) -> list[SourceFace]:
    """Track, crop and mask every source frame (a lost face reuses the last landmarks)."""
    out: list[SourceFace] = []
    previous = None
    if progress:
        progress("faces", 0, len(frames))
    s = settings.crop.size
    for i, rgb in enumerate(frames):
        try:
            fc = analyzer.analyze(rgb, previous)
        except NoFaceError:
            if previous is None:
                raise NoFaceError(f"no face found in source frame {i}") from None
            fc = previous
        previous = fc
        crop, lmk, M_c2o = crop_face(rgb, fc.landmarks, settings.crop)
        mask = lower_face_mask(lmk, s, settings.mask)
        out.append(SourceFace(rgb, crop, mask, M_c2o))
        if progress:
            progress("faces", i + 1, len(frames))
    return out


def _check_options(options: dict[str, Any]) -> int:
    """Refuse unknown options and a frame rate DiT-Head does not write; returns the fps."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TalkingHeadError(f"unknown dithead option(s): {', '.join(sorted(unknown))}")
    fps = int(options.get("fps", 50))
    if fps not in (25, 50):
        raise TalkingHeadError(f"DiT-Head writes 25 or 50 fps, not {fps}")
    return fps


class DiTHeadPipeline:
    """DiT-Head with its networks loaded once: `from_pretrained`, `.to()`, then `generate`
    as often as wanted. The audio model and frame interpolator are made on first use and
    kept for later calls with the same settings; the face analyser is the calling
    thread's (`talkinghead.face.thread_face_analyzer`)."""

    LOAD_OPTIONS: tuple[str, ...] = ()  # the checkpoint alone fixes the weights

    def __init__(self, models: DiTHeadModels, device: str | torch.device = "cpu") -> None:
        self.models = models
        self._device = torch.device(device)
        self._encoders: dict[str, Wav2Vec2CTCEncoder] = {}
        self._interpolators = Interpolators(models.root, str(self._device))

    @classmethod
    def from_pretrained(
        cls, checkpoints: str | os.PathLike[str], *, device: str | torch.device = "cpu"
    ) -> DiTHeadPipeline:
        """Load ``vq_full.pt``, ``vq_masked.pt`` and ``dit.pt`` from a `train-dithead`
        folder (or its ``dithead/`` subfolder)."""
        device = resolve_device(str(device))
        return cls(DiTHeadModels.load(Path(checkpoints), device), device)

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> DiTHeadPipeline:
        """Move the networks to ``device`` (cpu, cuda, cuda:N, auto); returns the pipeline."""
        device = torch.device(resolve_device(str(device)))
        if device != self._device:
            for net in (self.models.vq_full, self.models.vq_masked, self.models.dit):
                net.to(device)
            self._device = device
            self._encoders.clear()  # they hold device-bound networks
            self._interpolators = Interpolators(self.models.root, str(device))
        return self

    def __repr__(self) -> str:
        return (
            f"DiTHeadPipeline(checkpoints={str(self.models.root)!r}, device={self.device}, "
            f"crop={self.models.settings.crop.size}px)"
        )

    def _encoder(self, audio_model: str | None) -> Wav2Vec2CTCEncoder:
        local = self.models.root / LOCAL_MODEL_DIRNAME
        name = audio_model or (str(local) if local.is_dir() else self.models.settings.audio_model)
        if name not in self._encoders:
            self._encoders[name] = Wav2Vec2CTCEncoder(name, device=str(self.device))
        return self._encoders[name]

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
        """Dub ``source`` (video or image) with ``audio``: the written path, or with
        ``output=None`` a `VideoClip` (every frame in memory).

        ``generator`` (a CPU `torch.Generator`) draws everything random, the first
        reference frame and each frame's noise; ``seed=s`` is the same as
        ``generator=torch.Generator().manual_seed(s)``; neither: a fresh random seed.
        Options: ``fps`` (50: 2x interpolated, the paper's output; or 25),
        ``interpolation`` ("auto" | "rife" | "flow" | "farneback" | "none"), ``eta``
        (DDIM, 0.0), ``face_backend`` ("auto") and ``aux_dir``, ``audio_model`` (wav2vec2
        directory or hub id; default ``<checkpoints>/wav2vec2``, else the model used in
        training), ``max_side`` (1920), ``evolve`` (True: previous latent as reference),
        ``reference_frame`` (index of the first reference; default random). ``resolution``
        is accepted for the CLI's sake and ignored: the checkpoint fixes the crop size.
        """
        from talkinghead.audio.io import load_audio

        opts = options  # the method options, as `_OPTIONS` names them
        fps = _check_options(opts)
        steps = DEFAULT_STEPS if steps is None else steps
        check_steps(steps, self.models.n_timestep)
        generator = noise_generator(seed, generator)
        if output is not None:
            check_not_an_input(output, {"source": source, "audio": audio})
            check_output(output)  # before the work, not after minutes of it

        wav = load_audio(Path(audio), SAMPLE_RATE)
        if progress:
            progress("audio", 0, None)
        windows = self._audio_windows(wav, opts.get("audio_model"))
        if len(windows) == 0:
            raise MediaError(f"{audio}: the audio is too short for one frame")
        if progress:
            progress("audio", len(windows), len(windows))

        # ping-pong never needs more than N source frames
        frames = _source_frames(Path(source), opts.get("max_side", 1920), len(windows))
        analyzer = thread_face_analyzer(opts.get("face_backend", "auto"), opts.get("aux_dir"))
        faces = analyze_source(frames, self.models.settings, analyzer, progress)

        reference = opts.get("reference_frame")
        if reference is None:
            reference = int(torch.randint(len(faces), (1,), generator=generator))
        elif not 0 <= int(reference) < len(faces):
            raise TalkingHeadError(f"reference_frame {reference} is outside 0..{len(faces) - 1}")
        gen = DiTHeadGenerator(self.models, steps, float(opts.get("eta", 0.0)), str(self.device))
        stream = gen.frames(
            faces,
            windows,
            generator=generator,
            reference=int(reference),
            evolve=bool(opts.get("evolve", True)),
            progress=progress,
        )
        if fps == 50:
            interp = self._interpolators.get(opts.get("interpolation", "auto"))
            if interp is not None:
                stream = interpolate_2x(stream, interp)
            else:  # no interpolation asked for: each frame shown twice
                stream = (f for frame in stream for f in (frame, frame))
        return write_or_return(stream, output, fps=fps, audio=wav, sample_rate=SAMPLE_RATE)

    def _audio_windows(self, audio_16k: np.ndarray, audio_model: str | None) -> np.ndarray:
        encoder = self._encoder(audio_model)
        a = self.models.settings.audio
        if encoder.vocab_size != a.vocab_size:
            raise CheckpointError(
                f"{encoder.name}: the audio model has {encoder.vocab_size} CTC tokens, the "
                f"DiT was trained with {a.vocab_size}"
            )
        return audio_windows(encoder.frame_logits(audio_16k), a.window)


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
    """Dub ``source`` (video or image) with ``audio``; returns the written path.

    The registry's entry point (``talkinghead generate --method dithead``): loads a
    `DiTHeadPipeline` for this one video; its `generate` lists the options.
    """
    _check_options(method_options)  # before any model loads
    check_steps(DEFAULT_STEPS if steps is None else steps)
    pipe = DiTHeadPipeline.from_pretrained(checkpoints, device=device)
    out = pipe.generate(
        source, audio, output, seed=seed, steps=steps, progress=progress, **method_options
    )
    assert isinstance(out, Path)
    return out


__all__ = [
    "DEFAULT_STEPS",
    "DiTHeadGenerator",
    "DiTHeadModels",
    "DiTHeadPipeline",
    "SourceFace",
    "analyze_source",
    "generate_video",
    "paste_masked",
    "pingpong",
]
