"""Training data for Ditto's motion model: a folder of talking videos -> per-video arrays.

`prepare_dataset(videos_dir, out_dir)` processes every video under `videos_dir`
(``.mp4 .mov .mkv .m4v .avi .webm``, searched recursively). Each should be a
25 fps clip with its speech and one face in every frame; other frame rates are
resampled to 25 fps (nearest frame) with a warning. Per video and per 25 fps frame:

* the face is tracked and cropped (`talkinghead.face`, 512 crop, the release's
  scale 2.3 / vy -0.125), and the crop, shrunk to 256, goes through the motion
  extractor: the 265-dim motion (`talkinghead.motion.format`) plus the 63
  canonical keypoints;
* eye openness [2] and eye-ball offsets [6] come from the face backend;
* emotion [8] (`talkinghead.motion.conditions.EMOTIONS` order) comes from a
  pluggable classifier run on every `emotion_stride`-th crop and linearly
  interpolated, as the release runs its classifier at 5 fps. Without one, every
  frame gets the stated default: Neutral, as the 8-way soft vector the inference
  pipeline uses (`emotion_vector("Neutral")`, 0.9976 on Neutral);
* speech features [D] (HuBERT, 1024 dims for the release) at 25 fps from the
  audio track resampled to 16 kHz (`talkinghead.audio.hubert`).

Every array of a video is cut to the shortest of them (video frames vs
ceil(audio seconds * 25) feature rows), so `frame_num` rows each.

Output layout (folder and key names follow the release's training branch)::

    OUT_DIR/
      manifest.json           status of every video, settings and array dims (below)
      data_list.json          the release's training list: one entry per finished video
                              {"name", "frame_num", "mtn", "aud", "emo", "eye_open",
                              "eye_ball", "sc"} (paths relative to OUT_DIR)
      data_info.json          the release's per-kind path lists (absolute paths):
                              fps25_video_list, hubert_aud_npy_list, LP_npy_list,
                              eye_open_npy_list, eye_ball_npy_list, emo_npy_list, sc_npy_list
      hubert_aud_npy/NAME.npy float32 [frame_num, D]    speech features
      LP_npy/NAME.npy         float32 [frame_num, 328]  motion (265) + canonical keypoints (63)
      eye_open_npy/NAME.npy   float32 [frame_num, 2]
      eye_ball_npy/NAME.npy   float32 [frame_num, 6]    [xL, xR, yL, yR, zL, zR]
      emo_npy/NAME.npy        float32 [frame_num, 8]
      sc_npy/NAME.npy         float32 [63]              shape code: frame 0's keypoints

NAME is the video's path relative to VIDEOS_DIR without its suffix (``a/b.mp4`` ->
``a/b``; with `flip`, the mirrored copy is ``NAME_flip``). `manifest.json`::

    {"format": "talkinghead-ditto-data", "version": 1, "fps": 25, "sample_rate": 16000,
     # per-frame shape of each array (sc: one row per video)
     "dims": {"aud": [D], "mtn": [328], "eye_open": [2], "eye_ball": [6], "emo": [8], "sc": []},
     "settings": {"face_backend", "motion_extractor", "hubert", "emotion", ...},
     "videos": {NAME: {"status": "ok", "source", "frame_num", "fps", "resampled_from",
                       "audio_seconds", "num_faces", "files": {kind: path}},
                NAME: {"status": "failed", "source", "error"}}}

The run is resumable: a video whose manifest entry is ``ok`` and whose files all
exist is skipped; failed ones are tried again. Arrays are written atomically and
the manifest is rewritten after every video, so an interrupted run loses at
most the videos in flight. One bad video (unreadable, no audio, no face in some
frame...) is logged, recorded as failed and skipped; the others go on. With
``workers > 1`` videos are processed in parallel processes (spawned, each with
its own face analyser and networks).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from talkinghead.errors import CheckpointError, MediaError, NoFaceError, TalkingHeadError

log = logging.getLogger(__name__)

FORMAT = "talkinghead-ditto-data"
FORMAT_VERSION = 1
FPS = 25
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm")
MANIFEST_NAME = "manifest.json"
DATA_LIST_NAME = "data_list.json"
DATA_INFO_NAME = "data_info.json"
HUBERT_ONNX_NAME = "hubert_streaming_fix_kv.onnx"

# data_list.json key -> (folder, data_info.json list name). Folder names are the release's.
ARRAY_KINDS: dict[str, tuple[str, str]] = {
    "aud": ("hubert_aud_npy", "hubert_aud_npy_list"),
    "mtn": ("LP_npy", "LP_npy_list"),
    "eye_open": ("eye_open_npy", "eye_open_npy_list"),
    "eye_ball": ("eye_ball_npy", "eye_ball_npy_list"),
    "emo": ("emo_npy", "emo_npy_list"),
    "sc": ("sc_npy", "sc_npy_list"),
}
MOTION_WITH_KP_DIM = 328  # 265 motion + 63 canonical keypoints, the release's LP_npy rows

ProgressCallback = Callable[[int, int], None]


class EmotionClassifier(Protocol):
    """Face crops [B, 512, 512, 3] uint8 RGB -> emotion probabilities [B, 8].

    Columns in `talkinghead.motion.conditions.EMOTIONS` order (Angry, Disgust, Fear,
    Happy, Neutral, Sad, Surprise, Contempt). With ``workers > 1`` it must be picklable.
    An optional ``name`` attribute is recorded in the manifest.
    """

    def __call__(self, crops: np.ndarray) -> np.ndarray: ...


@dataclass
class PrepareNetworks:
    """Already-built networks (tests, or callers that hold them anyway).

    motion_extractor: `talkinghead.models.motion_extractor.MotionExtractor` (any config)
    speech_encoder:   a `talkinghead.audio.hubert.SpeechEncoder` (16 kHz chunk -> [T, D])
    face_analyzer:    optional `FaceAnalyzer`; only used in-process (``workers == 1``),
                      since face backends hold native resources that do not pickle
    """

    motion_extractor: Any
    speech_encoder: Any
    face_analyzer: Any = None


@dataclass
class PrepareReport:
    """What a `prepare_dataset` run did."""

    out_dir: Path
    manifest: Path
    data_list: Path
    prepared: list[str] = field(default_factory=list)  # processed by this run
    skipped: list[str] = field(default_factory=list)  # finished by an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # name -> error
    frames: int = 0  # frames of every finished video (prepared + skipped)
    seconds: float = 0.0

    @property
    def ok(self) -> list[str]:
        return [*self.skipped, *self.prepared]

    def summary(self) -> str:
        return (
            f"{len(self.prepared)} prepared, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed; {self.frames} frames in {self.out_dir}"
        )


# --- helpers --------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))
    os.replace(tmp, path)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, np.ascontiguousarray(arr, dtype=np.float32))
    os.replace(tmp, path)


def find_videos(videos_dir: Path) -> dict[str, Path]:
    """NAME -> video file for every video under `videos_dir` (sorted, unique names)."""
    files = sorted(
        p
        for p in videos_dir.rglob("*")
        if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )
    names: dict[str, Path] = {}
    for p in files:
        rel = p.relative_to(videos_dir)
        name = rel.with_suffix("").as_posix()
        if name in names:  # a.mp4 next to a.mov: keep both, the second by its full name
            name = rel.as_posix().replace(".", "_")
        names[name] = p
    return names


def iter_video_frames(
    path: Path, max_side: int | None = 1920
) -> tuple[float, Iterator[np.ndarray]]:
    """(fps, RGB uint8 frames) of a video, decoded one frame at a time (PyAV)."""
    import av

    from talkinghead.media.source import fit_frame

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"{path}: not a readable video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: the file has no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        container.close()
        raise MediaError(f"{path}: unknown frame rate")

    def frames() -> Iterator[np.ndarray]:
        with container:
            try:
                for frame in container.decode(stream):
                    rgb = frame.to_ndarray(format="rgb24")
                    k = round((frame.rotation or 0) / 90.0) % 4  # phones' display matrix
                    if k:
                        rgb = np.ascontiguousarray(np.rot90(rgb, k))
                    yield fit_frame(rgb, max_side)
            except (av.FFmpegError, OSError) as exc:
                raise MediaError(f"{path}: cannot decode the video ({exc})") from None

    return float(rate), frames()


def resample_frames(frames: Iterator[np.ndarray], fps: float, target: float = FPS):
    """Nearest-frame resampling: output frame j shows source frame round(j * fps / target)."""
    ratio = fps / target
    j = 0
    for i, frame in enumerate(frames):
        while math.floor(j * ratio + 0.5) == i:
            yield frame
            j += 1


def interpolate_rows(known: dict[int, np.ndarray], n: int) -> np.ndarray:
    """Rows known at some indices -> [n, dim], linear in between, held at the ends."""
    idx = np.array(sorted(known))
    values = np.stack([known[i] for i in idx]).astype(np.float64)
    out = np.empty((n, values.shape[1]), np.float64)
    for c in range(values.shape[1]):
        out[:, c] = np.interp(np.arange(n), idx, values[:, c])
    return out.astype(np.float32)


# --- per-video work ---------------------------------------------------------------------------


@dataclass
class _WorkerSpec:
    """Everything a worker needs to build its extractor (picklable)."""

    motion_extractor_path: str | None
    motion_config: dict[str, Any]
    hubert: str | None
    face_backend: str
    aux_dir: str | None
    networks: PrepareNetworks | None
    emotion_classifier: Any
    device: str
    batch_size: int
    emotion_stride: int
    flip: bool
    max_side: int | None
    torch_threads: int | None = None


def resolve_emotion_classifier(spec: Any, *, instantiate: bool = True) -> Any:
    """A classifier, or ``"module:name"`` naming one (a class is instantiated without arguments)."""
    if not isinstance(spec, str):
        return spec
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TalkingHeadError(f"emotion classifier {spec!r}: expected MODULE:NAME")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TalkingHeadError(f"emotion classifier {spec!r}: cannot import it ({exc})") from None
    if isinstance(obj, type) and instantiate:
        obj = obj()
    return obj


def _build_speech_encoder(hubert: str, device: str):
    from talkinghead.audio.hubert import OnnxHubertEncoder, TransformersHubertEncoder

    if hubert.endswith(".onnx"):
        return OnnxHubertEncoder(hubert, device=device)
    return TransformersHubertEncoder(hubert, device=device)


class VideoFeatureExtractor:
    """Turns one video into the training arrays (one instance per worker process)."""

    def __init__(self, spec: _WorkerSpec) -> None:
        import torch

        from talkinghead.audio.hubert import HubertFeatureExtractor
        from talkinghead.face import create_face_analyzer
        from talkinghead.models import load_official

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        self.spec = spec
        nets = spec.networks
        self.device = torch.device(spec.device)
        if nets is not None and nets.motion_extractor is not None:
            self.motion_extractor = nets.motion_extractor.to(self.device).eval()
        else:
            assert spec.motion_extractor_path is not None
            self.motion_extractor = load_official(
                "motion_extractor",
                spec.motion_extractor_path,
                device=spec.device,
                **spec.motion_config,
            )
        if nets is not None and nets.speech_encoder is not None:
            encoder = nets.speech_encoder
        else:
            assert spec.hubert is not None
            encoder = _build_speech_encoder(spec.hubert, spec.device)
        self.hubert = HubertFeatureExtractor(encoder)
        if nets is not None and nets.face_analyzer is not None:
            self.face = nets.face_analyzer
        else:
            self.face = create_face_analyzer(spec.face_backend, spec.aux_dir)
        self.emotion_classifier = resolve_emotion_classifier(spec.emotion_classifier)

    def close(self) -> None:
        """Release the face analyser's native resources, unless the caller owns it."""
        nets = self.spec.networks
        if nets is None or nets.face_analyzer is None:
            close = getattr(self.face, "close", None)
            if close is not None:
                close()

    # -- pieces ---------------------------------------------------------------------------

    def _motion(self, crops256: np.ndarray) -> np.ndarray:
        """[B, 256, 256, 3] uint8 -> [B, 328] motion (265) + canonical keypoints (63)."""
        import torch

        from talkinghead.motion.format import dict_to_motion
        from talkinghead.pipelines.avatar import MOTION_KEYS

        with torch.inference_mode():
            x = torch.from_numpy(crops256).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            outs = self.motion_extractor(x)
        info = {
            k: o.float().reshape(o.shape[0], -1).cpu().numpy()
            for k, o in zip(MOTION_KEYS, outs, strict=True)
        }
        return dict_to_motion(info, include_kp=True)

    def _classify(self, crops: list[tuple[int, np.ndarray]], known: dict[int, np.ndarray]) -> None:
        """Run the emotion classifier on (frame index, 512 crop) pairs into `known`."""
        if not crops:
            return
        probs = np.asarray(self.emotion_classifier(np.stack([c for _, c in crops])), np.float32)
        if probs.shape != (len(crops), 8):
            raise ValueError(
                f"the emotion classifier returned {probs.shape}, expected {(len(crops), 8)}"
            )
        known.update((i, row) for (i, _), row in zip(crops, probs, strict=True))
        crops.clear()

    def _emotions(self, known: dict[int, np.ndarray], n: int) -> np.ndarray:
        from talkinghead.motion.conditions import NEUTRAL, emotion_vector

        if self.emotion_classifier is None:
            return np.repeat(emotion_vector(NEUTRAL).numpy()[None], n, axis=0)
        return interpolate_rows(known, n)

    def _face_track(self, frames: Iterator[np.ndarray], video: Path, flip: bool):
        """Per frame: (crop256, eye_open, eye_ball, crop512 when emotion wants it, faces)."""
        from talkinghead.pipelines.avatar import crop_to_network_input

        previous = None
        for i, rgb in enumerate(frames):
            if flip:
                rgb = np.ascontiguousarray(rgb[:, ::-1])
            try:
                face = self.face.analyze(rgb, previous)
            except NoFaceError as exc:
                where = f"{video} (frame {i}{', mirrored' if flip else ''})"
                raise NoFaceError(f"{where}: {exc}") from exc
            previous = face
            want_crop = self.emotion_classifier is not None and i % self.spec.emotion_stride == 0
            yield (
                crop_to_network_input(face.crop),
                np.asarray(face.eye_open, np.float32).reshape(2),
                np.asarray(face.eye_ball, np.float32).reshape(6),
                face.crop if want_crop else None,
                int(face.num_faces),
            )

    # -- one video ------------------------------------------------------------------------

    def process(self, video: Path) -> list[dict[str, Any]]:
        """Arrays of one video (and of its mirror image with `flip`), as per-variant dicts."""
        from talkinghead.audio.hubert import SAMPLE_RATE
        from talkinghead.audio.io import load_audio

        audio = load_audio(video, SAMPLE_RATE)  # fails early for a file without audio
        aud = self.hubert.features(audio).astype(np.float32)
        results = []
        for flip in (False, True) if self.spec.flip else (False,):
            fps, frames = iter_video_frames(video, self.spec.max_side)
            resampled = abs(fps - FPS) > 1e-3
            if resampled and not flip:
                log.warning("%s: %.3f fps, resampled to %d fps", video, fps, FPS)
            if resampled:
                frames = resample_frames(frames, fps)
            track = self._face_track(frames, video, flip)
            motion, eye_open, eye_ball = [], [], []
            batch: list[np.ndarray] = []
            emo_batch: list[tuple[int, np.ndarray]] = []
            emo_known: dict[int, np.ndarray] = {}
            num_faces = 1
            for i, (crop256, eo, eb, crop512, faces) in enumerate(track):
                if i == 0:
                    num_faces = faces
                batch.append(crop256)
                eye_open.append(eo)
                eye_ball.append(eb)
                if crop512 is not None:
                    emo_batch.append((i, crop512))
                    if len(emo_batch) == self.spec.batch_size:
                        self._classify(emo_batch, emo_known)
                if len(batch) == self.spec.batch_size:
                    motion.append(self._motion(np.stack(batch)))
                    batch = []
            if batch:
                motion.append(self._motion(np.stack(batch)))
            self._classify(emo_batch, emo_known)
            if not motion:
                raise MediaError(f"{video}: the video has no decodable frames")
            mtn = np.concatenate(motion)
            n = min(mtn.shape[0], aud.shape[0])
            if n == 0:
                raise MediaError(f"{video}: no frames with audio")
            emo = self._emotions(emo_known, mtn.shape[0])
            results.append(
                {
                    "flip": flip,
                    "arrays": {
                        "aud": aud[:n],
                        "mtn": mtn[:n],
                        "eye_open": np.stack(eye_open)[:n],
                        "eye_ball": np.stack(eye_ball)[:n],
                        "emo": emo[:n],
                        "sc": mtn[0, -63:],
                    },
                    "frame_num": n,
                    "fps": fps,
                    "resampled_from": fps if resampled else None,
                    "audio_seconds": round(audio.shape[0] / SAMPLE_RATE, 3),
                    "num_faces": num_faces,
                }
            )
        return results


