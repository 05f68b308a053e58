"""DiffTalk training data: face crops, landmarks, mouth masks, audio windows, reference frames.

``prepare_dataset(VIDEOS_DIR, OUT_DIR)`` turns talking videos (with their audio track,
or a ``<stem>.wav`` beside them) into the following, resumably and in parallel
(`talkinghead.training.prepare` runs it; the manifest is rewritten after every video)::

    OUT_DIR/difftalk_data.json        manifest: resolution, crop, audio features, clips
    OUT_DIR/clips/<name>/meta.json    frames, fps, source; written last (= clip finished)
    OUT_DIR/clips/<name>/frames/000000.jpg ...   face crops, RGB, resolution^2, JPEG q95
    OUT_DIR/clips/<name>/landmarks.npy           [F, 478, 2] float32, crop pixels
    OUT_DIR/clips/<name>/audio.npy               [F, 16, C] float32 character windows
    OUT_DIR/clips/<name>/crop.npy                [F, 3, 3] float32 crop -> frame matrices

Crops follow the face (MediaPipe's 478-point mesh, `talkinghead.face`), scale 1.8 and
vy -0.1 around the mesh's jaw/brow box, smoothed over 5 frames against jitter.

`DiffTalkDataset` serves, per frame i: the crop x, the mouth-masked crop x_m (every
row from the nose tip down set to black, as the release does), a reference crop x_r
from the same clip at least 60 frames away (the farthest frame when the clip is
shorter), the audio windows of frames i - 8 .. i + 8 for the temporal filter, and
the landmarks outside the mouth region, in [0, 1] crop units.

The geometry helpers (`landmark_condition`, `masked_frame`, `generation_mask`) are
shared with inference (`talkinghead.methods.difftalk.pipeline`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from talkinghead.audio.ctc import (
    DEFAULT_CTC_MODEL,
    frame_windows,
    neighbour_indices,
    resolve_ctc_model,
)
from talkinghead.errors import MediaError, TalkingHeadError
from talkinghead.timebase import FPS, SAMPLE_RATE
from talkinghead.training.prepare import (
    ClipListLayout,
    PrepareJob,
    PrepareReport,
    PrepareRun,
    VideoResult,
    find_videos,
    unique_names,
)

log = logging.getLogger(__name__)

FORMAT = "talkinghead-difftalk-data"
VERSION = 1
MANIFEST_NAME = "difftalk_data.json"

CROP_SCALE = 1.8
CROP_VY = -0.1
CROP_SMOOTHING = 5  # frames in the moving average of the crop transform
MIN_REFERENCE_GAP = 60
SMOOTH_RADIUS = 8

# MediaPipe face-mesh indices (image-left side first), counterparts of the 68-point
# layout's points the release keeps (0-3 and 13-47: upper jaw, brows, nose, eyes).
_JAW_UPPER = (127, 234, 93, 132, 361, 323, 454, 356)
_BROWS = (
    70, 63, 105, 66, 107, 55, 65, 52, 53, 46,
    300, 293, 334, 296, 336, 285, 295, 282, 283, 276,
)  # fmt: skip
_EYES = (33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380)
_NOSE = (168, 6, 197, 195, 5, 4, 98, 97, 2, 326, 327)
LANDMARK_POINTS: tuple[int, ...] = _JAW_UPPER + _BROWS + _EYES + _NOSE  # 51 points
NOSE_TIP = 1
# The lower face to regenerate: the jaw contour cheek to cheek via the chin, closed
# under the nose (the release's 68-point 2..14 + 33).
MOUTH_REGION = (
    93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
    377, 400, 378, 379, 365, 397, 288, 361, 323, 2,
)  # fmt: skip
MESH_POINTS = 478

# Progress callback of `prepare_dataset` (the prepare-data command's): (videos done, total).
Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------- geometry


def _check_mesh(landmarks: np.ndarray) -> np.ndarray:
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape[-2:] != (MESH_POINTS, 2):
        raise ValueError(
            f"DiffTalk needs MediaPipe's 478 landmarks [..., 478, 2], got {landmarks.shape}"
        )
    return landmarks


def landmark_condition(landmarks: np.ndarray, resolution: int) -> np.ndarray:
    """Crop-pixel mesh [..., 478, 2] -> the points outside the mouth region in [0, 1]: [..., 51, 2]."""
    lm = _check_mesh(landmarks)
    return (lm[..., list(LANDMARK_POINTS), :] / float(resolution)).astype(np.float32)


def mask_row(landmarks: np.ndarray) -> int:
    """First crop row of the masked region: the nose tip's row."""
    return int(np.floor(_check_mesh(landmarks)[NOSE_TIP, 1]))


