"""DiT-Head data preparation: training clips of face crops, landmarks and audio logits.

`prepare_dataset` turns a folder of talking-head videos into training clips
(`talkinghead.training.prepare` runs it: resumable, parallel, a bad video is skipped):

* frames are decoded in a stream and resampled to 25 fps (nearest frame in time);
* faces are found and tracked with `talkinghead.face` (478-point MediaPipe mesh by
  default, the release's 203-point models when present); each frame is cropped with
  a rotation-aligned similarity transform to ``size`` x ``size`` pixels (256);
* the landmarks are stored in crop pixels, so the mask is drawn at training time
  (with the random shifts the paper uses as augmentation);
* per-frame audio features are the CTC logits of a wav2vec2 model (the paper's
  ``jonatasgrosman/wav2vec2-large-xlsr-53-english``: 33 output tokens), averaged
  over the two 20 ms wav2vec2 frames of each 40 ms video frame
  (`talkinghead.audio.ctc.Wav2Vec2CTCEncoder.frame_logits`). A window of 11
  frames (t - 5 ... t + 5) of them is the paper's 363-dimensional audio vector
  (11 x 33 = 363), built when a sample is drawn.

Layout of a prepared dataset::

    dataset.json                  settings, audio model, list of clips
    clips/<name>/frames.u8        raw uint8 crops [N, size, size, 3] (memory-mapped)
    clips/<name>/landmarks.npy    float32 [N, K, 2], crop pixels
    clips/<name>/audio.npy        float32 [N, V] per-frame CTC logits
    clips/<name>/M_c2o.npy        float32 [N, 3, 3], crop -> source frame pixels
    clips/<name>/valid.npy        bool [N]: False where tracking lost the face

`load_prepared` opens such a dataset for training and `SampleDrawer` draws its
batches (crops masked with randomly shifted masks, reference frames, audio
windows). The crop, the mask and the audio windows themselves are computed in
`talkinghead.methods.dithead.features`, shared with inference; the settings are
`talkinghead.methods.dithead.config.DataSettings`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from talkinghead.audio.ctc import Wav2Vec2CTCEncoder, ctc_vocab_size, resolve_ctc_model
from talkinghead.errors import MediaError, NoFaceError, TalkingHeadError
from talkinghead.face.types import FaceCrop
from talkinghead.methods.dithead.config import (
    DEFAULT_AUDIO_MODEL,
    AudioSettings,
    CropSettings,
    DataSettings,
    MaskSettings,
)
from talkinghead.methods.dithead.features import (
    apply_mask,
    crop_face,
    lower_face_mask,
    to_tensor_image,
)
from talkinghead.timebase import FPS, SAMPLE_RATE, num_frames
from talkinghead.training.arrays import DEFAULT_MAX_OPEN, NpyPool
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

DATASET_FILE = "dataset.json"
FORMAT = "talkinghead.dithead.dataset"

# Progress callback of `prepare_dataset`: (videos done, videos in all).
Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------- preparation


@dataclass
class PreparedVideo:
    """One source video, analysed: crops, landmarks (crop pixels), transforms, validity."""

    frames: np.ndarray  # [N, S, S, 3] uint8
    landmarks: np.ndarray  # [N, K, 2] float32, crop pixels
    M_c2o: np.ndarray  # [N, 3, 3] float32
    valid: np.ndarray  # [N] bool
    first: int  # index (25 fps) of the first frame kept: frames before had no face


def analyze_frames(
    frames: Iterator[np.ndarray] | list[np.ndarray],
    analyzer: Any,
    crop: CropSettings,
    *,
    progress: Callable[[int], None] | None = None,
) -> PreparedVideo:
    """Track the face through frames and crop each. Frames before the first face are
    dropped; later frames where the face is lost reuse the last landmarks (invalid)."""
    crops, lmks, mats, valid = [], [], [], []
    previous: FaceCrop | None = None
    first = 0
    for i, rgb in enumerate(frames):
        try:
            fc = analyzer.analyze(rgb, previous)
            ok = True
        except NoFaceError:
            fc, ok = None, False
            if previous is not None:
                try:
                    fc, ok = analyzer.analyze(rgb, None), True
                except NoFaceError:
                    fc = previous
        if fc is None:  # no face yet: drop the frame
            first = i + 1
            continue
        previous = fc
        image, points, M_c2o = crop_face(rgb, fc.landmarks, crop)
        crops.append(image)
        lmks.append(points.astype(np.float32))
        mats.append(M_c2o.astype(np.float32))
        valid.append(ok)
        if progress is not None:
            progress(i + 1)
    if not crops:
        raise NoFaceError("no face found in any frame")
    return PreparedVideo(
        frames=np.stack(crops),
        landmarks=np.stack(lmks),
        M_c2o=np.stack(mats),
        valid=np.asarray(valid, dtype=bool),
        first=first,
    )


def _clip_names(videos: list[Path]) -> list[str]:
    return unique_names([re.sub(r"[^A-Za-z0-9_.-]+", "_", v.stem) or "clip" for v in videos], "_")


def _write_clip(clip_dir: Path, video: PreparedVideo, audio: np.ndarray, meta: dict) -> None:
    clip_dir.mkdir(parents=True, exist_ok=True)
    video.frames.tofile(clip_dir / "frames.u8")
    np.save(clip_dir / "landmarks.npy", video.landmarks)
    np.save(clip_dir / "audio.npy", audio.astype(np.float32))
    np.save(clip_dir / "M_c2o.npy", video.M_c2o)
    np.save(clip_dir / "valid.npy", video.valid)
    (clip_dir / "clip.json").write_text(json.dumps(meta, indent=1))


def _process_video(
    path: Path,
    clip_dir: Path,
    settings: DataSettings,
    analyzer: Any,
    audio_encoder: Wav2Vec2CTCEncoder,
    max_frames: int | None,
    on_frame: Callable[[int], None] | None = None,
) -> int:
    from talkinghead.audio.io import load_audio
    from talkinghead.media.video import iter_video_frames

    frames = islice(iter_video_frames(path, fps=FPS), max_frames)
    try:
        video = analyze_frames(frames, analyzer, settings.crop, progress=on_frame)
    except NoFaceError as e:
        raise NoFaceError(f"{path}: {e}") from None
    try:
        audio = load_audio(path, SAMPLE_RATE)
    except MediaError as e:
        raise MediaError(f"{path}: no usable audio ({e})") from None
    # Frames past the end of the audio (or of the video) have nothing to pair with.
    feats = audio_encoder.frame_logits(audio, num_frames(len(audio)))[video.first :]
    n = min(len(video.frames), len(feats))
    if n <= 0:
        raise MediaError(f"{path}: the audio ends before the first frame with a face")
    video = PreparedVideo(
        video.frames[:n], video.landmarks[:n], video.M_c2o[:n], video.valid[:n], video.first
    )
    meta = {
        "source": str(path),
        "frames": n,
        "first_frame": video.first,
        "valid_frames": int(video.valid.sum()),
        "settings": _clip_key(settings, max_frames),
    }
    _write_clip(clip_dir, video, feats[:n], meta)
    return n


def _clip_key(settings: DataSettings, max_frames: int | None) -> dict[str, Any]:
    # What the stored arrays depend on (the mask and window are applied when training).
    return {"crop": asdict(settings.crop), "audio_model": settings.audio_model, "max": max_frames}


class DitHeadVideoWorker:
    """Per-process state: the face analyser and the audio encoder, built once."""

    def __init__(
        self,
        out_dir: Path,
        settings: DataSettings,
        face_backend: str,
        aux_dir: str | None,
        device: str,
        max_frames: int | None,
    ) -> None:
        from talkinghead.face import create_face_analyzer

        self.clips_dir = Path(out_dir) / "clips"
        self.settings = settings
        self.max_frames = max_frames
        self.analyzer = create_face_analyzer(face_backend, aux_dir)
        self.encoder = Wav2Vec2CTCEncoder(settings.audio_model, device=device)

    def __call__(self, job: PrepareJob) -> list[VideoResult]:
        (name,) = job.outputs
        n = _process_video(
            job.video,
            self.clips_dir / name,
            self.settings,
            self.analyzer,
            self.encoder,
            self.max_frames,
        )
        return [VideoResult(name, n, {"name": name, "frames": n, "source": str(job.video)})]

    def close(self) -> None:
        close = getattr(self.analyzer, "close", None)
        if close is not None:
            close()


class DitHeadLayout(ClipListLayout):
    """OUT_DIR: dataset.json and one folder per clip under clips/ (module docstring)."""

    manifest_name = DATASET_FILE

    def __init__(
        self,
        out_dir: Path,
        jobs: list[PrepareJob],
        settings: DataSettings,
        clip_key: dict[str, Any],
    ) -> None:
        super().__init__(out_dir, jobs)
        self.settings = settings
        self.clip_key = clip_key  # what a clip of an earlier run must have been made with

    def earlier_clip(self, job: PrepareJob) -> dict[str, Any] | None:
        """The clip an earlier run completed from the same video and settings, if any."""
        (name,) = job.outputs
        try:
            meta = json.loads((self.out_dir / "clips" / name / "clip.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("source") != str(job.video) or meta.get("settings") != self.clip_key:
            return None
        return {"name": name, "frames": int(meta["frames"]), "source": str(job.video)}

    def manifest(self, clips: list[dict[str, Any]], failed: dict[str, str]) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "method": "dithead",
            "fps": FPS,
            "settings": self.settings.to_dict(),
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
    """Prepare DiT-Head training clips from the videos under ``videos_dir`` (see module doc).

    Options: ``size`` (crop side, 256), ``crop_scale`` (1.6), ``crop_vy`` (0.0),
    ``audio_model`` (a wav2vec2 CTC model directory or hub id; default
    ``<checkpoints>/wav2vec2`` if present, else the paper's model), ``face_backend``
    ("auto" | "release" | "mediapipe") with ``aux_dir`` (the folder of the release's
    face models, for "auto"/"release"), ``max_frames`` (per video), ``device`` for the audio model ("cpu"),
    ``min_ref_distance`` (60) and ``window`` (11), which are recorded for training.
    A video that fails (no face, no audio, unreadable) is skipped and reported in
    ``failed``; a video an earlier run already prepared with the same settings is
    reused, so an interrupted run can be started again. ``progress(done, total)``
    counts videos.
    """
    out_dir = Path(out_dir)
    known = {
        "size", "crop_scale", "crop_vy", "audio_model", "face_backend", "aux_dir",
        "max_frames", "device", "min_ref_distance", "window",
    }  # fmt: skip
    unknown = set(method_options) - known
    if unknown:
        raise TalkingHeadError(f"unknown dithead data option(s): {', '.join(sorted(unknown))}")
    opts = method_options
    videos = find_videos(Path(videos_dir), exclude=out_dir)
    audio_model = resolve_ctc_model(checkpoints, opts.get("audio_model"), DEFAULT_AUDIO_MODEL)
    window = int(opts.get("window", 11))
    settings = DataSettings(
        crop=CropSettings(
            size=int(opts.get("size", 256)),
            scale=float(opts.get("crop_scale", 1.6)),
            vy_ratio=float(opts.get("crop_vy", 0.0)),
        ),
        audio=AudioSettings(window=window, vocab_size=ctc_vocab_size(audio_model)),
        min_ref_distance=int(opts.get("min_ref_distance", 60)),
        audio_model=audio_model,
    )
    max_frames = None if opts.get("max_frames") is None else int(opts["max_frames"])
    aux_dir = opts.get("aux_dir")

    jobs = [
        PrepareJob(video, str(video), (name,))
        for video, name in zip(videos, _clip_names(videos), strict=True)
    ]
    layout = DitHeadLayout(out_dir, jobs, settings, _clip_key(settings, max_frames))
    make_worker = functools.partial(
        DitHeadVideoWorker,
        out_dir,
        settings,
        str(opts.get("face_backend", "auto")),
        None if aux_dir is None else str(aux_dir),
        str(opts.get("device", "cpu")),
        max_frames,
    )
    return PrepareRun(out_dir, jobs, layout).run(make_worker, workers=workers, progress=progress)


# --------------------------------------------------------------------------- loading


class PooledFrames:
    """A clip's ``frames.u8`` [N, S, S, 3] uint8, mapped through a shared `NpyPool`: a
    dataset of any size keeps at most the pool's bound of files open. ``frames[i]`` is a
    copy of one frame."""

    def __init__(self, path: Path, shape: tuple[int, ...], pool: NpyPool) -> None:
        self.path, self.shape, self.dtype, self.pool = path, tuple(shape), np.dtype(np.uint8), pool
        pool.add_raw(path, self.shape, self.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            return self.pool.rows(self.path, index.start, index.stop, dtype=np.uint8)[
                :: index.step or 1
            ]
        return self.pool.row(self.path, int(index), dtype=np.uint8)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self.pool.rows(self.path, dtype=dtype or np.uint8)


@dataclass
class Clip:
    name: str
    frames: PooledFrames | np.ndarray  # [N, S, S, 3] uint8, on disk
    landmarks: np.ndarray
    audio: np.ndarray  # [N, V]
    valid: np.ndarray

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class PreparedDataset:
    root: Path
    settings: DataSettings
    clips: list[Clip]

    @property
    def size(self) -> int:
        return self.settings.crop.size

    def __len__(self) -> int:
        return sum(len(c) for c in self.clips)


def load_prepared(data_dir: Path, max_open_files: int = DEFAULT_MAX_OPEN) -> PreparedDataset:
    """Open a dataset written by `prepare_dataset` (frames stay on disk, memory-mapped,
    at most `max_open_files` of them open at a time whatever the number of clips)."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / DATASET_FILE
    if not manifest_path.is_file():
        raise MediaError(f"{data_dir}: not a prepared DiT-Head dataset (no {DATASET_FILE})")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise MediaError(f"{manifest_path}: not a DiT-Head dataset")
    settings = DataSettings.from_dict(manifest["settings"])
    s = settings.crop.size
    clips = []
    pool = NpyPool(max_open_files)  # one pool for all clips: the bound is global
    for entry in manifest["clips"]:
        d = data_dir / "clips" / entry["name"]
        n = int(entry["frames"])
        if n == 0:
            continue
        frames = PooledFrames(d / "frames.u8", (n, s, s, 3), pool)
        clips.append(
            Clip(
                name=entry["name"],
                frames=frames,
                landmarks=np.load(d / "landmarks.npy"),
                audio=np.load(d / "audio.npy"),
                valid=np.load(d / "valid.npy"),
            )
        )
    if not clips:
        raise MediaError(f"{data_dir}: the dataset has no clips")
    return PreparedDataset(data_dir, settings, clips)


class SampleDrawer:
    """Draws training batches from a prepared dataset with a seeded numpy generator.

    Stage 1 draws single crops (whole, or masked with a randomly shifted mask);
    stage 2 draws (target, masked target, reference, audio window) tuples, the
    reference at least ``min_ref_distance`` frames from the target (the farthest
    valid frame when the clip is too short for that).
    """

    def __init__(self, data: PreparedDataset, seed: int = 0, augment: bool = True) -> None:
        self.data = data
        self.rng = np.random.default_rng(seed)
        self.augment = augment
        self.index = [
            (ci, int(i)) for ci, c in enumerate(data.clips) for i in np.flatnonzero(c.valid)
        ]
        if not self.index:
            raise MediaError(f"{data.root}: no frame with a tracked face")

    def _pick(self, n: int) -> list[tuple[int, int]]:
        idx = self.rng.integers(0, len(self.index), size=n)
        return [self.index[i] for i in idx]

    def masked_crop(self, clip: Clip, i: int) -> np.ndarray:
        s, m = self.data.size, self.data.settings.mask
        shift = random_shift(self.rng, s, m) if self.augment else (0.0, 0.0)
        return apply_mask(
            np.asarray(clip.frames[i]), lower_face_mask(clip.landmarks[i], s, m, shift)
        )

    def reference_index(self, clip: Clip, i: int) -> int:
        valid = np.flatnonzero(clip.valid)
        dist = np.abs(valid - i)
        far = valid[dist >= self.data.settings.min_ref_distance]
        if far.size:
            return int(far[self.rng.integers(0, far.size)])
        return int(valid[np.argmax(dist)])

    def images(self, batch: int, masked: bool):
        """Stage 1: [B, 3, S, S] in [-1, 1]."""
        out = []
        for ci, i in self._pick(batch):
            clip = self.data.clips[ci]
            out.append(self.masked_crop(clip, i) if masked else np.asarray(clip.frames[i]))
        return to_tensor_image(np.stack(out))

    def dit_batch(self, batch: int) -> dict[str, Any]:
        """Stage 2: target, masked, reference images [B, 3, S, S] and audio [B, window * V]."""
        import torch

        window = self.data.settings.audio.window
        tgt, msk, ref, aud = [], [], [], []
        for ci, i in self._pick(batch):
            clip = self.data.clips[ci]
            tgt.append(np.asarray(clip.frames[i]))
            msk.append(self.masked_crop(clip, i))
            ref.append(np.asarray(clip.frames[self.reference_index(clip, i)]))
            aud.append(_window_at(clip.audio, i, window))
        return {
            "target": to_tensor_image(np.stack(tgt)),
            "masked": to_tensor_image(np.stack(msk)),
            "reference": to_tensor_image(np.stack(ref)),
            "audio": torch.from_numpy(np.stack(aud)),
        }


def random_shift(rng: np.random.Generator, size: int, mask: MaskSettings) -> tuple[float, float]:
    """Training augmentation: a random mask offset of up to ``mask.max_shift`` x size."""
    s = mask.max_shift * size
    return (float(rng.uniform(-s, s)), float(rng.uniform(-s, s))) if s > 0 else (0.0, 0.0)


def _window_at(features: np.ndarray, i: int, window: int) -> np.ndarray:
    # One row of `audio_windows(features, window)`, without windowing the whole clip.
    half = window // 2
    idx = np.clip(np.arange(i - half, i + half + 1), 0, len(features) - 1)
    return np.asarray(features[idx], dtype=np.float32).reshape(-1)


__all__ = [
    "Clip",
    "PooledFrames",
    "PrepareReport",
    "PreparedDataset",
    "PreparedVideo",
    "SampleDrawer",
    "analyze_frames",
    "load_prepared",
    "prepare_dataset",
    "random_shift",
]