def _files(name: str) -> dict[str, str]:
    return {k: f"{folder}/{name}.npy" for k, (folder, _) in ARRAY_KINDS.items()}


def _process_video(
    extractor: VideoFeatureExtractor, name: str, video: Path, out_dir: Path
) -> dict[str, dict[str, Any]]:
    """NAME(s) -> manifest entry; failures are returned, not raised."""
    source = str(video)
    start = time.perf_counter()
    try:
        variants = extractor.process(video)
    except Exception as exc:  # one bad video must not stop the run
        return {name: {"status": "failed", "source": source, "error": _error_message(exc)}}
    out = {}
    for v in variants:
        vname = f"{name}_flip" if v["flip"] else name
        files = _files(vname)
        for kind, arr in v["arrays"].items():
            _save_npy(out_dir / files[kind], arr)
        out[vname] = {
            "status": "ok",
            "source": source,
            "flip": v["flip"],
            "frame_num": v["frame_num"],
            "fps": v["fps"],
            "resampled_from": v["resampled_from"],
            "audio_seconds": v["audio_seconds"],
            "num_faces": v["num_faces"],
            "seconds": round(time.perf_counter() - start, 2),
            "files": files,
            "dims": {k: list(a.shape[1:]) for k, a in v["arrays"].items()},
        }
    return out