def masked_frame(crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """x_m: the crop with every row from the nose tip down set to black (uint8 RGB)."""
    out = np.array(crop, copy=True)
    out[max(0, mask_row(landmarks)) :] = 0
    return out


def generation_mask(landmarks: np.ndarray, size: int, dilation: float = 0.03) -> np.ndarray:
    """[size, size] float32: 1 inside the lower-face polygon (to generate), 0 elsewhere.

    The polygon is grown by `dilation` x size pixels so that a mouth opening wider
    than the source's still falls inside.
    """
    lm = _check_mesh(landmarks)
    mask = np.zeros((size, size), np.uint8)
    pts = np.rint(lm[list(MOUTH_REGION)]).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1)
    grow = round(dilation * size)
    if grow > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        mask = cv2.dilate(mask, kernel)
    return mask.astype(np.float32)


def latent_keep_mask(generate: np.ndarray, latent_size: int) -> np.ndarray:
    """Pixel generation mask [H, W] -> latent keep mask [h, w]: 0 where any pixel is generated."""
    h = generate.shape[0]
    f = h // latent_size
    blocks = generate[: f * latent_size, : f * latent_size].reshape(latent_size, f, latent_size, f)
    return (blocks.max(axis=(1, 3)) <= 0).astype(np.float32)


def reference_index(
    index: int, num_frames: int, rng: np.random.Generator, min_gap: int = MIN_REFERENCE_GAP
) -> int:
    """A random frame at least `min_gap` frames from `index`; the farthest one if none is."""
    candidates = np.flatnonzero(np.abs(np.arange(num_frames) - index) >= min_gap)
    if candidates.size:
        return int(rng.choice(candidates))
    return 0 if index >= num_frames - 1 - index else num_frames - 1


def to_tensor_image(rgb: np.ndarray):
    """uint8 RGB [H, W, 3] -> float tensor [3, H, W] in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0


def smooth_transforms(matrices: np.ndarray, window: int = CROP_SMOOTHING) -> np.ndarray:
    """Centred moving average (shrinking at the ends) of [F, 3, 3] similarity matrices."""
    if window <= 1 or len(matrices) <= 1:
        return matrices.copy()
    half = window // 2
    out = np.empty_like(matrices)
    for i in range(len(matrices)):
        out[i] = matrices[max(0, i - half) : i + half + 1].mean(0)
    return out


_ANALYZERS = threading.local()


def face_analyzer(backend: str = "mediapipe", aux_dir: Path | None = None):
    """A face analyser, reused by later calls from the same thread (MediaPipe's graphs take
    a while to build and must not be shared between threads). Its own crop is unused:
    DiffTalk crops from the landmarks (`track_faces`)."""
    from talkinghead.face import create_face_analyzer

    cache = getattr(_ANALYZERS, "cache", None)
    if cache is None:
        cache = _ANALYZERS.cache = {}
    # Only the release backend reads files from aux_dir.
    key = (backend, None if aux_dir is None or backend == "mediapipe" else str(aux_dir))
    if key not in cache:
        cache[key] = create_face_analyzer(backend, aux_dir=aux_dir)
    return cache[key]


@dataclass
class TrackedFaces:
    """A face tracked through frames, on a temporally smoothed crop transform."""

    o2c: np.ndarray  # [F, 3, 3] float64, frame pixels -> crop pixels
    landmarks: np.ndarray  # [F, 478, 2] float32, crop pixels

    @property
    def c2o(self) -> np.ndarray:
        return np.linalg.inv(self.o2c).astype(np.float32)

    def crop(self, frame: np.ndarray, i: int, resolution: int) -> np.ndarray:
        from talkinghead.face.crop import warp_image

        return warp_image(frame, self.o2c[i], resolution)


def track_faces(
    analyzer,
    frames: Iterable[np.ndarray],
    resolution: int,
    *,
    scale: float = CROP_SCALE,
    vy: float = CROP_VY,
    smoothing: int = CROP_SMOOTHING,
    what: str = "the source",
) -> TrackedFaces:
    """Find the face in every frame (tracking it from the previous one); crop
    `resolution` pixels around it (`scale` x the mesh box, shifted by `vy`) with the
    crop transform smoothed over `smoothing` frames."""
    from talkinghead.face.crop import crop_transform, warp_points

    lmks, o2c, previous = [], [], None
    for i, frame in enumerate(frames):
        face = analyzer.analyze(frame, previous=previous)
        if face.landmarks.shape[0] != MESH_POINTS:
            raise TalkingHeadError(
                f"{what}: DiffTalk needs 478 mesh landmarks; the {analyzer.name!r} face "
                f"backend gives {face.landmarks.shape[0]} (frame {i})"
            )
        lmks.append(face.landmarks)
        o2c.append(crop_transform(face.landmarks, dsize=resolution, scale=scale, vy_ratio=vy)[0])
        previous = face
    if not lmks:
        raise MediaError(f"{what}: no frames")
    smoothed = smooth_transforms(np.stack(o2c), smoothing)
    landmarks = np.stack([warp_points(p, m) for p, m in zip(lmks, smoothed, strict=True)])
    return TrackedFaces(smoothed, landmarks.astype(np.float32))


# ---------------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class PrepareOptions:
    """`prepare_dataset`'s method options."""

    resolution: int = 256
    audio_model: str | None = (
        None  # wav2vec2 CTC dir or hub id; None: checkpoints/wav2vec2 or the default
    )
    face_backend: str = "mediapipe"
    crop_scale: float = CROP_SCALE
    crop_vy: float = CROP_VY
    crop_smoothing: int = CROP_SMOOTHING
    max_frames: int | None = None  # per video
    device: str = "cpu"
    jpeg_quality: int = 95

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PrepareOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(k for k in options if k not in known and k != "audio_encoder")
        if unknown:
            raise TalkingHeadError(
                f"unknown DiffTalk data option(s): {', '.join(unknown)}; expected {', '.join(sorted(known))}"
            )
        return cls(**{k: v for k, v in options.items() if k in known and v is not None})


