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
vy -0.1 around the mesh's jaw/brow box, smoothed over 5 frames against jitter
(`talkinghead.methods.difftalk.features.track_faces`, as inference crops its source).

`DiffTalkDataset` serves, per frame i: the crop x, the mouth-masked crop x_m (every
row from the nose tip down set to black, as the release does), a reference crop x_r
from the same clip at least 60 frames away (the farthest frame when the clip is
shorter), the audio windows of frames i - 8 .. i + 8 for the temporal filter, and
the landmarks outside the mouth region, in [0, 1] crop units.

The crops, landmarks, masks and audio windows are computed by
`talkinghead.methods.difftalk.features`, which inference uses too.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from talkinghead.audio.ctc import DEFAULT_CTC_MODEL, neighbour_indices, resolve_ctc_model
from talkinghead.errors import MediaError, TalkingHeadError
from talkinghead.face import thread_face_analyzer
from talkinghead.methods.difftalk.features import (
    CROP_SCALE,
    CROP_SMOOTHING,
    CROP_VY,
    TrackedFaces,
    audio_windows,
    landmark_condition,
    masked_frame,
    to_tensor_image,
    track_faces,
)
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

MIN_REFERENCE_GAP = 60
SMOOTH_RADIUS = 8

# Progress callback of `prepare_dataset` (the prepare-data command's): (videos done, total).
Progress = Callable[[int, int], None]


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
        self.analyzer = thread_face_analyzer(options.face_backend, checkpoints)
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
        windows = audio_windows(self.encoder, audio, n, fps, what=str(video))
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


def reference_index(
    index: int, num_frames: int, rng: np.random.Generator, min_gap: int = MIN_REFERENCE_GAP
) -> int:
    """A random frame at least `min_gap` frames from `index`; the farthest one if none is."""
    candidates = np.flatnonzero(np.abs(np.arange(num_frames) - index) >= min_gap)
    if candidates.size:
        return int(rng.choice(candidates))
    return 0 if index >= num_frames - 1 - index else num_frames - 1


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
    fps: float = float(FPS)

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
                    float(entry.get("fps") or FPS),
                )
            )
        self.index = [(c, i) for c, clip in enumerate(self.clips) for i in range(clip.num_frames)]

    def hold_out(self, names: Collection[str]) -> list[_Clip]:
        """Take the clips named `names` out of the training examples; returns them. Call it
        before any frame is read (the frame cache and `index` count the clips that stay)."""
        held = [c for c in self.clips if c.name in names]
        self.clips = [c for c in self.clips if c.name not in names]
        self.index = [(c, i) for c, clip in enumerate(self.clips) for i in range(clip.num_frames)]
        if self.cache is not None:
            self.cache.clear()
        return held

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
        rgb = self.clip_frame(self.clips[clip], i)
        if self.cache is not None:
            self.cache[(clip, i)] = rgb
        return rgb

    @staticmethod
    def clip_frame(clip: _Clip, i: int) -> np.ndarray:
        """Frame `i` of `clip` (a training or a held-out one), RGB uint8, uncached."""
        path = clip.frames_dir / f"{i:06d}.jpg"
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise MediaError(f"{path}: cannot read the frame")
        return np.ascontiguousarray(bgr[..., ::-1])

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
    "MANIFEST_NAME",
    "DiffTalkDataset",
    "PrepareOptions",
    "PrepareReport",
    "prepare_dataset",
    "read_manifest",
    "reference_index",
]