_WORKER: VideoFeatureExtractor | None = None
_WORKER_ERROR: str | None = None


def _error_message(exc: BaseException) -> str:
    msg = str(exc) if isinstance(exc, TalkingHeadError) else f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split())  # one line, whatever the library said


def _init_worker(spec: _WorkerSpec) -> None:
    global _WORKER, _WORKER_ERROR
    logging.basicConfig(level=logging.WARNING)
    try:
        _WORKER = VideoFeatureExtractor(spec)
    except Exception as exc:  # reported with every video, instead of a broken pool
        _WORKER_ERROR = _error_message(exc)


def _worker_task(name: str, video: str, out_dir: str) -> dict[str, dict[str, Any]]:
    if _WORKER is None:
        error = f"worker setup failed: {_WORKER_ERROR}"
        return {name: {"status": "failed", "source": video, "error": error}}
    return _process_video(_WORKER, name, Path(video), Path(out_dir))


# --- manifest -----------------------------------------------------------------------------------


def _load_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TalkingHeadError(
            f"{path}: unreadable manifest ({exc}); remove it to start over"
        ) from None
    if data.get("format") != FORMAT:
        raise TalkingHeadError(f"{path}: not a {FORMAT} manifest; use another OUT_DIR")
    return data


def _finished(entry: Mapping[str, Any] | None, out_dir: Path) -> bool:
    return bool(
        entry
        and entry.get("status") == "ok"
        and all((out_dir / p).is_file() for p in entry.get("files", {}).values())
    )


