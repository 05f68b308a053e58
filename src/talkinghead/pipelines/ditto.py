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

Deliberate differences from the release are listed in `docs/ditto.md`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
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
from talkinghead.diffusion import DDIMSampler
from talkinghead.errors import CheckpointError, MediaError, TalkingHeadError
from talkinghead.face import CropConfig, PasteBack, create_face_analyzer
from talkinghead.models import OFFICIAL_NETWORKS, load_official
from talkinghead.motion import (
    ClipwiseConfig,
    ClipwiseGenerator,
    ConditionBuilder,
    ConditionConfig,
    dict_to_motion,
    motion_to_dict,
)
from talkinghead.motion.stitch import MotionStitcher, StitchConfig, StitchControl
from talkinghead.pipelines.avatar import Avatar, AvatarCache, AvatarRegistrar
from talkinghead.pipelines.checkpoints import (
    ReleaseCheckpoints,
    load_release_config,
    resolve_checkpoints,
)
from talkinghead.pipelines.stages import Stage, StageRunner

log = logging.getLogger(__name__)

FPS = 25
SAMPLE_RATE = 16000
SIDECAR_NAME = "talkinghead.json"  # optional per-network constructor kwargs beside the .pth files
# Progress callback: (stage name, items done, total or None).
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class DittoConfig:
    """Every setting of a generation; defaults are the release's (v0.4 HuBERT, offline).

    Source: ``max_size`` (longest side), ``max_source_frames`` (video sources; None:
    as many as output frames, as the release), ``crop``, ``face_backend``
    ("auto" | "mediapipe" | "release").
    Motion: ``steps`` (DDIM), ``overlap`` (offline windows), ``online_overlap``
    (streaming windows, the authors' 70), ``smooth_k``, ``fix_kp_cond``, ``emotion``
    (label, name, list, or [N, 8]), ``eye_f0_mode``.
    Stitching: ``stitch`` (a `StitchConfig`), pose offsets (degrees) and scales,
    ``fade_in``/``fade_out`` (frames; they fade from/to the source motion).
    Runtime: ``seed``, ``device``, ``fp16`` (autocast the renderer on CUDA),
    ``batch_size`` (frames per warp/decode batch), ``online`` (use the streaming
    motion settings offline too), ``cache`` (reuse registered avatars).
    """

    max_size: int = 1920
    max_source_frames: int | None = None
    crop: CropConfig = field(default_factory=CropConfig)
    face_backend: str = "auto"
    steps: int = 50
    overlap: int = 10
    online_overlap: int = 70
    smooth_k: int = 3
    fix_kp_cond: int = 0
    motion_clip: Any = (
        None  # [2, 265] per-dim (min, max) of the motion (release: v_min_max_for_clip)
    )
    emotion: Any = 4
    eye_f0_mode: bool = False
    stitch: StitchConfig = field(default_factory=StitchConfig)
    delta_pitch: float = 0.0
    delta_yaw: float = 0.0
    delta_roll: float = 0.0
    alpha_pitch: float = 1.0
    alpha_yaw: float = 1.0
    alpha_roll: float = 1.0
    fade_in: int = 0
    fade_out: int = 0
    seed: int | None = None
    device: str = "cpu"
    fp16: bool = False
    batch_size: int = 4
    online: bool = False
    cache: bool = True

    def replace(self, **changes: Any) -> DittoConfig:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown Ditto settings: {', '.join(unknown)}")
        return replace(self, **changes)

    def clipwise(self, streaming: bool, seq_frames: int = 80) -> ClipwiseConfig:
        common = {
            "seq_frames": seq_frames,
            "smooth_kernel": self.smooth_k,
            "fix_cond_every": self.fix_kp_cond,
        }
        if streaming or self.online:
            return ClipwiseConfig.release_online(overlap=self.online_overlap, **common)
        return ClipwiseConfig(overlap=self.overlap, **common)

    def stitch_config(self) -> StitchConfig:
        overall = StitchControl(
            **{
                name: value
                for name, value, neutral in (
                    ("delta_pitch", self.delta_pitch, 0.0),
                    ("delta_yaw", self.delta_yaw, 0.0),
                    ("delta_roll", self.delta_roll, 0.0),
                    ("alpha_pitch", self.alpha_pitch, 1.0),
                    ("alpha_yaw", self.alpha_yaw, 1.0),
                    ("alpha_roll", self.alpha_roll, 1.0),
                )
                if value != neutral
            }
        )
        cfg = replace(self.stitch, overall=overall.over(self.stitch.overall))
        if (self.fade_in > 0 or self.fade_out > 0) and cfg.fade_type == "":
            # The release's fades silently do nothing with its default fade_type "";
            # fading from/to the source's own motion is what a fade-in/out means.
            cfg = replace(cfg, fade_type="s")
        return cfg


