"""DiffTalk's frame generation, shared by inference and training's validation samples.

`DiffTalkGenerator` runs progressive inference with loaded models: per output frame the
smoothed audio window, the landmarks, the mouth-masked crop and the reference (the
source's first crop, then the previous generated crop) condition masked DDIM in the
latent, the decoder makes the crop, and `compose` blends its lower face into the frame.
`talkinghead.methods.difftalk.pipeline` gives it a tracked source and new speech;
training (`talkinghead.methods.difftalk.train`) gives it a held-out clip's prepared crops
and audio windows with the current (EMA) weights (`frames_from_windows`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from talkinghead.audio.ctc import neighbour_windows
from talkinghead.diffusion.seeding import noise_generator
from talkinghead.errors import CheckpointError, MediaError, TalkingHeadError
from talkinghead.face import thread_face_analyzer
from talkinghead.frames.interpolation import KINDS as INTERPOLATION_KINDS
from talkinghead.methods.difftalk.checkpoint import DiffTalkModels
from talkinghead.methods.difftalk.features import (
    CROP_SCALE,
    CROP_SMOOTHING,
    CROP_VY,
    audio_windows,
    generation_mask,
    landmark_condition,
    latent_keep_mask,
    masked_frame,
    to_tensor_image,
    track_faces,
)
from talkinghead.timebase import FPS, SAMPLE_RATE, num_frames
from talkinghead.validation import check_steps

SOURCE_CACHE_SIZE = 256  # source frames whose latents are kept

# Progress callback: (stage name, items done, total or None).
Progress = Callable[[str, int, int | None], None]


# ---------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class DiffTalkConfig:
    """Generation settings: ``steps`` (DDIM), ``eta``, ``face_backend``, ``max_size`` (longest
    side of the source), ``max_source_frames`` (video sources; None: as many as output
    frames), ``mask_dilation`` (lower-face mask growth, fraction of the crop), ``feather``
    (blur of the blend mask, fraction of the crop), ``audio_model`` (override of the CTC
    model), ``progressive`` (False: the source crop is every frame's reference), ``fps``
    (output frame rate; None: the source video's, 25 for an image; a video source is
    then sampled at its own rate, so its motion keeps its speed), ``interpolation``
    ("none", or "auto" | "rife" | "flow" | "farneback": every pair of generated frames
    gets a middle frame, `talkinghead.frames.interpolation`, so the video is written at
    twice ``fps``; RIFE's weights are looked for in the checkpoint directory)."""

    steps: int = 200
    eta: float = 0.0
    face_backend: str = "mediapipe"
    max_size: int = 1920
    max_source_frames: int | None = None
    mask_dilation: float = 0.03
    feather: float = 0.03
    audio_model: str | None = None
    progressive: bool = True
    fps: float | None = None  # output frame rate; None: the source video's, 25 for an image
    interpolation: str = "none"  # not in the paper: DiT-Head's stage 3, offered here too

    def replace(self, **changes: Any) -> DiffTalkConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TalkingHeadError(
                f"unknown DiffTalk option(s): {', '.join(unknown)}; expected {', '.join(sorted(known))}"
            )
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def check(self) -> DiffTalkConfig:
        """Refuse settings generation cannot run with (before any model loads); returns self."""
        if self.fps is not None and self.fps <= 0:
            raise TalkingHeadError(f"fps must be positive, got {self.fps}")
        if self.interpolation not in INTERPOLATION_KINDS:
            raise TalkingHeadError(
                f"interpolation must be one of {', '.join(INTERPOLATION_KINDS)}, "
                f"not {self.interpolation!r}"
            )
        check_steps(self.steps)
        if self.eta < 0:
            raise TalkingHeadError(f"DiffTalk needs eta >= 0, got {self.eta}")
        return self


@dataclass
class SourceFaces:
    """A source prepared for DiffTalk: frames, their face crops and transforms."""

    frames: list[np.ndarray]
    crops: np.ndarray  # [F, R, R, 3] uint8
    landmarks: np.ndarray  # [F, 478, 2] crop pixels
    c2o: np.ndarray  # [F, 3, 3]
    fps: float  # output frame rate
    is_image: bool
    source_fps: float | None = None  # a video's own rate

    def index(self, i: int) -> int:
        """The source frame behind output frame i (videos loop back and forth)."""
        from talkinghead.media.source import mirror_index

        if self.is_image:
            return 0
        t = i if not self.source_fps else int(i * self.source_fps / self.fps + 1e-6)
        return mirror_index(t, len(self.frames))


@dataclass
class _SourceInputs:
    z_src: torch.Tensor  # [1, 3, h, w] latent of the source crop (kept outside the mouth)
    z_masked: torch.Tensor  # [1, 3, h, w] latent of its mouth-masked version
    keep: torch.Tensor  # [1, 1, h, w] latent keep mask
    soft: np.ndarray  # [R, R] feathered pixel mask of the generated region
    landmarks: torch.Tensor  # [1, 51, 2] landmark condition


@dataclass
class FrameResult:
    index: int
    frame: np.ndarray  # the output frame, source size
    generated: np.ndarray  # the decoded crop D_I(z~), the next frame's reference
    mask: np.ndarray  # [R, R] the feathered lower-face mask it was blended through


class DiffTalkGenerator:
    """Progressive DiffTalk inference with loaded models (see the module docstring)."""

    def __init__(
        self,
        models: DiffTalkModels,
        config: DiffTalkConfig | None = None,
        device: str | torch.device = "cpu",
        audio_encoder=None,
    ) -> None:
        self.models = models
        self.config = (config or DiffTalkConfig()).check()
        self.device = torch.device(device)
        self._audio_encoder = audio_encoder
        self._analyzer = None
        self._source_cache: OrderedDict[Any, _SourceInputs] = OrderedDict()

    # -- inputs

    def audio_encoder(self):
        if self._audio_encoder is None:
            from talkinghead.audio.ctc import LOCAL_MODEL_DIRNAME, Wav2Vec2CTCEncoder

            local = self.models.directory / LOCAL_MODEL_DIRNAME
            name = self.config.audio_model or (
                str(local) if local.is_dir() else self.models.data.get("audio", {}).get("encoder")
            )
            if not name:
                raise CheckpointError(f"{self.models.directory}: no audio feature model recorded")
            self._audio_encoder = Wav2Vec2CTCEncoder(name, device=str(self.device))
        enc = self._audio_encoder
        expected = self.models.ldm.config.conditions.audio_feature_dim
        if enc.feature_dim != expected:
            raise CheckpointError(
                f"{enc.name}: gives {enc.feature_dim} features per step; the model was trained on {expected}"
            )
        return enc

    def analyzer(self):
        if self._analyzer is None:
            self._analyzer = thread_face_analyzer(self.config.face_backend, self.models.directory)
        return self._analyzer

    def prepare_source(
        self, source: Path, num_samples: int, progress: Progress | None = None
    ) -> tuple[SourceFaces, int]:
        """The source's frames and face crops, and the number of output frames for
        `num_samples` of 16 kHz audio at the source's frame rate (25 for an image)."""
        from talkinghead.media.source import load_source

        cfg = self.config
        probe = load_source(source, max_side=cfg.max_size, max_frames=1)
        source_fps = None if probe.is_image or not probe.fps else float(probe.fps)
        fps = float(cfg.fps or source_fps or FPS)  # an image plays at the toolkit's 25 fps
        n = num_frames(num_samples, SAMPLE_RATE, fps)  # exact for 50 or 30000/1001 fps too
        if n == 0:
            raise MediaError("the audio is empty")
        needed = math.ceil(n * (source_fps or fps) / fps)
        limit = cfg.max_source_frames if cfg.max_source_frames is not None else needed
        media = (
            probe
            if probe.is_image
            else load_source(source, max_side=cfg.max_size, max_frames=max(1, limit))
        )
        if progress:
            progress("source", 0, len(media.frames))
        crop = self.models.data.get("crop", {})
        res = self.models.resolution
        faces = track_faces(
            self.analyzer(),
            media.frames,
            res,
            scale=float(crop.get("scale", CROP_SCALE)),
            vy=float(crop.get("vy", CROP_VY)),
            smoothing=int(crop.get("smoothing", CROP_SMOOTHING)),
            what=str(source),
        )
        crops = np.stack([faces.crop(f, i, res) for i, f in enumerate(media.frames)])
        if progress:
            progress("source", len(media.frames), len(media.frames))
        src = SourceFaces(
            media.frames, crops, faces.landmarks, faces.c2o, fps, media.is_image, source_fps
        )
        return src, n

    def audio_windows(self, audio_16k: np.ndarray, num_frames: int, fps: float) -> np.ndarray:
        """Per output frame, the [2w + 1, 16, C] neighbourhood the temporal filter reads."""
        windows = audio_windows(self.audio_encoder(), audio_16k, num_frames, fps)
        return neighbour_windows(windows, self.models.ldm.config.conditions.smooth_radius)

    # -- one frame

    def _images(self, *rgb: np.ndarray) -> torch.Tensor:
        return torch.stack([to_tensor_image(x) for x in rgb]).to(self.device)

    @torch.no_grad()
    def source_inputs(
        self, crop: np.ndarray, landmarks: np.ndarray, key: Any = None
    ) -> _SourceInputs:
        """What a source crop contributes to every frame made from it (cached by `key`)."""
        if key is not None and key in self._source_cache:
            self._source_cache.move_to_end(key)
            return self._source_cache[key]
        m = self.models
        res = m.resolution
        z_src, z_masked = m.autoencoder.encode(
            self._images(crop, masked_frame(crop, landmarks))
        ).split(1)
        generate = generation_mask(landmarks, res, self.config.mask_dilation)
        keep = torch.from_numpy(latent_keep_mask(generate, z_src.shape[-1]))[None, None]
        sigma = self.config.feather * res
        soft = cv2.GaussianBlur(generate, (0, 0), sigma) if sigma > 0 else generate
        lm = torch.from_numpy(landmark_condition(landmarks, res))[None]
        inputs = _SourceInputs(
            z_src, z_masked, keep.to(self.device), np.clip(soft, 0, 1), lm.to(self.device)
        )
        if key is not None:
            self._source_cache[key] = inputs
            while len(self._source_cache) > SOURCE_CACHE_SIZE:
                self._source_cache.popitem(last=False)
        return inputs

    @torch.no_grad()
    def render_frame(
        self,
        crop: np.ndarray,
        landmarks: np.ndarray,
        reference: np.ndarray,
        audio: np.ndarray,
        generator: torch.Generator,
        key: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One crop: the generated D_I(z~) (uint8) and the feathered lower-face mask [R, R].

        `key` names the source frame, so that its latents are encoded once.
        """
        from talkinghead.diffusion.latent_inpainting import masked_ddim_sample

        m = self.models
        src = self.source_inputs(crop, landmarks, key)
        z_ref = m.autoencoder.encode(self._images(reference))
        audio_t = torch.from_numpy(audio)[None].float().to(self.device)
        context = m.ldm.context(audio_t, src.landmarks)

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return m.ldm(x, t, src.z_masked, z_ref, context)

        z = masked_ddim_sample(
            eps,
            src.z_src,
            src.keep,
            steps=self.config.steps,
            generator=generator,
            eta=self.config.eta,
        )
        img = m.autoencoder.decode(z)[0].clamp(-1, 1)
        generated = ((img.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
        return generated, src.soft

    # -- a whole clip

    def frames(
        self,
        source: SourceFaces,
        audio_16k: np.ndarray,
        num_frames: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> Iterator[FrameResult]:
        """Output frames in order (progressive: each frame's reference is the last output)."""
        audio = self.audio_windows(audio_16k, num_frames, source.fps)
        yield from self.frames_from_windows(
            source, audio, seed=seed, generator=generator, progress=progress
        )

    def frames_from_windows(
        self,
        source: SourceFaces,
        audio: np.ndarray,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> Iterator[FrameResult]:
        """`frames` for audio already windowed: [num_frames, 2w + 1, 16, C] (`audio_windows`;
        training's samples take a prepared clip's windows). The noise comes from
        ``generator`` (a CPU one), else from ``seed``, else from a fresh random seed."""
        from talkinghead.face.paste import PasteBack

        num_frames = len(audio)
        generator = noise_generator(seed, generator)
        paste = PasteBack()
        reference = source.crops[0]
        if progress:
            progress("frames", 0, num_frames)
        for i in range(num_frames):
            k = source.index(i)
            generated, soft = self.render_frame(
                source.crops[k], source.landmarks[k], reference, audio[i], generator, key=k
            )
            frame = compose(source.frames[k], generated, soft, source.c2o[k], paste)
            if self.config.progressive:
                reference = generated
            if progress:
                progress("frames", i + 1, num_frames)
            yield FrameResult(i, frame, generated, soft)


def compose(
    frame: np.ndarray, generated: np.ndarray, soft: np.ndarray, c2o: np.ndarray, paste=None
) -> np.ndarray:
    """The frame with only the generated lower face replaced.

    The crop is pasted back (`PasteBack`), then blended with the original frame through
    the lower-face mask warped into the frame, so everything outside the mouth region
    keeps the source's own pixels (the crop is often smaller than the face in the frame).
    """
    from talkinghead.face.paste import PasteBack

    pasted = (paste or PasteBack())(frame, generated, c2o)
    h, w = frame.shape[:2]
    weight = cv2.warpAffine(soft.astype(np.float32), np.asarray(c2o, np.float64)[:2], (w, h))
    weight = np.clip(weight, 0, 1)[..., None]
    out = pasted.astype(np.float32) * weight + frame.astype(np.float32) * (1 - weight)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


__all__ = [
    "SOURCE_CACHE_SIZE",
    "DiffTalkConfig",
    "DiffTalkGenerator",
    "FrameResult",
    "SourceFaces",
    "compose",
]