def _video_dims(entry: Mapping[str, Any]) -> dict[str, list[int]]:
    return {k: list(v) for k, v in entry.get("dims", {}).items()}


def _write_outputs(out_dir: Path, manifest: dict[str, Any]) -> None:
    """manifest.json, then data_list.json and data_info.json from the finished videos."""
    _write_json(out_dir / MANIFEST_NAME, manifest)
    ok = {n: e for n, e in manifest["videos"].items() if e.get("status") == "ok"}
    data_list = [{"frame_num": e["frame_num"], **e["files"], "name": n} for n, e in ok.items()]
    _write_json(out_dir / DATA_LIST_NAME, data_list)
    info: dict[str, list[str]] = {"fps25_video_list": [e["source"] for e in ok.values()]}
    for kind, (_, list_name) in ARRAY_KINDS.items():
        info[list_name] = [str((out_dir / e["files"][kind]).resolve()) for e in ok.values()]
    _write_json(out_dir / DATA_INFO_NAME, info)


# --- entry point ----------------------------------------------------------------------------------


def _resolve_sources(
    checkpoints: Path | None, hubert: str | None, networks: PrepareNetworks | None
) -> tuple[str | None, dict[str, Any], str | None, str | None]:
    """(motion extractor path, its config, HuBERT spec, aux_dir) with user-facing errors."""
    from talkinghead.pipelines.checkpoints import ReleaseCheckpoints

    need_motion = networks is None or networks.motion_extractor is None
    need_hubert = networks is None or networks.speech_encoder is None
    ckpts = None
    if checkpoints is not None:
        root = Path(checkpoints).expanduser()
        if not root.is_dir():
            raise CheckpointError(f"{root}: checkpoint directory not found")
        ckpts = ReleaseCheckpoints.from_root(root)
    elif need_motion:
        raise CheckpointError(
            "no checkpoints given: pass --checkpoints DIR (the release's folder holding "
            "ditto_pytorch/models/motion_extractor.pth)"
        )
    motion_path, motion_cfg = None, {}
    if need_motion:
        assert ckpts is not None
        p = ckpts.model("motion_extractor")
        if not p.is_file():
            raise CheckpointError(f"{p}: motion extractor checkpoint not found")
        motion_path = str(p)
        from talkinghead.pipelines.ditto import read_sidecar

        motion_cfg = read_sidecar(p.parent).get("motion_extractor", {})
    hubert_spec = None
    if need_hubert:
        if hubert is None:
            if ckpts is None:
                raise CheckpointError("no HuBERT model: pass --hubert or --checkpoints")
            hubert = str(ckpts.aux_models["hubert"])
        if hubert.endswith(".onnx") and not Path(hubert).is_file():
            raise CheckpointError(f"{hubert}: HuBERT ONNX model not found")
        hubert_spec = hubert
    aux_dir = str(ckpts.data_root / "aux_models") if ckpts is not None else None
    return motion_path, motion_cfg, hubert_spec, aux_dir