def _clip_names(videos: list[Path]) -> list[str]:
    def safe(stem: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "clip"

    return unique_names([safe(v.stem) for v in videos], "-")


def _clip_entry(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A clip's entry in the manifest, from its meta.json."""
    return {"name": name, "frames": int(meta["frames"]), "fps": meta["fps"]}


def _load_clip_audio(video: Path) -> np.ndarray:
    from talkinghead.audio.io import load_audio

    for suffix in (".wav", ".flac"):
        side = video.with_suffix(suffix)
        if side.is_file():
            return load_audio(side, SAMPLE_RATE)
    return load_audio(video, SAMPLE_RATE)


class DiffTalkVideoWorker:
    """Per-process worker state: the face analyser and the audio encoder, built once."""

    def __init__(
        self,
        out_dir: Path,
        options: PrepareOptions,
        audio_model: str,
        checkpoints: Path | None,
        encoder: Any = None,
    ) -> None:
        self.clips_dir = Path(out_dir) / "clips"
        self.options = options
        self.analyzer = face_analyzer(options.face_backend, checkpoints)
        if encoder is None:
            from talkinghead.audio.ctc import Wav2Vec2CTCEncoder

            encoder = Wav2Vec2CTCEncoder(audio_model, device=options.device)
        self.encoder = encoder

    def __call__(self, job: PrepareJob) -> list[VideoResult]:
        from talkinghead.media.video import VideoReader

        o = self.options
        (name,) = job.outputs
        video, clip_dir = job.video, self.clips_dir / name
        reader = VideoReader(video)
        fps = reader.fps or float(FPS)
        audio = _load_clip_audio(video)
        # Two passes over the video keep memory flat: track, then crop on smoothed transforms.
        faces = track_faces(
            self.analyzer,
            reader.frames(max_frames=o.max_frames),
            o.resolution,
            scale=o.crop_scale,
            vy=o.crop_vy,
            smoothing=o.crop_smoothing,
            what=str(video),
        )
        tmp = clip_dir.with_name(clip_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            meta = self._write(video, fps, audio, faces, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(clip_dir, ignore_errors=True)
        os.replace(tmp, clip_dir)
        return [VideoResult(name, meta["frames"], _clip_entry(name, meta))]

    def _write(
        self, video: Path, fps: float, audio: np.ndarray, faces: TrackedFaces, tmp: Path
    ) -> dict[str, Any]:
        from talkinghead.media.video import iter_video_frames

        o = self.options
        (tmp / "frames").mkdir(parents=True)
        n, written = len(faces.o2c), 0
        for i, frame in enumerate(iter_video_frames(video, max_frames=n)):
            crop = faces.crop(frame, i, o.resolution)
            ok = cv2.imwrite(
                str(tmp / "frames" / f"{i:06d}.jpg"),
                np.ascontiguousarray(crop[..., ::-1]),
                [cv2.IMWRITE_JPEG_QUALITY, o.jpeg_quality],
            )
            if not ok:
                raise MediaError(f"{tmp}: cannot write frame {i}")
            size, written = frame.shape[:2], written + 1
        if written != n:
            raise MediaError(
                f"{video}: decoded {written} frames on the second pass, {n} on the first"
            )
        probs = self.encoder.probabilities(audio)
        if probs.shape[0] == 0:
            raise MediaError(f"{video}: the audio track is empty")
        windows = frame_windows(probs, n, fps, rate=self.encoder.rate)
        np.save(tmp / "landmarks.npy", faces.landmarks)
        np.save(tmp / "audio.npy", windows.astype(np.float32))
        np.save(tmp / "crop.npy", faces.c2o)
        meta = {"frames": n, "fps": fps, "source": video.name, "size": list(size)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        return meta


def _settings(options: PrepareOptions, audio_model: str, feature_dim: int | None) -> dict[str, Any]:
    return {
        "resolution": options.resolution,
        "crop": {
            "scale": options.crop_scale,
            "vy": options.crop_vy,
            "smoothing": options.crop_smoothing,
        },
        "face_backend": options.face_backend,
        "audio": {"encoder": audio_model, "feature_dim": feature_dim, "window": 16, "rate": 50.0},
    }


class DiffTalkLayout(ClipListLayout):
    """OUT_DIR: difftalk_data.json and one folder per clip under clips/ (module docstring)."""

    manifest_name = MANIFEST_NAME

    def __init__(
        self,
        out_dir: Path,
        jobs: list[PrepareJob],
        options: PrepareOptions,
        audio_model: str,
        old_feature_dim: int | None,
    ) -> None:
        super().__init__(out_dir, jobs)
        self.options = options
        self.audio_model = audio_model
        self.old_feature_dim = old_feature_dim

    def earlier_clip(self, job: PrepareJob) -> dict[str, Any] | None:
        """A clip is finished once its meta.json exists: it is written last."""
        (name,) = job.outputs
        try:
            meta = json.loads((self.out_dir / "clips" / name / "meta.json").read_text())
        except (OSError, ValueError):
            return None
        return _clip_entry(name, meta)

    def manifest(self, clips: list[dict[str, Any]], failed: dict[str, str]) -> dict[str, Any]:
        feature_dim = self.old_feature_dim
        if clips:
            audio = self.out_dir / "clips" / clips[0]["name"] / "audio.npy"
            feature_dim = int(np.load(audio, mmap_mode="r").shape[-1])
        return {
            "format": FORMAT,
            "version": VERSION,
            **_settings(self.options, self.audio_model, feature_dim),
            "clips": clips,
            "failed": failed,
        }


def prepare_dataset(
    videos_dir: Path,
    out_dir: Path,
    *,
    checkpoints: Path | None = None,
    workers: int = 1,
    progress: Progress | None = None,
    **method_options: Any,
) -> PrepareReport:
    """Prepare every video under `videos_dir`, recursively (see the module docstring); resumable.

    Clips already finished with the same settings are kept; a video that fails is
    logged, reported and skipped. Method options: those of `PrepareOptions`, plus
    ``audio_encoder`` (a `CharProbabilityEncoder` object; single process only).
    """
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    options = PrepareOptions.from_options(method_options)
    videos = find_videos(videos_dir, exclude=out_dir)
    encoder = method_options.get("audio_encoder")
    audio_model = getattr(encoder, "name", None) or resolve_ctc_model(
        checkpoints, options.audio_model, DEFAULT_CTC_MODEL
    )

    manifest_path = out_dir / MANIFEST_NAME
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    settings = _settings(options, audio_model, None)
    same = (
        old is not None
        and all(old.get(k) == v for k, v in settings.items() if k != "audio")
        and old.get("audio", {}).get("encoder") == audio_model
    )
    if old is not None and not same:
        raise TalkingHeadError(
            f"{out_dir}: holds data prepared with other settings; use a new directory"
        )

    root = videos_dir if videos_dir.is_dir() else videos_dir.parent
    jobs = [
        PrepareJob(video, video.relative_to(root).as_posix(), (name,))
        for video, name in zip(videos, _clip_names(videos), strict=True)
    ]
    old_dim = None if old is None else old.get("audio", {}).get("feature_dim")
    layout = DiffTalkLayout(out_dir, jobs, options, audio_model, old_dim)
    make_worker = functools.partial(
        DiffTalkVideoWorker, out_dir, options, audio_model, checkpoints, encoder
    )
    # An encoder object given by the caller stays in this process.
    workers = 1 if encoder is not None else workers
    return PrepareRun(out_dir, jobs, layout).run(make_worker, workers=workers, progress=progress)


# ---------------------------------------------------------------------------- dataset


def read_manifest(data_dir: Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise MediaError(
            f"{data_dir}: not a DiffTalk dataset (no {MANIFEST_NAME}); run prepare-data first"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise MediaError(f"{path}: not a DiffTalk data manifest")
    if not manifest.get("clips"):
        raise MediaError(f"{data_dir}: the dataset has no clips")
    return manifest


@dataclass
class _Clip:
    name: str
    frames_dir: Path
    landmarks: np.ndarray  # [F, 478, 2]
    audio: np.ndarray  # [F, 16, C]

    @property
    def num_frames(self) -> int:
        return self.landmarks.shape[0]


class DiffTalkDataset:
    """Training examples of a prepared dataset (a map-style torch dataset).

    Each item is a dict of float tensors: ``image``, ``masked``, ``reference`` [3, R, R]
    in [-1, 1]; ``audio`` [2w + 1, 16, C]; ``landmarks`` [51, 2]. References are drawn
    from a generator seeded by (seed, epoch, index): call `set_epoch` between epochs.
    `cache` keeps decoded frames in memory (small datasets).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        min_reference_gap: int = MIN_REFERENCE_GAP,
        smooth_radius: int = SMOOTH_RADIUS,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        self.resolution = int(self.manifest["resolution"])
        self.min_reference_gap = min_reference_gap
        self.smooth_radius = smooth_radius
        self.seed = seed
        self.epoch = 0
        self.cache: dict[tuple[int, int], np.ndarray] | None = {} if cache else None
        self.clips: list[_Clip] = []
        for entry in self.manifest["clips"]:
            d = self.data_dir / "clips" / entry["name"]
            self.clips.append(
                _Clip(
                    entry["name"],
                    d / "frames",
                    np.load(d / "landmarks.npy"),
                    np.load(d / "audio.npy"),
                )
            )
        self.index = [(c, i) for c, clip in enumerate(self.clips) for i in range(clip.num_frames)]

    @property
    def feature_dim(self) -> int:
        return int(self.clips[0].audio.shape[-1])

    def manifest_settings(self) -> dict[str, Any]:
        """The preparation settings inference must repeat (resolution, crop, audio...)."""
        keys = ("resolution", "crop", "face_backend", "audio")
        return {k: self.manifest[k] for k in keys if k in self.manifest}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def frame(self, clip: int, i: int) -> np.ndarray:
        if self.cache is not None and (clip, i) in self.cache:
            return self.cache[(clip, i)]
        path = self.clips[clip].frames_dir / f"{i:06d}.jpg"
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise MediaError(f"{path}: cannot read the frame")
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        if self.cache is not None:
            self.cache[(clip, i)] = rgb
        return rgb

    def __getitem__(self, idx: int) -> dict[str, Any]:
        import torch

        c, i = self.index[idx]
        clip = self.clips[c]
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        r = reference_index(i, clip.num_frames, rng, self.min_reference_gap)
        image = self.frame(c, i)
        lm = clip.landmarks[i]
        neighbours = neighbour_indices(clip.num_frames, self.smooth_radius, np.array([i]))[0]
        return {
            "image": to_tensor_image(image),
            "masked": to_tensor_image(masked_frame(image, lm)),
            "reference": to_tensor_image(self.frame(c, r)),
            "audio": torch.from_numpy(clip.audio[neighbours]),
            "landmarks": torch.from_numpy(landmark_condition(lm, self.resolution)),
            "reference_index": r,
        }


__all__ = [
    "LANDMARK_POINTS",
    "MANIFEST_NAME",
    "MOUTH_REGION",
    "DiffTalkDataset",
    "PrepareOptions",
    "PrepareReport",
    "TrackedFaces",
    "face_analyzer",
    "generation_mask",
    "landmark_condition",
    "latent_keep_mask",
    "mask_row",
    "masked_frame",
    "prepare_dataset",
    "read_manifest",
    "reference_index",
    "smooth_transforms",
    "track_faces",
]
