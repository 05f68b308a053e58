"""The Ditto pipeline: portrait (or video) + speech -> talking-head video, offline or streaming.

Data flows one way, as in the release:

    source --register--> Avatar (motion, appearance, crop transform, eyes; cached)
    audio  --HuBERT-->   features [N, 1024] --conditions--> [N, 1103]
           --LMDM + DDIM, clip-wise--> motion [N, 265]
           --stitch--> keypoints --warp--> features --decode--> 512 crops
           --paste-back--> frames --> writer (H.264 + AAC)

Offline, the motion of the whole clip is sampled first (it costs a small
fraction of rendering), then frames stream through the renderer stages, which
run concurrently in threads with bounded queues (`StageRunner`): memory does not
grow with the length of the audio. Streaming (`DittoPipeline.stream`) runs the
same stages on audio pushed in chunks and returns frames as soon as they exist.

The settings are `config.DittoConfig`; `generate_video` (load, then generate) is the
method registry's ``generate`` entry point, what ``talkinghead generate`` calls.

Deliberate differences from the release are listed in `docs/ditto.md`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from talkinghead.audio.hubert import (
    HubertFeatureExtractor,
    OnnxHubertEncoder,
    SpeechEncoder,
    TransformersHubertEncoder,
    num_frames,
)
from talkinghead.audio.io import AudioInput, audio_name, read_audio, to_sample_rate
from talkinghead.diffusion import DDIMSampler
from talkinghead.diffusion.ddim import Denoiser
from talkinghead.errors import CheckpointError, MediaError, TalkingHeadError
from talkinghead.export.runtime import runs_in_torch, runtime_network
from talkinghead.face import FaceAnalyzer, PasteBack, create_face_analyzer
from talkinghead.face.device_paste import DevicePasteBack
from talkinghead.media.source import SourceInput, source_media
from talkinghead.media.yuv import rgb_to_yuv420
from talkinghead.methods.ditto.avatar import Avatar, AvatarCache, AvatarRegistrar
from talkinghead.methods.ditto.batching import (
    BatchClient,
    BatchingConfig,
    SharedBatcher,
    render_stages,
)
from talkinghead.methods.ditto.checkpoints import (
    ReleaseCheckpoints,
    load_release_config,
    read_sidecar,
    resolve_checkpoints,
)
from talkinghead.methods.ditto.config import ConditionSource, DittoConfig, config_from_release
from talkinghead.methods.ditto.motion import (
    ClipwiseGenerator,
    ConditionBuilder,
    ConditionConfig,
    dict_to_motion,
    motion_to_dict,
)
from talkinghead.methods.ditto.motion.clipwise import WindowSampler
from talkinghead.methods.ditto.motion.stitch import MotionStitcher, StitchControl
from talkinghead.methods.ditto.validation import (
    check_ditto_config,
    check_emotion_layout,
    motion_conditions,
)
from talkinghead.models import OFFICIAL_NETWORKS, load_official
from talkinghead.stages import Stage, StageRunner
from talkinghead.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from talkinghead.timebase import frames_for_duration as expected_frames
from talkinghead.validation import check_not_an_input, check_output, resolve_device

log = logging.getLogger(__name__)

# Progress callback: (stage name, items done, total or None).
Progress = Callable[[str, int, int | None], None]
OUTPUT_TYPES = ("np", "pil", "iterator")  # what generate(output=None) returns the frames as
MUX_RATE = 48000  # the AAC track's sample rate
STREAM_CHUNK = 3200  # samples per push when streaming a whole clip: 200 ms, as a live client
_BATCHES_IN_FLIGHT = 4  # renderer batches ahead of a caller reading frames (bounds memory)


def video_options(output: str | os.PathLike[str]) -> dict[str, Any]:
    """x264's "veryfast" preset keeps encoding well ahead of real time at crf 18."""
    from talkinghead.media.writer import VIDEO_SUFFIXES

    return {"preset": "veryfast"} if Path(output).suffix.lower() in VIDEO_SUFFIXES else {}


def fade_alphas(num_frames: int, fade_in: int, fade_out: int) -> np.ndarray | None:
    """Per-frame fade weights (1 = generated motion), as the release's ``setup_Nd``."""
    if fade_in <= 0 and fade_out <= 0:
        return None
    alpha = np.ones(num_frames, np.float32)
    if fade_in > 0:
        n = min(fade_in, num_frames)
        alpha[:n] = np.arange(n, dtype=np.float32) / fade_in
    if fade_out > 0 and num_frames > 1:
        start, end = max(num_frames - fade_out - 1, 0), num_frames - 1
        idx = np.arange(start, num_frames)
        span = max(end - start, 1)
        alpha[start:] = np.minimum(alpha[start:], np.maximum((end - idx) / span, 0))
    return alpha


@dataclass
class DittoModels:
    """The networks and encoders a pipeline runs, loaded once."""

    appearance_extractor: nn.Module
    motion_extractor: nn.Module
    warp_network: nn.Module
    decoder: nn.Module
    stitch_network: nn.Module
    lmdm: nn.Module
    speech_encoder: SpeechEncoder
    registrar: AvatarRegistrar
    identity: str = ""
    # The condition blocks the motion model was trained with (ConditionConfig's use_*
    # fields; empty: the release's layout, every block).
    conditions: Mapping[str, bool] = field(default_factory=dict)


def build_speech_encoder(
    checkpoints: ReleaseCheckpoints, hubert: str | None, device: str
) -> SpeechEncoder:
    """The release's streaming HuBERT ONNX when present, else a transformers HuBERT."""
    if hubert is not None and Path(hubert).suffix == ".onnx":
        return OnnxHubertEncoder(hubert, device=device)
    onnx_path = checkpoints.aux_models["hubert"]
    if hubert is None and onnx_path.is_file():
        return OnnxHubertEncoder(onnx_path, device=device)
    if hubert is None:
        raise CheckpointError(
            f"{onnx_path} not found: put the release's HuBERT there, or pass a transformers "
            "HuBERT model id or directory (--hubert)"
        )
    return TransformersHubertEncoder(hubert, device=device)


# A motion model run under the pipeline's DDIM: the LMDM's signature, ``denoiser(x_t, cond_frame,
# cond, t) -> (pred_noise, x_0)`` with ``seq_frames`` and ``motion_feat_dim`` (diffusion.ddim).
MotionDenoiser = Denoiser