def prepare_dataset(
    videos_dir: Path,
    out_dir: Path,
    *,
    checkpoints: Path | None = None,
    workers: int = 1,
    face_backend: str = "auto",
    hubert: str | None = None,
    emotion_classifier: EmotionClassifier | str | None = None,
    progress: ProgressCallback | None = None,
    networks: PrepareNetworks | Mapping[str, Any] | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    emotion_stride: int = 5,
    flip: bool = False,
    max_side: int | None = 1920,
) -> PrepareReport:
    """Process every video under `videos_dir` into `out_dir` (layout: module docstring).

    checkpoints:  the release's root (``ditto_pytorch/models/motion_extractor.pth``,
                  optional ``talkinghead.json`` sidecar, ``aux_models/`` for the HuBERT
                  ONNX model and the release face backend)
    hubert:       a HuBERT ONNX file, or a `transformers` HuBERT directory / hub id
                  (default: ``aux_models/hubert_streaming_fix_kv.onnx``)
    face_backend: "auto" (release models when present, else mediapipe), "release", "mediapipe"
    emotion_classifier: an `EmotionClassifier`, or ``"module:name"`` of one (a class is
                  instantiated in each worker); None gives every frame the Neutral default
    networks:     `PrepareNetworks` (or a dict with its fields) to use instead of files
    progress:     called with (videos done, total) at the start and after each video
    flip:         also store each video mirrored left-right (``NAME_flip``), the release's
                  augmentation
    """
    start = time.perf_counter()
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    if not videos_dir.is_dir():
        raise MediaError(f"{videos_dir}: videos directory not found")
    if workers < 1 or batch_size < 1 or emotion_stride < 1:
        raise ValueError("workers, batch_size and emotion_stride must be >= 1")
    if isinstance(networks, Mapping):
        networks = PrepareNetworks(**networks)
    videos = find_videos(videos_dir)
    if not videos:
        raise MediaError(f"{videos_dir}: no video files ({', '.join(VIDEO_SUFFIXES)})")

    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_NAME
    manifest = _load_manifest(manifest_path)
    entries: dict[str, Any] = dict(manifest.get("videos", {}))
    names_of = {n: [n, f"{n}_flip"] if flip else [n] for n in videos}
    done = [n for n in videos if all(_finished(entries.get(v), out_dir) for v in names_of[n])]
    todo = [n for n in videos if n not in done]
    report = PrepareReport(out_dir, manifest_path, out_dir / DATA_LIST_NAME)
    report.skipped = [v for n in done for v in names_of[n]]

    if emotion_classifier is None:
        emotion = "default:Neutral"
    elif isinstance(emotion_classifier, str):
        resolve_emotion_classifier(emotion_classifier, instantiate=False)  # fail early
        emotion = emotion_classifier
    else:
        emotion = str(getattr(emotion_classifier, "name", type(emotion_classifier).__name__))
    settings: dict[str, Any] = {
        "face_backend": face_backend,
        "emotion": emotion,
        "emotion_stride": emotion_stride,
        "flip": flip,
        "max_side": max_side,
    }
    if todo:
        motion_path, motion_cfg, hubert_spec, aux_dir = _resolve_sources(
            checkpoints, hubert, networks
        )
        settings["motion_extractor"] = motion_path or "injected"
        settings["hubert"] = hubert_spec or "injected"
        old = manifest.get("settings", {})
        changed = {k: (old[k], v) for k, v in settings.items() if k in old and old[k] != v}
        if changed:
            log.warning("%s: settings differ from the earlier run's: %s", manifest_path, changed)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "fps": FPS,
        "sample_rate": 16000,
        "dims": manifest.get("dims", {}),
        "settings": {**manifest.get("settings", {}), **settings},
        "videos": entries,
    }

    total = len(videos)
    if progress is not None:
        progress(len(done), total)

    def record(result: dict[str, dict[str, Any]]) -> None:
        for vname, entry in result.items():
            if entry["status"] == "ok":
                dims = _video_dims(entry)
                if not manifest["dims"]:
                    manifest["dims"] = dims
                elif manifest["dims"] != dims:
                    entry = {
                        "status": "failed",
                        "source": entry["source"],
                        "error": f"array dims {dims} differ from the dataset's {manifest['dims']}",
                    }
            entries[vname] = entry
            if entry["status"] == "ok":
                report.prepared.append(vname)
            else:
                report.failed[vname] = entry["error"]
                log.warning("skipping %s: %s", entry["source"], entry["error"])
        _write_outputs(out_dir, manifest)

    if todo:
        spec = _WorkerSpec(
            motion_extractor_path=motion_path,
            motion_config=motion_cfg,
            hubert=hubert_spec,
            face_backend=face_backend,
            aux_dir=aux_dir,
            networks=networks,
            emotion_classifier=emotion_classifier,
            device=device,
            batch_size=batch_size,
            emotion_stride=emotion_stride,
            flip=flip,
            max_side=max_side,
        )
        finished = len(done)
        if workers == 1:
            extractor = VideoFeatureExtractor(spec)
            try:
                for name in todo:
                    record(_process_video(extractor, name, videos[name], out_dir))
                    finished += 1
                    if progress is not None:
                        progress(finished, total)
            finally:
                extractor.close()
        else:
            _run_pool(spec, workers, todo, videos, out_dir, record, progress, finished, total)
    else:
        _write_outputs(out_dir, manifest)

    report.frames = sum(
        entries[v]["frame_num"] for v in report.ok if entries.get(v, {}).get("status") == "ok"
    )
    report.seconds = time.perf_counter() - start
    return report


def _run_pool(
    spec: _WorkerSpec,
    workers: int,
    todo: list[str],
    videos: Mapping[str, Path],
    out_dir: Path,
    record: Callable[[dict[str, dict[str, Any]]], None],
    progress: ProgressCallback | None,
    finished: int,
    total: int,
) -> None:
    import multiprocessing

    if spec.networks is not None and spec.networks.face_analyzer is not None:
        raise ValueError("an injected face_analyzer only works with workers=1")
    cpus = os.cpu_count() or 1
    spec.torch_threads = max(1, cpus // workers)
    # spawn: forked children of a process that already ran torch/mediapipe threads can hang.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(spec,),
    )
    with pool:
        pending = {pool.submit(_worker_task, n, str(videos[n]), str(out_dir)): n for n in todo}
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in ready:
                name = pending.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool as exc:
                    result = {
                        name: {
                            "status": "failed",
                            "source": str(videos[name]),
                            "error": f"worker process died ({exc})",
                        }
                    }
                record(result)
                finished += 1
                if progress is not None:
                    progress(finished, total)