# The release's default_kwargs (ditto_cfg/*.pkl) -> our settings.
_RELEASE_KEYS = {
    "max_size": "max_size",
    "emo": "emotion",
    "eye_f0_mode": "eye_f0_mode",
    "overlap_v2": "overlap",
    "fix_kp_cond": "fix_kp_cond",
    "sampling_timesteps": "steps",
    "smo_k_d": "smooth_k",
    "v_min_max_for_clip": "motion_clip",
}
_RELEASE_STITCH_KEYS = (
    "use_d_keys",
    "relative_d",
    "drive_eye",
    "delta_eye_arr",
    "delta_eye_open_n",
    "fade_type",
    "fade_out_keys",
    "flag_stitching",
)


def config_from_release(cfg: Mapping[str, Any], base: DittoConfig | None = None) -> DittoConfig:
    """Our settings from a release config (the dict `load_release_config` returns).

    Keys of its ``default_kwargs`` that have no counterpart here are logged and ignored.
    """
    base = base or DittoConfig()
    kwargs = dict(cfg.get("default_kwargs") or {})
    changes: dict[str, Any] = {}
    stitch: dict[str, Any] = {}
    crop: dict[str, Any] = {}
    for key, value in kwargs.items():
        if value is None and key not in ("drive_eye", "use_d_keys", "delta_eye_arr"):
            continue
        if key in _RELEASE_KEYS:
            changes[_RELEASE_KEYS[key]] = value
        elif key in _RELEASE_STITCH_KEYS:
            stitch[key] = tuple(value) if key == "fade_out_keys" else value
        elif key == "online_mode":
            changes["online"] = bool(value)
        elif key == "template_n_frames":
            changes["max_source_frames"] = int(value) if int(value) > 0 else None
        elif key in ("crop_scale", "crop_vx_ratio", "crop_vy_ratio", "crop_flag_do_rot"):
            crop[{"crop_flag_do_rot": "rotate"}.get(key, key.removeprefix("crop_"))] = value
        elif key == "overall_ctrl_info":
            stitch["overall"] = StitchControl.coerce(value or None)
        else:
            log.info("release setting %s=%r has no counterpart here; ignored", key, value)
    if changes.get("online") and "overlap" in changes:
        changes["online_overlap"] = changes.pop("overlap")
    if crop:
        changes["crop"] = replace(base.crop, **crop)
    if stitch:
        changes["stitch"] = replace(base.stitch, **stitch)
    return base.replace(**changes)


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


def read_sidecar(models_dir: Path) -> dict[str, dict[str, Any]]:
    """Constructor kwargs per network kind from ``talkinghead.json`` beside the checkpoints."""
    path = models_dir / SIDECAR_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable network configuration ({exc})") from exc
    unknown = sorted(set(data) - set(OFFICIAL_NETWORKS))
    if not isinstance(data, dict) or unknown:
        raise CheckpointError(f"{path}: unknown network kinds {unknown}")
    return data


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