class DittoPipeline:
    """Ditto, end to end. Build with `from_pretrained`; run `generate` or `stream`.

    The motion model is swappable here (see "The motion-model seam" in docs/ditto.md):
    ``motion_sampler`` is any `WindowSampler`, ``(cond_frame [B, D], cond [B, S, C],
    generator) -> window [B, S, D]`` (a few-step or distilled model that samples a window
    itself); ``motion_denoiser`` is any `MotionDenoiser` (the LMDM's signature, ``(x_t, cond_frame, cond,
    t) -> (pred_noise, x_0)`` with ``seq_frames`` and ``motion_feat_dim``), run under the
    pipeline's DDIM with ``steps``. Either replaces ``models.lmdm`` for sampling; inputs arrive on the CPU and
    the window may come back on any device. Optional attributes of either: ``seq_frames``
    (default: the LMDM's, 80) and ``cond_dim`` (checked against the conditions).
    """

    def __init__(
        self,
        models: DittoModels,
        config: DittoConfig | None = None,
        *,
        motion_sampler: WindowSampler | None = None,
        motion_denoiser: MotionDenoiser | None = None,
        shared_batching: bool | BatchingConfig | Mapping[str, Any] | None = None,
    ) -> None:
        if motion_sampler is not None and motion_denoiser is not None:
            raise TalkingHeadError("pass motion_sampler or motion_denoiser, not both")
        for name, fn in (("motion_sampler", motion_sampler), ("motion_denoiser", motion_denoiser)):
            if fn is not None and not callable(fn):
                raise TalkingHeadError(f"{name} must be callable, got {type(fn).__name__}")
        self.motion_sampler = motion_sampler
        self.motion_denoiser = motion_denoiser
        self.models = models
        self.config = config or DittoConfig()
        self.config.stitch_config()  # bad settings (blink without a blink clip) fail at load
        self.features = HubertFeatureExtractor(models.speech_encoder)
        self.cache = AvatarCache() if self.config.cache else None
        # (runtime, device) -> (warp, decode) callables: compiled or exported once per pipeline.
        self._render_nets: dict[tuple[str, str], tuple[Callable, Callable]] = {}
        self._render_nets_lock = threading.Lock()
        self._retargeting_nets: dict[tuple[str, str], tuple[nn.Module, nn.Module]] = {}
        # One worker batching the motion windows and renders of all this pipeline's streams.
        batching = BatchingConfig.coerce(shared_batching)
        self.batcher = SharedBatcher(batching, self._render_networks) if batching else None

    @property
    def device(self) -> torch.device:
        """Where the networks run."""
        return next(self.models.warp_network.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The precision frames are rendered in: float16 with ``fp16`` on CUDA, else float32."""
        return torch.float16 if self.config.fp16 and self.device.type == "cuda" else torch.float32

    def to(
        self,
        device: str | torch.device | torch.dtype | None = None,
        dtype: torch.dtype | None = None,
    ) -> DittoPipeline:
        """Move every network to `device` and/or set the rendering precision; returns self.

        As diffusers' ``DiffusionPipeline.to``: ``pipe.to("cuda")``, ``pipe.to("cuda",
        torch.float16)`` or ``pipe.to(torch.float16)``. float16 autocasts the renderer
        (warp and decode) on CUDA, as the release does, and sets ``config.fp16``; the
        weights stay float32: the motion model's DDIM schedule needs float32's range, and
        PyTorch has no CPU float16 3-D pooling. A transformers HuBERT moves too; the
        release's ONNX HuBERT keeps the device it was loaded for.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype not in (None, torch.float32, torch.float16):
            raise TalkingHeadError(f"dtype must be torch.float32 or torch.float16, not {dtype}")
        target = self.device if device is None else torch.device(device)
        if dtype == torch.float16 and target.type != "cuda":
            raise TalkingHeadError(
                f"float16 rendering needs a CUDA device, not {target}; use torch.float32"
            )
        if device is not None:
            m = self.models
            for net in (
                m.appearance_extractor,
                m.motion_extractor,
                m.warp_network,
                m.decoder,
                m.stitch_network,
                m.lmdm,
                m.registrar.motion_extractor,
                m.registrar.appearance_extractor,
            ):
                net.to(target)
            if isinstance(self.motion_denoiser, nn.Module):
                self.motion_denoiser.to(target)
            m.registrar.device = target
            encoder = getattr(m.speech_encoder, "model", None)
            if isinstance(encoder, nn.Module):
                encoder.to(target)
                m.speech_encoder.device = target
        changes: dict[str, Any] = {"device": str(target)}
        if dtype is not None:
            changes["fp16"] = dtype == torch.float16
        self.config = self.config.replace(**changes)
        return self

    def _settings(self, settings: Mapping[str, Any]) -> DittoConfig:
        """This call's config: ours with `settings` applied, checked before any work starts."""
        cfg = self.config.replace(**settings)
        check_ditto_config(cfg)
        cfg.stitch_config()
        return cfg

    @classmethod
    def from_pretrained(
        cls,
        checkpoints: str | os.PathLike[str] | None = None,
        *,
        download: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        hubert: str | None = None,
        config: DittoConfig | None = None,
        face_analyzer: FaceAnalyzer | None = None,
        motion_sampler: WindowSampler | None = None,
        motion_denoiser: MotionDenoiser | None = None,
        shared_batching: bool | BatchingConfig | Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> DittoPipeline:
        """Load the release (a local directory in its layout, or the model hub).

        Without ``checkpoints``, the model hub's ``revision`` (default: the pinned
        release commit) is taken from ``cache_dir`` (default: the standard cache),
        downloaded there if missing unless ``local_files_only`` (or ``download=False``).
        ``hubert``: a transformers HuBERT id/path, or an ``.onnx`` file, used when the
        release's ``hubert_streaming_fix_kv.onnx`` is absent. ``face_analyzer``: one
        already built (e.g. by the CLI's face check) instead of ``face_backend``'s.
        ``motion_sampler`` / ``motion_denoiser``: another motion model (see the class doc).
        ``shared_batching``: True (or a `BatchingConfig`, or a dict of its fields) runs the
        motion windows and renders of every stream on one worker that batches them across
        streams (`talkinghead.methods.ditto.batching`).
        ``settings`` override `DittoConfig` fields; ``device="auto"`` picks CUDA if present.
        Settings are checked before anything is resolved or downloaded.
        """
        cfg = (config or DittoConfig()).replace(**settings)
        check_ditto_config(cfg)
        BatchingConfig.coerce(shared_batching)  # bad values fail before anything is resolved
        settings = {**settings, "device": resolve_device(cfg.device)}
        cfg = cfg.replace(device=settings["device"])
        # Face and HuBERT models and the config pkl are optional (offline fallbacks exist).
        ckpt = resolve_checkpoints(
            checkpoints,
            download=download and not local_files_only,
            revision=revision,
            cache_dir=cache_dir,
            strict=False,
        )
        release_cfg = load_release_config(ckpt.config) if ckpt.config.is_file() else None
        if config is None and release_cfg is not None:
            cfg = config_from_release(release_cfg).replace(**settings)
        conditions = motion_conditions(ckpt, release_cfg)
        check_emotion_layout(cfg, conditions)
        missing = [p for p in ckpt.models.values() if not p.is_file()]
        if missing:
            raise CheckpointError(
                f"{ckpt.root}: missing Ditto checkpoint(s): " + ", ".join(str(p) for p in missing)
            )
        models_dir = ckpt.models["decoder"].parent
        sizes = read_sidecar(models_dir)
        device = cfg.device
        nets = {
            kind: load_official(kind, ckpt.models[kind], device=device, **sizes.get(kind, {}))
            for kind in OFFICIAL_NETWORKS
        }
        aux_dir = ckpt.aux_models["hubert"].parent
        analyzer = face_analyzer or create_face_analyzer(
            cfg.face_backend, aux_dir=aux_dir, crop=cfg.crop
        )
        # The registrar runs the extractors loaded above: each checkpoint is read once.
        registrar = AvatarRegistrar(
            analyzer,
            nets["motion_extractor"],
            nets["appearance_extractor"],
            device=device,
            batch_size=cfg.batch_size,
            smooth_k=cfg.source_smooth_k,
            model_identity=AvatarRegistrar.checkpoints_identity(
                ckpt.models["motion_extractor"], ckpt.models["appearance_extractor"]
            ),
        )
        models = DittoModels(
            appearance_extractor=nets["appearance_extractor"],
            motion_extractor=nets["motion_extractor"],
            warp_network=nets["warp_network"],
            decoder=nets["decoder"],
            stitch_network=nets["stitch_network"],
            lmdm=nets["lmdm"],
            speech_encoder=build_speech_encoder(ckpt, hubert, device),
            registrar=registrar,
            identity=str(ckpt.root),
            conditions=conditions,
        )
        return cls(
            models,
            cfg,
            motion_sampler=motion_sampler,
            motion_denoiser=motion_denoiser,
            shared_batching=shared_batching,
        )

    @property
    def face_backend(self) -> str:
        return str(getattr(self.models.registrar.face_analyzer, "name", "unknown"))

    def __repr__(self) -> str:
        cfg = self.config
        if self.motion_sampler is not None:
            motion = type(self.motion_sampler).__name__
        elif self.motion_denoiser is not None:
            motion = f"{type(self.motion_denoiser).__name__}, {cfg.steps} DDIM steps"
        else:
            motion = f"LMDM, {cfg.steps} DDIM steps"
        speech = self.models.speech_encoder
        return (
            f"DittoPipeline(checkpoints={self.models.identity!r}, device={self.device}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}, runtime={cfg.runtime!r}, "
            f"motion={motion!r}, face_backend={self.face_backend!r}, "
            f"hubert={getattr(speech, 'where', type(speech).__name__)!r}, "
            f"shared_batching={self.batcher is not None})"
        )

    # ------------------------------------------------------------------ building blocks

    def register(
        self,
        source: SourceInput | Avatar,
        *,
        max_frames: int | None = None,
        config: DittoConfig | None = None,
        progress: Progress | None = None,
    ) -> Avatar:
        """Register a source (from the cache when it was registered before).

        `source`: a file, or a picture or video in memory (see `generate`); the cache
        keys in-memory sources by their pixels. An `Avatar` is returned as it is.
        """
        if isinstance(source, Avatar):
            return source
        cfg = config or self.config
        registrar = self._registrar(cfg)
        report = (lambda done, total: progress("register", done, total)) if progress else None
        if not isinstance(source, (str, os.PathLike)):
            media = source_media(source, max_side=cfg.max_size, max_frames=max_frames)
            if self.cache is not None and cfg.cache:
                return self.cache.get_or_register_media(
                    media,
                    registrar,
                    max_side=cfg.max_size,
                    max_frames=max_frames,
                    progress=report,
                )
            return registrar.register(media, progress=report)
        source = Path(source)
        if not source.is_file():
            raise MediaError(f"{source}: source file not found")
        if self.cache is not None and cfg.cache:
            return self.cache.get_or_register(
                source,
                registrar,
                max_side=cfg.max_size,
                max_frames=max_frames,
                progress=report,
            )
        from talkinghead.media.source import load_source

        media = load_source(source, max_side=cfg.max_size, max_frames=max_frames)
        avatar = registrar.register(media, progress=report)
        avatar.source_path = str(source)
        return avatar

    def _registrar(self, cfg: DittoConfig) -> AvatarRegistrar:
        """The registrar, with this call's source smoothing (a shallow copy when it differs)."""
        registrar = self.models.registrar
        if registrar.smooth_k == cfg.source_smooth_k:
            return registrar
        registrar = copy.copy(registrar)  # shares the networks; the cache key has smooth_k
        registrar.smooth_k = cfg.source_smooth_k
        return registrar

    def _conditions(self, avatar: Avatar, cfg: DittoConfig) -> ConditionBuilder:
        custom = self.motion_sampler or self.motion_denoiser
        expected = (
            getattr(custom, "cond_dim", None)
            if custom is not None
            else getattr(getattr(self.models.lmdm, "config", None), "audio_feat_dim", None)
        )
        audio_dim = self.features.feat_dim
        cond_cfg = ConditionConfig(
            audio_dim=audio_dim, eye_first_frame=cfg.eye_f0_mode, **self.models.conditions
        )
        check_emotion_layout(cfg, self.models.conditions)
        if expected is not None and cond_cfg.dim != expected:
            raise CheckpointError(
                f"the motion model expects {expected}-dim conditions, but "
                f"{audio_dim}-dim speech features give {cond_cfg.dim}"
            )
        # The release's ch_info: another registration supplies the eye and shape blocks.
        cond_src = _condition_source(cfg) or avatar
        mesh = cond_src.mesh if cond_src.mesh is not None else avatar.mesh
        if cond_cfg.use_landmarks and mesh is None:
            raise TalkingHeadError(
                f"the motion model was trained with use_lmk, which needs the source's face "
                f"mesh, but the {avatar.face_backend} face analyser gave none: register the "
                "source with --face-backend mediapipe or release"
            )
        builder = ConditionBuilder(
            cond_cfg,
            emotion=cfg.emotion,
            eye_open=cond_src.eye_open,
            eye_ball=cond_src.eye_ball,
            shape_code=cond_src.sc,
            landmarks=mesh if cond_cfg.use_landmarks else None,
        )
        if cfg.controls is not None and cfg.controls.conditions_controlled:
            return _TimelineConditions(builder, cfg.controls)  # type: ignore[return-value]
        return builder

    def _window_sampler(
        self, cfg: DittoConfig, client: BatchClient | None = None
    ) -> tuple[WindowSampler, int]:
        """The window sampler this call runs, and its window length (see the class doc).

        With a shared-batching ``client`` the pipeline's DDIM windows go to the shared worker
        (a ``motion_sampler`` samples its windows itself, with its generator, so it does not).
        """
        lmdm = self.models.lmdm
        lmdm_frames = getattr(getattr(lmdm, "config", None), "seq_frames", 80)
        if self.motion_sampler is not None:
            custom = self.motion_sampler

            def sample_custom(cond_frame, cond, generator):
                return torch.as_tensor(custom(cond_frame, cond, generator)).cpu()

            return sample_custom, int(getattr(custom, "seq_frames", lmdm_frames))
        sampler = DDIMSampler(num_steps=cfg.steps)
        model = self.motion_denoiser if self.motion_denoiser is not None else lmdm
        params = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        device = params.device if params is not None else torch.device("cpu")
        if client is not None:

            def sample_shared(cond_frame, cond, generator):
                return client.sample_window(
                    model,
                    sampler,
                    cond_frame,
                    cond,
                    generator,
                    device=device,
                    graphs=cfg.runtime == "compile",  # CUDA graphs for the LMDM step
                )

            return sample_shared, int(getattr(model, "seq_frames", lmdm_frames))

        def sample_window(cond_frame, cond, generator):
            return sampler(model, cond_frame.to(device), cond.to(device), generator=generator).cpu()

        return sample_window, int(getattr(model, "seq_frames", lmdm_frames))

    def _motion_generator(
        self,
        avatar: Avatar,
        cfg: DittoConfig,
        streaming: bool,
        builder: ConditionBuilder,
        generator: torch.Generator | None = None,
        client: BatchClient | None = None,
    ) -> ClipwiseGenerator:
        sample_window, seq_frames = self._window_sampler(cfg, client)
        try:
            clip_cfg = cfg.clipwise(streaming, seq_frames)
        except ValueError as exc:  # e.g. an overlap that does not fit a short-window model
            raise TalkingHeadError(
                f"motion settings do not fit the motion model ({seq_frames}-frame windows): {exc}"
            ) from None
        prefix = None
        if clip_cfg.fuse == "online":
            # The release's streaming driver starts from `overlap` frames of silence.
            silence = self.features.features(
                np.zeros(clip_cfg.overlap * SAMPLES_PER_FRAME, np.float32)
            )
            prefix = builder(silence, start=-clip_cfg.overlap)
        if generator is None and cfg.seed is not None:
            generator = torch.Generator().manual_seed(cfg.seed)
        cond_src = _condition_source(cfg)
        first = cond_src.x_s_info if cond_src is not None else avatar.x_s_info_at(0)
        return ClipwiseGenerator(
            sample_window,
            dict_to_motion(first)[0],
            clip_cfg,
            clip_range=cfg.motion_clip,
            prefix=prefix,
            generator=generator,
        )

    def motion(
        self,
        avatar: Avatar,
        audio_16k: np.ndarray,
        *,
        config: DittoConfig | None = None,
        progress: Progress | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Motion [N, 265] for a whole clip, and the relative-driving reference d0 [265].

        d0 is None offline (the first generated frame is the reference, as the release).
        `generator` (default: one seeded with the config's ``seed``) drives the sampler.
        """
        cfg = config or self.config
        if progress:
            progress("features", 0, None)
        feats = self.features.features(audio_16k)
        if progress:
            progress("features", len(feats), len(feats))
        builder = self._conditions(avatar, cfg)
        gen = self._motion_generator(
            avatar, cfg, streaming=False, builder=builder, generator=generator
        )
        online = gen.config.fuse == "online"
        windows = (lambda done, total: progress("motion", done, total)) if progress else None
        motion = gen.generate(builder(feats, start=0), with_prefix=online, progress=windows)
        d0 = None
        if online:
            d0, motion = motion[0], motion[gen.prefix.shape[0] :]
        return motion.numpy(), (None if d0 is None else d0.numpy())

    # ------------------------------------------------------------------ rendering

    def _renderer(self, avatar: Avatar, cfg: DittoConfig, total: int | None, d0) -> _Renderer:
        retarget = self._retargeting(avatar, cfg) if cfg.retargets else None
        return _Renderer(
            self.models, avatar, cfg, total, d0, networks=self._render_networks, retarget=retarget
        )

    def _retargeting(self, avatar: Avatar, cfg: DittoConfig) -> _Retargeting:
        """LivePortrait's eye/lip MLPs (loaded once per file) and the source's own ratios."""
        from talkinghead.face.ratios import eye_close_ratio, lip_close_ratio
        from talkinghead.models.retargeting import load_retargeting_networks

        key = (str(Path(cfg.retargeting).resolve()), str(self.device))  # type: ignore[arg-type]
        nets = self._retargeting_nets.get(key)
        if nets is None:
            nets = self._retargeting_nets[key] = load_retargeting_networks(
                cfg.retargeting,
                self.device,  # type: ignore[arg-type]
            )
        # The MLPs take the source face's close ratios (its first frame's), from landmarks
        # the avatar does not keep: one more face analysis, only when a slider is set.
        face = self.models.registrar.face_analyzer.analyze(avatar.frames[0])
        return _Retargeting(
            *nets,
            torch.from_numpy(eye_close_ratio(face.landmarks)),
            torch.from_numpy(lip_close_ratio(face.landmarks)),
            cfg.eye_open_retarget,
            cfg.lip_open_retarget,
        )

    def _render_networks(
        self, runtime: str, example: tuple[torch.Tensor, ...]
    ) -> tuple[Callable, Callable]:
        """Warp and decode as `runtime` runs them (`talkinghead.export.runtime`), built on first
        use from `example` warp inputs (batch 1) and kept for the pipeline's life."""
        warp, decoder = self.models.warp_network, self.models.decoder
        device = next(warp.parameters()).device
        if runs_in_torch(runtime, device):
            return warp, decoder
        key = (runtime, str(device))
        with self._render_nets_lock:
            if key not in self._render_nets:
                with torch.inference_mode():
                    feature = warp(*example)
                self._render_nets[key] = (
                    runtime_network(warp, "warp_network", runtime, example),
                    runtime_network(decoder, "decoder", runtime, (feature,)),
                )
            return self._render_nets[key]

    def generate(
        self,
        source: SourceInput | Avatar,
        audio: AudioInput,
        output: str | os.PathLike[str] | None = None,
        *,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        streaming: bool = False,
        progress: Progress | None = None,
        **settings: Any,
    ) -> GenerationResult:
        """`source` speaking `audio`: a video written to `output`, or frames returned.

        source: a file (image or video), a PIL image, an HxWx3 array (uint8, or float in
            [0, 1]), a video as an [F, H, W, 3] array or a list of frames, or an `Avatar`.
        audio: a file, an ``(array, sample_rate)`` pair, or a bare array at 16 kHz.
        output: an .mp4/.mov/.mkv file (H.264 + the input audio as AAC), a directory
            ending in "/" (PNG frames), or "-" (raw RGB frames on stdout); written to a
            temporary file and renamed on success, so a failure leaves nothing behind.
            None: the result holds the `frames` (`output_type` "np": uint8 [N, H, W, 3];
            "pil": PIL images; "iterator": rendered while read, for long clips) and the
            input `audio` as float32 mono at its `sample_rate`.
        generator: the motion sampler's randomness, instead of ``seed``; a CPU generator
            seeded with s gives the frames of ``seed=s``.
        streaming: run the streaming pipeline, the audio pushed in 200 ms chunks as a
            live client would (the release's online motion settings).
        settings: `DittoConfig` fields for this call.
        """
        from talkinghead.media.writer import open_writer

        if output_type not in OUTPUT_TYPES:
            raise TalkingHeadError(
                f"output_type must be one of {', '.join(OUTPUT_TYPES)}, not {output_type!r}"
            )
        cfg = self._settings(settings)
        if output is not None:
            check_not_an_input(output, {"source": source, "audio": audio})
            check_output(output)  # before the work, not after minutes of it
        where = audio_name(audio)
        samples, rate = read_audio(audio)
        audio_16k = to_sample_rate(samples, rate, SAMPLE_RATE, where)
        n = num_frames(len(audio_16k))
        if n == 0:
            raise MediaError(f"{where}: the audio is empty")
        max_frames = cfg.max_source_frames if cfg.max_source_frames is not None else n
        if cfg.max_source_frames is None and cfg.driving_frames is not None:
            # The release registers N_d frames of a video source when template_n_frames is unset.
            max_frames = min(n, cfg.driving_frames)
        cfg = self._with_condition_source(cfg, max_frames, progress)
        avatar = self.register(source, max_frames=max_frames, config=cfg, progress=progress)
        result = GenerationResult(
            output=None,
            num_frames=n,
            size=avatar.frame_size,
            face_backend=avatar.face_backend,
            num_faces=avatar.num_faces,
        )
        frames: Iterator[np.ndarray] | None = None
        if streaming:
            session = DittoStream(self, avatar, cfg, generator=generator)
            frames = _streamed_frames(session, audio_16k, progress)
        else:
            motion, d0 = self.motion(
                avatar, audio_16k, config=cfg, progress=progress, generator=generator
            )
            if output is None:
                frames = self._rendered_frames(avatar, motion, d0, cfg, progress)
        if output is None:
            assert frames is not None
            result.frames = _collect_frames(frames, n, avatar.frame_size, output_type)
            result.audio, result.sample_rate = np.clip(samples, -1.0, 1.0), rate
            return result
        writer = open_writer(
            output,
            fps=FPS,
            audio=(to_sample_rate(samples, rate, MUX_RATE, where), MUX_RATE),
            **video_options(output),
        )
        try:
            if frames is not None:  # streamed: the session renders in its own threads
                for frame in frames:
                    writer.write(frame)
                result.output = writer.close()
                return result
            renderer = self._renderer(avatar, cfg, n, d0)
            with StageRunner(renderer.stages(writer, progress), maxsize=2) as runner:
                for start in range(0, n, cfg.batch_size):
                    runner.put((start, motion[start : start + cfg.batch_size]))
                runner.close()
                for _ in runner.results():
                    pass
            path = writer.close()
        except BaseException:
            writer.abort()
            if frames is not None:
                frames.close()  # stops the streaming session's threads now
            raise
        result.output = path
        return result

    def _rendered_frames(
        self,
        avatar: Avatar,
        motion: np.ndarray,
        d0: np.ndarray | None,
        cfg: DittoConfig,
        progress: Progress | None,
    ) -> Iterator[np.ndarray]:
        """The offline renderer's frames, in order, as the caller reads them.

        At most `_BATCHES_IN_FLIGHT` batches run ahead of the reader, so a slow reader
        does not make rendered frames pile up; stopping early stops every stage.
        """
        n, b = len(motion), cfg.batch_size
        renderer = self._renderer(avatar, cfg, n, d0)
        done = 0
        if progress:
            progress("render", 0, n)
        with StageRunner(renderer.stages(), maxsize=2) as runner:
            batches = runner.results()
            for i, start in enumerate(range(0, n, b)):
                runner.put((start, motion[start : start + b]))
                if i < _BATCHES_IN_FLIGHT:
                    continue
                frames = next(batches)
                done += len(frames)
                if progress:
                    progress("render", done, n)
                yield from frames
            runner.close()
            for frames in batches:
                done += len(frames)
                if progress:
                    progress("render", done, n)
                yield from frames

    def stream(
        self,
        source: SourceInput | Avatar,
        *,
        generator: torch.Generator | None = None,
        **settings: Any,
    ) -> DittoStream:
        """A streaming session: `push(pcm_16k)` -> frames, `close()` -> the remaining frames."""
        cfg = self._settings(settings)
        max_frames = (
            cfg.max_source_frames if cfg.max_source_frames is not None else cfg.driving_frames
        )
        cfg = self._with_condition_source(cfg, max_frames, None)
        avatar = self.register(source, max_frames=max_frames, config=cfg)
        return DittoStream(self, avatar, cfg, generator=generator)

    def _with_condition_source(
        self, cfg: DittoConfig, max_frames: int | None, progress: Progress | None
    ) -> DittoConfig:
        """`cfg` with a condition source given as a file registered (as the source is)."""
        if not isinstance(cfg.condition_source, (str, os.PathLike)):
            return cfg
        cond = self.register(
            cfg.condition_source, max_frames=max_frames, config=cfg, progress=progress
        )
        return cfg.replace(condition_source=cond)


@dataclass
class GenerationResult:
    """What `generate` made: a written `output`, or (output=None) the `frames` and `audio`.

    frames:      uint8 [N, H, W, 3] ("np"), a list of PIL images ("pil"), or an iterator
                 of [H, W, 3] frames rendered as it is read ("iterator"); None when written
    audio:       the input audio, float32 mono in [-1, 1] at `sample_rate` (its own rate)
    num_frames:  N = ceil(seconds x fps); size: (height, width)
    """

    output: Path | None
    num_frames: int
    size: tuple[int, int]
    face_backend: str
    num_faces: int = 1
    frames: np.ndarray | list[Any] | Iterator[np.ndarray] | None = None
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    fps: int = FPS


def _streamed_frames(
    session: DittoStream, audio_16k: np.ndarray, progress: Progress | None
) -> Iterator[np.ndarray]:
    """A whole clip through a streaming session, pushed in `STREAM_CHUNK` pieces."""
    total = num_frames(len(audio_16k))
    if progress:
        progress("stream", 0, total)
    chunks = (audio_16k[i : i + STREAM_CHUNK] for i in range(0, len(audio_16k), STREAM_CHUNK))
    for done, frame in enumerate(session.frames(chunks), 1):
        if progress:
            progress("stream", done, total)
        yield frame


def _collect_frames(
    frames: Iterator[np.ndarray], n: int, size: tuple[int, int], output_type: str
) -> np.ndarray | list[Any] | Iterator[np.ndarray]:
    """`generate`'s frames in the form `output_type` names."""
    if output_type == "iterator":
        return frames
    if output_type == "pil":
        from PIL import Image

        return [Image.fromarray(frame) for frame in frames]
    out = np.empty((n, *size, 3), np.uint8)  # filled in place: no second copy of the clip
    count = 0
    for count, frame in enumerate(frames, 1):
        out[count - 1] = frame
    return out[:count]


def _condition_source(cfg: DittoConfig) -> ConditionSource | None:
    cond = cfg.condition_source
    if cond is None:
        return None
    if not isinstance(cond, ConditionSource):  # a file: generate/stream register it first
        raise TalkingHeadError(
            f"condition_source {cond!r} is not registered yet; pass it to generate() or stream()"
        )
    return cond


class _TimelineConditions:
    """A `ConditionBuilder` whose emotion/eye-openness blocks follow a control timeline."""

    def __init__(self, builder: ConditionBuilder, timeline: Any) -> None:
        self.builder, self.timeline, self.config = builder, timeline, builder.config

    def __call__(self, audio: torch.Tensor | np.ndarray, start: int = 0) -> torch.Tensor:
        return self.timeline.apply_to_conditions(self.builder(audio, start), start, self.config)


@dataclass
class _Retargeting:
    """The eye-open / lip-open sliders on Ditto's keypoints (`models.retargeting.retarget`)."""

    eye_network: nn.Module
    lip_network: nn.Module
    source_eye_ratio: torch.Tensor
    source_lip_ratio: torch.Tensor
    eye_open: float | None
    lip_open: float | None

    def __call__(self, kp_s: torch.Tensor, kp_d: torch.Tensor) -> torch.Tensor:
        from talkinghead.models.retargeting import retarget

        device = next(self.eye_network.parameters()).device
        out = retarget(
            kp_d.to(device),
            kp_s.to(device),
            eye_network=self.eye_network,
            lip_network=self.lip_network,
            source_eye_ratio=self.source_eye_ratio.to(device),
            source_lip_ratio=self.source_lip_ratio.to(device),
            eye_open=self.eye_open,
            lip_open=self.lip_open,
        )
        return out.to(kp_d.device)


class _Renderer:
    """Motion batches -> frames: stitch + warp, decode, paste-back (one stage each)."""

    def __init__(
        self,
        models: DittoModels,
        avatar: Avatar,
        cfg: DittoConfig,
        total,
        d0,
        networks: Callable[[str, tuple], tuple[Callable, Callable]] | None = None,
        retarget: _Retargeting | None = None,
    ) -> None:
        self.models = models
        self.retarget = retarget
        self.avatar = avatar
        self.cfg = cfg
        self.device = next(models.warp_network.parameters()).device
        stitch_cfg = cfg.stitch_config(
            source_scale=float(avatar.x_s_info["scale"][0, 0]), is_image=avatar.is_image
        )
        self.stitch_network = models.stitch_network if cfg.stitch.flag_stitching else None
        if retarget is not None:
            # Sliders go on the posed keypoints before the stitching network, as LivePortrait
            # applies them, so the stitcher stops at posing and `warp` stitches afterwards.
            stitch_cfg = dataclasses.replace(stitch_cfg, flag_stitching=False)
        self.stitcher = MotionStitcher(
            self.stitch_network if retarget is None else None, stitch_cfg
        )
        x_s0 = {k: torch.from_numpy(v[:1]) for k, v in avatar.x_s_info.items()}
        d0_info = None if d0 is None else motion_to_dict(torch.as_tensor(d0)[None])
        # Blinks are planned over the clip's length; unknown (streaming): the release's N_d.
        planned = total if total is not None else cfg.driving_frames
        self.stitcher.setup(x_s0, avatar.is_image, num_frames=planned, d0=d0_info)
        self.total = total
        self.fades = fade_alphas(total, cfg.fade_in, cfg.fade_out) if total else None
        self.timeline = cfg.controls
        self.f_s = torch.from_numpy(avatar.f_s)
        # An image source's feature volume goes to the device once and is broadcast to each
        # batch (stride 0), never copied per frame.
        self.f_s_device = self.f_s[:1].to(self.device) if avatar.num_frames == 1 else None
        self.paster = PasteBack()
        on_device = cfg.device_paste if cfg.device_paste is not None else self.device.type == "cuda"
        # On the device, crops stay there as uint8 and only uint8 frames come back.
        self.device_paster = DevicePasteBack() if on_device else None
        self.yuv_out = False  # set by `stages` for a writer that takes 4:2:0 planes
        self._source_frames: dict[int, torch.Tensor] = {}
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.autocast = cfg.fp16 and self.device.type == "cuda"
        self._networks = networks
        self._nets: tuple[Callable, Callable] | None = None

    def _controls(self, start: int, b: int) -> StitchControl | list[StitchControl] | None:
        if self.timeline is None:
            if self.fades is None:
                return None
            return StitchControl(fade_alpha=torch.from_numpy(self.fades[start : start + b]))
        frames = self.timeline.stitch_controls(start, b)
        if self.fades is not None:
            # As the release's setup_Nd: fade_in/fade_out set fade_alpha on their frames.
            fades = self.fades[start : start + b]
            frames = [
                dataclasses.replace(c, fade_alpha=float(a)) if a < 1 else c
                for c, a in zip(frames, fades, strict=True)
            ]
        return frames

    @torch.inference_mode()
    def warp(self, item: tuple[int, np.ndarray]) -> list[tuple[int, torch.Tensor]]:
        start, f_s, x_s, x_d = self.prepare(item)
        warp, _ = self._render_nets((f_s[:1], x_s[:1], x_d[:1]))
        with torch.autocast("cuda", torch.float16, enabled=self.autocast):
            out = warp(f_s, x_s, x_d)
        return [(start, out)]

    @torch.inference_mode()
    def prepare(
        self, item: tuple[int, np.ndarray]
    ) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A motion batch -> the warp's inputs on the device: (start, f_s, x_s, x_d)."""
        start, motion = item
        b = len(motion)
        src_idx = self.avatar.frame_indices(start + b)[start:]
        x_s_info = {k: torch.from_numpy(v[src_idx]) for k, v in self.avatar.x_s_info.items()}
        x_d = torch.from_numpy(np.ascontiguousarray(motion))
        x_s, x_d = self.stitcher(x_s_info, x_d, start, self._controls(start, b))
        if self.retarget is not None:
            x_d = self.retarget(x_s, x_d)
            if self.stitch_network is not None:
                x_d = self.stitch_network(x_s, x_d)
        if self.f_s_device is not None:
            f_s = self.f_s_device.expand(b, -1, -1, -1, -1)
        else:
            f_s = self.f_s[src_idx].to(self.device)
        return start, f_s, x_s.to(self.device), x_d.to(self.device)

    def _render_nets(self, example: tuple[torch.Tensor, ...]) -> tuple[Callable, Callable]:
        if self._nets is None:
            if self._networks is None or runs_in_torch(self.cfg.runtime, self.device):
                self._nets = (self.models.warp_network, self.models.decoder)
            else:
                example = tuple(x.contiguous() for x in example)
                self._nets = self._networks(self.cfg.runtime, example)
        return self._nets

    @torch.inference_mode()
    def decode(self, item: tuple[int, torch.Tensor]) -> list[tuple[int, np.ndarray]]:
        start, feature = item
        _, decode = self._render_nets(())
        with torch.autocast("cuda", torch.float16, enabled=self.autocast):
            image = decode(feature)
        return [(start, self.crops(image))]

    @torch.inference_mode()
    def crops(self, image: torch.Tensor) -> Any:
        """Decoded images [B, 3, H, W] -> uint8 crops [B, H, W, 3] (host numpy, or on the
        device for the device paste-back)."""
        # Rounded to uint8 where it was rendered (x + 0.5 truncated: round half up, as
        # PasteBack rounds a float render): a quarter of float32's bytes to move.
        crops = image.float().clamp_(0, 1).mul_(255).add_(0.5).to(torch.uint8)
        crops = crops.permute(0, 2, 3, 1)
        if self.device_paster is None:
            return crops.cpu().numpy()
        return crops.contiguous()

    def _device_frames(self, src_idx: Sequence[int]) -> torch.Tensor:
        """The source frames under this batch, uint8 [B, H, W, 3] on the device (an image
        source: its one frame, uploaded once and broadcast)."""
        if self.avatar.num_frames == 1:
            if 0 not in self._source_frames:
                frame = torch.from_numpy(np.ascontiguousarray(self.avatar.frames[0]))
                self._source_frames[0] = frame.to(self.device)[None]
            return self._source_frames[0].expand(len(src_idx), -1, -1, -1)
        batch = np.stack([self.avatar.frames[j] for j in src_idx])
        return torch.from_numpy(batch).to(self.device, non_blocking=True)

    def _download(self, frames: torch.Tensor) -> np.ndarray:
        """uint8 frames to the host: into pinned memory on a copy stream, so the copy
        overlaps the warp and decode kernels queued after it."""
        if self._copy_stream is None:
            return frames.numpy()
        host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
        compute = torch.cuda.current_stream(self.device)
        self._copy_stream.wait_stream(compute)
        with torch.cuda.stream(self._copy_stream):
            host.copy_(frames, non_blocking=True)
            frames.record_stream(self._copy_stream)
        self._copy_stream.synchronize()
        return host.numpy()

    @torch.inference_mode()
    def paste(self, item: tuple[int, Any]) -> list[np.ndarray]:
        start, crops = item
        src_idx = self.avatar.frame_indices(start + len(crops))[start:]
        if self.device_paster is None:
            return [
                self.paster(self.avatar.frames[j], crop, self.avatar.M_c2o[j])
                for j, crop in zip(src_idx, crops, strict=True)
            ]
        frames = self.device_paster(
            self._device_frames(src_idx), crops, np.asarray(self.avatar.M_c2o)[src_idx]
        )
        if self.yuv_out:  # converted where rendered: half the bytes cross to the host
            frames = rgb_to_yuv420(frames)
        return list(self._download(frames))

    def stages(self, writer=None, progress: Progress | None = None) -> list[Stage]:
        counts = {"render": 0}
        lock = threading.Lock()
        total = self.total
        # A video writer on the device path gets 4:2:0 planes made on the device.
        self.yuv_out = self.device_paster is not None and bool(
            getattr(writer, "accepts_yuv420", False)
        )
        size = self.avatar.frame_size

        def write(frames: list[np.ndarray]) -> list[Any]:
            if self.yuv_out:
                for planes in frames:
                    writer.write_yuv420(planes, size)
            else:
                writer.write_batch(frames)
            with lock:
                counts["render"] += len(frames)
            if progress:
                progress("render", counts["render"], total)
            return []

        stages = [
            Stage("warp", self.warp),
            Stage("decode", self.decode),
            Stage("paste", lambda item: [self.paste(item)]),
        ]
        if writer is not None:
            stages.append(Stage("write", write))
            if progress:
                progress("render", 0, total)  # the bar exists from the start of rendering
        return stages


class DittoStream:
    """Streaming generation: audio in (16 kHz mono float32 or PCM16 bytes), frames out.

    Frames come back as RGB uint8 arrays of the source's size, in order. `push`
    never blocks on rendering: it returns the frames finished so far; `close`
    waits for the rest. Uses the release's online motion settings (windows with
    `online_overlap` frames of overlap after a prefix of silence), with which
    the offline pipeline (``online=True``) produces the same motion. The first frame
    needs 0.8 s of speech (plus HuBERT's 80 ms look-ahead); ``online_fuse=5`` (the
    low-latency setting, `ClipwiseConfig.low_latency`) halves that to 0.4 s.
    """

    def __init__(
        self,
        pipe: DittoPipeline,
        avatar: Avatar,
        cfg: DittoConfig,
        generator: torch.Generator | None = None,
    ) -> None:
        self.pipe = pipe
        self.avatar = avatar
        self.cfg = cfg
        self.features = pipe.features.stream()
        self.builder = pipe._conditions(avatar, cfg)
        # With shared batching: this stream's handle on the pipeline's worker, closed at the
        # end (close, abort, or when the stream is dropped).
        self._client = pipe.batcher.connect() if pipe.batcher is not None else None
        if self._client is not None:
            weakref.finalize(self, self._client.close_later)
        try:
            self.motion = pipe._motion_generator(
                avatar,
                cfg,
                streaming=True,
                builder=self.builder,
                generator=generator,
                client=self._client,
            )
        except BaseException:
            if self._client is not None:
                self._client.close()
            raise
        self.frames_in = 0  # feature frames received
        self.frames_out = 0
        self._renderer: _Renderer | None = None
        self._pending: list[np.ndarray] = []  # motion frames not yet batched
        self._runner: StageRunner | None = None
        self._closed = False

    def _start(self) -> StageRunner:
        d0 = self.motion.first_frame
        self._renderer = self.pipe._renderer(
            self.avatar, self.cfg, None, None if d0 is None else d0.numpy()
        )
        if self._client is None:
            stages = self._renderer.stages()
        else:  # warp + decode on the shared worker, batched with other streams'
            stages = render_stages(self._renderer, self._client)
        self._runner = StageRunner(stages, maxsize=4).start()
        return self._runner

    def _feed(self, motion: torch.Tensor, final: bool) -> None:
        if len(motion):
            self._pending.extend(motion.numpy())
        b = self.cfg.batch_size
        while self._pending and (len(self._pending) >= b or final):
            batch, self._pending = self._pending[:b], self._pending[b:]
            runner = self._runner or self._start()
            runner.put((self.frames_out, np.stack(batch)))
            self.frames_out += len(batch)

    def set_controls(self, controls: Any, *, relative: bool = False) -> None:
        """Replace the control timeline from now on (a live client's controls message).

        ``controls``: anything `ControlTimeline.coerce` takes, or None to clear. Frames
        count from the start of the session; ``relative=True`` counts them from the next
        frame to be rendered instead. Pose, expression, gaze and fade controls apply to
        every frame rendered after this call; emotion and eye openness condition the motion
        model, so they reach frames whose speech arrives after it.
        """
        from talkinghead.methods.ditto.controls import ControlTimeline

        timeline = ControlTimeline.coerce(controls)
        if timeline is not None and relative:
            offset = self.frames_out
            timeline = dataclasses.replace(
                timeline,
                keyframes=tuple(
                    dataclasses.replace(k, frame=k.frame + offset) for k in timeline.keyframes
                ),
            )
        self.cfg = self.cfg.replace(controls=timeline)
        if self._renderer is not None:
            self._renderer.timeline = timeline
        base = getattr(self.builder, "builder", self.builder)
        if timeline is not None and timeline.conditions_controlled:
            self.builder = _TimelineConditions(base, timeline)
        else:
            self.builder = base

    def _collect(self) -> list[np.ndarray]:
        if self._runner is None:
            return []
        return [frame for batch in self._runner.poll() for frame in batch]

    def push(self, audio: np.ndarray | bytes) -> list[np.ndarray]:
        """Add 16 kHz audio (float, int16 or int32 samples, mono or [n, channels], or PCM16
        bytes); returns the frames rendered so far (possibly none)."""
        if self._closed:
            raise TalkingHeadError("push() on a closed stream")
        from talkinghead.audio.io import chunk_to_mono

        # int16 arrays once went in unscaled and [n, 2] interleaved; NaN went on to HuBERT.
        feats = self.features.push(chunk_to_mono(audio, "push()"))
        if len(feats):
            cond = self.builder(feats, start=self.frames_in)
            self.frames_in += len(feats)
            self._feed(self.motion.push(cond), final=False)
        return self._collect()

    def finish(self) -> Iterator[np.ndarray]:
        """End of speech: flush everything, yielding the remaining frames as they are rendered."""
        if self._closed:
            return
        self._closed = True
        try:
            feats = self.features.flush()
            if len(feats):
                cond = self.builder(feats, start=self.frames_in)
                self.frames_in += len(feats)
                self._feed(self.motion.push(cond), final=False)
            self._feed(self.motion.flush(), final=True)
            if self._runner is not None:
                self._runner.close()
                for batch in self._runner.results():
                    yield from batch
        finally:
            if self._client is not None:
                self._client.close()

    def close(self) -> list[np.ndarray]:
        """End of speech: flush everything and return the remaining frames."""
        return list(self.finish())

    def abort(self) -> None:
        self._closed = True
        if self._runner is not None:
            self._runner.abort()
        if self._client is not None:
            self._client.close()  # drops its waiting requests and wakes its stages
        if self._runner is not None:
            self._runner.join()

    def frames(self, chunks: Sequence[np.ndarray] | Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Convenience: push every chunk, yielding frames as they come, then close."""
        try:
            for chunk in chunks:
                yield from self.push(chunk)
            yield from self.finish()
        except BaseException:
            self.abort()
            raise


def generate_video(
    source: SourceInput,
    audio: AudioInput,
    output: str | os.PathLike[str],
    *,
    checkpoints: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    steps: int | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    download: bool = True,
    revision: str | None = None,
    hubert: str | None = None,
    face_analyzer: FaceAnalyzer | None = None,
    streaming: bool = False,
    on_load: Callable[[DittoPipeline], None] | None = None,
    **settings: Any,
) -> GenerationResult:
    """The registry's ``generate`` entry point (``talkinghead generate``): load, generate, done.

    `DittoPipeline.from_pretrained` (``checkpoints``, ``download``, ``revision``,
    ``hubert``, ``face_analyzer`` and the `DittoConfig` ``settings``; ``steps=None`` keeps
    the release config's) then `DittoPipeline.generate` (``streaming``, ``progress``).
    ``on_load`` is called with the loaded pipeline before generation starts (the CLI
    reports its face backend). Returns the `GenerationResult`: ``output`` is the written
    path, ``num_frames`` and ``num_faces`` what the CLI reports.
    """
    if steps is not None:
        settings["steps"] = steps
    pipe = DittoPipeline.from_pretrained(
        checkpoints,
        download=download,
        revision=revision,
        hubert=hubert,
        face_analyzer=face_analyzer,
        seed=seed,
        device=device,
        **settings,
    )
    if on_load is not None:
        on_load(pipe)
    return pipe.generate(source, audio, output, streaming=streaming, progress=progress)


__all__ = [
    "DittoModels",
    "DittoPipeline",
    "DittoStream",
    "GenerationResult",
    "MotionDenoiser",
    "expected_frames",
    "fade_alphas",
    "generate_video",
    "video_options",
]