class DittoPipeline:
    """Ditto, end to end. Build with `from_pretrained`; run `generate` or `stream`."""

    def __init__(self, models: DittoModels, config: DittoConfig | None = None) -> None:
        self.models = models
        self.config = config or DittoConfig()
        self.features = HubertFeatureExtractor(models.speech_encoder)
        self.cache = AvatarCache() if self.config.cache else None

    @classmethod
    def from_pretrained(
        cls,
        checkpoints: str | os.PathLike[str] | None = None,
        *,
        download: bool = True,
        hubert: str | None = None,
        config: DittoConfig | None = None,
        **settings: Any,
    ) -> DittoPipeline:
        """Load the release (a local directory in its layout, or the model hub).

        ``hubert``: a transformers HuBERT id/path, or an ``.onnx`` file, used when the
        release's ``hubert_streaming_fix_kv.onnx`` is absent. ``settings`` override
        `DittoConfig` fields.
        """
        cfg = (config or DittoConfig()).replace(**settings)
        # Face and HuBERT models and the config pkl are optional (offline fallbacks exist).
        ckpt = resolve_checkpoints(checkpoints, download=download, strict=False)
        if config is None and ckpt.config.is_file():
            cfg = config_from_release(load_release_config(ckpt.config)).replace(**settings)
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
        analyzer = create_face_analyzer(cfg.face_backend, aux_dir=aux_dir, crop=cfg.crop)
        registrar = AvatarRegistrar.from_checkpoints(
            analyzer,
            ckpt.models["motion_extractor"],
            ckpt.models["appearance_extractor"],
            device=device,
            motion_config=sizes.get("motion_extractor"),
            appearance_config=sizes.get("appearance_extractor"),
            batch_size=cfg.batch_size,
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
        )
        return cls(models, cfg)

    @property
    def face_backend(self) -> str:
        return str(getattr(self.models.registrar.face_analyzer, "name", "unknown"))

    # ------------------------------------------------------------------ building blocks

    def register(
        self,
        source: str | os.PathLike[str],
        *,
        max_frames: int | None = None,
        config: DittoConfig | None = None,
        progress: Progress | None = None,
    ) -> Avatar:
        """Register a source file (from the cache when it was registered before)."""
        cfg = config or self.config
        source = Path(source)
        if not source.is_file():
            raise MediaError(f"{source}: source file not found")
        report = (lambda done, total: progress("register", done, total)) if progress else None
        if self.cache is not None and cfg.cache:
            return self.cache.get_or_register(
                source,
                self.models.registrar,
                max_side=cfg.max_size,
                max_frames=max_frames,
                progress=report,
            )
        from talkinghead.media.source import load_source

        media = load_source(source, max_side=cfg.max_size, max_frames=max_frames)
        avatar = self.models.registrar.register(media, progress=report)
        avatar.source_path = str(source)
        return avatar

    def _conditions(self, avatar: Avatar, cfg: DittoConfig) -> ConditionBuilder:
        lmdm_cfg = getattr(self.models.lmdm, "config", None)
        audio_dim = self.features.feat_dim
        cond_cfg = ConditionConfig(audio_dim=audio_dim, eye_first_frame=cfg.eye_f0_mode)
        if lmdm_cfg is not None and cond_cfg.dim != lmdm_cfg.audio_feat_dim:
            raise CheckpointError(
                f"the motion model expects {lmdm_cfg.audio_feat_dim}-dim conditions, but "
                f"{audio_dim}-dim speech features give {cond_cfg.dim}"
            )
        return ConditionBuilder(
            cond_cfg,
            emotion=cfg.emotion,
            eye_open=avatar.eye_open,
            eye_ball=avatar.eye_ball,
            shape_code=avatar.sc,
        )

    def _motion_generator(
        self, avatar: Avatar, cfg: DittoConfig, streaming: bool, builder: ConditionBuilder
    ) -> ClipwiseGenerator:
        sampler = DDIMSampler(num_steps=cfg.steps)
        lmdm = self.models.lmdm
        device = next(lmdm.parameters()).device

        def sample_window(cond_frame, cond, generator):
            return sampler(lmdm, cond_frame.to(device), cond.to(device), generator=generator).cpu()

        seq_frames = getattr(getattr(lmdm, "config", None), "seq_frames", 80)
        try:
            clip_cfg = cfg.clipwise(streaming, seq_frames)
        except ValueError as exc:  # e.g. an overlap that does not fit a short-window model
            raise TalkingHeadError(
                f"motion settings do not fit the motion model ({seq_frames}-frame windows): {exc}"
            ) from None
        prefix = None
        if clip_cfg.fuse == "online":
            # The release's streaming driver starts from `overlap` frames of silence.
            silence = self.features.features(np.zeros(clip_cfg.overlap * 640, np.float32))
            prefix = builder(silence, start=-clip_cfg.overlap)
        generator = None
        if cfg.seed is not None:
            generator = torch.Generator().manual_seed(cfg.seed)
        return ClipwiseGenerator(
            sample_window,
            dict_to_motion(avatar.x_s_info_at(0))[0],
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
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Motion [N, 265] for a whole clip, and the relative-driving reference d0 [265].

        d0 is None offline (the first generated frame is the reference, as the release).
        """
        cfg = config or self.config
        if progress:
            progress("features", 0, None)
        feats = self.features.features(audio_16k)
        if progress:
            progress("features", len(feats), len(feats))
        builder = self._conditions(avatar, cfg)
        gen = self._motion_generator(avatar, cfg, streaming=False, builder=builder)
        online = gen.config.fuse == "online"
        if progress:
            progress("motion", 0, len(feats))
        motion = gen.generate(builder(feats, start=0), with_prefix=online)
        d0 = None
        if online:
            d0, motion = motion[0], motion[gen.prefix.shape[0] :]
        if progress:
            progress("motion", len(feats), len(feats))
        return motion.numpy(), (None if d0 is None else d0.numpy())

    # ------------------------------------------------------------------ rendering

    def _renderer(self, avatar: Avatar, cfg: DittoConfig, total: int | None, d0) -> _Renderer:
        return _Renderer(self.models, avatar, cfg, total, d0)

    def generate(
        self,
        source: str | os.PathLike[str],
        audio: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        progress: Progress | None = None,
        **settings: Any,
    ) -> GenerationResult:
        """Write a talking-head video for `source` speaking `audio` to `output`.

        `output`: an .mp4/.mov/.mkv file (H.264 + the input audio as AAC), a directory
        ending in "/" (PNG frames), or "-" (raw RGB frames on stdout). Written to a
        temporary file and renamed on success: a failure leaves nothing behind.
        """
        from talkinghead.audio.io import load_audio
        from talkinghead.media.writer import open_writer

        cfg = self.config.replace(**settings)
        audio_path = Path(audio)
        audio_16k = load_audio(audio_path, SAMPLE_RATE)
        n = num_frames(len(audio_16k))
        if n == 0:
            raise MediaError(f"{audio_path}: the audio is empty")
        max_frames = cfg.max_source_frames if cfg.max_source_frames is not None else n
        avatar = self.register(source, max_frames=max_frames, config=cfg, progress=progress)
        motion, d0 = self.motion(avatar, audio_16k, config=cfg, progress=progress)
        mux_rate = 48000
        writer = open_writer(
            output,
            fps=FPS,
            audio=(load_audio(audio_path, mux_rate), mux_rate),
            **video_options(output),
        )
        renderer = self._renderer(avatar, cfg, n, d0)
        try:
            with StageRunner(renderer.stages(writer, progress), maxsize=2) as runner:
                for start in range(0, n, cfg.batch_size):
                    runner.put((start, motion[start : start + cfg.batch_size]))
                runner.close()
                for _ in runner.results():
                    pass
            path = writer.close()
        except BaseException:
            writer.abort()
            raise
        return GenerationResult(
            output=path,
            num_frames=n,
            size=avatar.frame_size,
            face_backend=avatar.face_backend,
            num_faces=avatar.num_faces,
        )

    def stream(self, source: str | os.PathLike[str] | Avatar, **settings: Any) -> DittoStream:
        """A streaming session: `push(pcm_16k)` -> frames, `close()` -> the remaining frames."""
        cfg = self.config.replace(**settings)
        avatar = source if isinstance(source, Avatar) else self.register(source, config=cfg)
        return DittoStream(self, avatar, cfg)


@dataclass
class GenerationResult:
    output: Path | None
    num_frames: int
    size: tuple[int, int]
    face_backend: str
    num_faces: int = 1


class _Renderer:
    """Motion batches -> frames: stitch + warp, decode, paste-back (one stage each)."""

    def __init__(self, models: DittoModels, avatar: Avatar, cfg: DittoConfig, total, d0) -> None:
        self.models = models
        self.avatar = avatar
        self.cfg = cfg
        self.device = next(models.warp_network.parameters()).device
        self.stitcher = MotionStitcher(
            models.stitch_network if cfg.stitch.flag_stitching else None, cfg.stitch_config()
        )
        x_s0 = {k: torch.from_numpy(v[:1]) for k, v in avatar.x_s_info.items()}
        d0_info = None if d0 is None else motion_to_dict(torch.as_tensor(d0)[None])
        self.stitcher.setup(x_s0, avatar.is_image, num_frames=total, d0=d0_info)
        self.total = total
        self.fades = fade_alphas(total, cfg.fade_in, cfg.fade_out) if total else None
        self.f_s = torch.from_numpy(avatar.f_s)
        self.paster = PasteBack()
        self.autocast = cfg.fp16 and self.device.type == "cuda"

    def _controls(self, start: int, b: int) -> StitchControl | None:
        if self.fades is None:
            return None
        return StitchControl(fade_alpha=torch.from_numpy(self.fades[start : start + b]))

    @torch.inference_mode()
    def warp(self, item: tuple[int, np.ndarray]) -> list[tuple[int, torch.Tensor]]:
        start, motion = item
        b = len(motion)
        src_idx = self.avatar.frame_indices(start + b)[start:]
        x_s_info = {k: torch.from_numpy(v[src_idx]) for k, v in self.avatar.x_s_info.items()}
        x_d = torch.from_numpy(np.ascontiguousarray(motion))
        x_s, x_d = self.stitcher(x_s_info, x_d, start, self._controls(start, b))
        f_s = (
            self.f_s[src_idx] if self.avatar.num_frames > 1 else self.f_s.expand(b, -1, -1, -1, -1)
        )
        with torch.autocast("cuda", torch.float16, enabled=self.autocast):
            out = self.models.warp_network(
                f_s.to(self.device), x_s.to(self.device), x_d.to(self.device)
            )
        return [(start, out)]

    @torch.inference_mode()
    def decode(self, item: tuple[int, torch.Tensor]) -> list[tuple[int, np.ndarray]]:
        start, feature = item
        with torch.autocast("cuda", torch.float16, enabled=self.autocast):
            image = self.models.decoder(feature)
        crops = (image.float().clamp(0, 1) * 255).permute(0, 2, 3, 1).cpu().numpy()
        return [(start, crops)]

    def paste(self, item: tuple[int, np.ndarray]) -> list[np.ndarray]:
        start, crops = item
        src_idx = self.avatar.frame_indices(start + len(crops))[start:]
        return [
            self.paster(self.avatar.frames[j], crop, self.avatar.M_c2o[j])
            for j, crop in zip(src_idx, crops, strict=True)
        ]

    def stages(self, writer=None, progress: Progress | None = None) -> list[Stage]:
        counts = {"render": 0}
        lock = threading.Lock()
        total = self.total

        def write(frames: list[np.ndarray]) -> list[Any]:
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
        return stages


class DittoStream:
    """Streaming generation: audio in (16 kHz mono float32 or PCM16 bytes), frames out.

    Frames come back as RGB uint8 arrays of the source's size, in order. `push`
    never blocks on rendering: it returns the frames finished so far; `close`
    waits for the rest. Uses the release's online motion settings (windows with
    `online_overlap` frames of overlap after a prefix of silence), with which
    the offline pipeline (``online=True``) produces the same motion.
    """

    def __init__(self, pipe: DittoPipeline, avatar: Avatar, cfg: DittoConfig) -> None:
        self.pipe = pipe
        self.avatar = avatar
        self.cfg = cfg
        self.features = pipe.features.stream()
        self.builder = pipe._conditions(avatar, cfg)
        self.motion = pipe._motion_generator(avatar, cfg, streaming=True, builder=self.builder)
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
        self._runner = StageRunner(self._renderer.stages(), maxsize=4).start()
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

    def _collect(self) -> list[np.ndarray]:
        if self._runner is None:
            return []
        return [frame for batch in self._runner.poll() for frame in batch]

    def push(self, audio: np.ndarray | bytes) -> list[np.ndarray]:
        """Add audio; returns the frames rendered so far (possibly none)."""
        if self._closed:
            raise TalkingHeadError("push() on a closed stream")
        if isinstance(audio, (bytes, bytearray, memoryview)):
            from talkinghead.audio.io import pcm16_to_float32

            audio = pcm16_to_float32(audio)
        feats = self.features.push(np.asarray(audio, dtype=np.float32))
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

    def close(self) -> list[np.ndarray]:
        """End of speech: flush everything and return the remaining frames."""
        return list(self.finish())

    def abort(self) -> None:
        self._closed = True
        if self._runner is not None:
            self._runner.abort()
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


def expected_frames(duration_s: float) -> int:
    """ceil(duration x 25), the number of frames a clip of that length gives."""
    return math.ceil(round(duration_s * SAMPLE_RATE) / 640)


__all__ = [
    "DittoConfig",
    "DittoModels",
    "DittoPipeline",
    "DittoStream",
    "GenerationResult",
    "config_from_release",
    "expected_frames",
    "fade_alphas",
    "read_sidecar",
]
