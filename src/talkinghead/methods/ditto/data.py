"""Training data for Ditto's motion model: a folder of talking videos -> per-video arrays.

`prepare_dataset(videos_dir, out_dir)` processes every video under `videos_dir`
(``.mp4 .mov .mkv .m4v .avi .webm``, searched recursively; `talkinghead.training.prepare`
runs it). Each should be a 25 fps clip with its speech and one face in every frame;
other frame rates are resampled to 25 fps (nearest frame in time) with a warning. Per
video and per 25 fps frame:

* the face is tracked (`talkinghead.face`) and cropped to 512; the crop, shrunk to 256,
  goes through the motion extractor: the 265-dim motion
  (`talkinghead.methods.ditto.motion.format`) plus the 63 canonical keypoints, per frame
  (no temporal smoothing: the targets are the raw motion). The crop is
  ``crop_mode="clip"`` (default, the release's rule): ONE axis-aligned box for the whole
  clip, the mean of the per-frame boxes at the release's training-crop scale 2.2 / vy
  -0.1, in whole pixels (`motion.extraction.clip_crop_box`), so head translation, scale
  and roll stay in the motion; or ``"frame"``: avatar registration's per-frame,
  roll-aligned crop (scale 2.3 / vy -0.125), which cancels them;
* eye openness [2] and eye-ball offsets [6] come from the face backend, per frame;
* emotion [8] (`talkinghead.methods.ditto.motion.conditions.EMOTIONS` order) comes from a
  pluggable classifier (`talkinghead.methods.ditto.emotion`; ``"hsemotion:PATH"`` for
  HSEmotion's enet_b2_8 ONNX model) run on the face box (the landmarks' square bounds in
  the frame) of every `emotion_stride`-th frame, 5 fps at the default 5, as the release
  labels; every frame takes the nearest labelled frame's probabilities. Without one,
  every frame gets the stated default: Neutral, as the 8-way soft vector the inference
  pipeline uses (`emotion_vector("Neutral")`, 0.9976 on Neutral);
* speech features [D] (HuBERT, 1024 dims for the release) at 25 fps from the
  audio track resampled to 16 kHz (`talkinghead.audio.hubert`);
* with ``landmarks=True`` only: MediaPipe's 478 face-mesh landmarks [478, 3] found on
  the 512 crop the motion comes from, normalised (x / 512, y / 512, z in the mesh's
  units), the release's ``MP_lmk_npy`` (the input of training's `use_lmk`).

Every array of a video is cut to the shortest of them (video frames vs
ceil(audio seconds * 25) feature rows), so `frame_num` rows each.

Output layout (folder and key names follow the release's training branch)::

    OUT_DIR/
      manifest.json           status of every video, settings and array dims (below)
      data_list.json          the release's training list: one entry per finished video
                              {"name", "frame_num", "mtn", "aud", "emo", "eye_open",
                              "eye_ball", "sc", + "lmk" with landmarks} (paths relative
                              to OUT_DIR)
      data_info.json          the release's per-kind path lists (absolute paths):
                              fps25_video_list, hubert_aud_npy_list, LP_npy_list,
                              eye_open_npy_list, eye_ball_npy_list, emo_npy_list, sc_npy_list,
                              MP_lmk_npy_list (when every video has landmarks)
      hubert_aud_npy/NAME.npy float32 [frame_num, D]    speech features
      LP_npy/NAME.npy         float32 [frame_num, 328]  motion (265) + canonical keypoints (63)
      eye_open_npy/NAME.npy   float32 [frame_num, 2]
      eye_ball_npy/NAME.npy   float32 [frame_num, 6]    [xL, xR, yL, yR, zL, zR]
      emo_npy/NAME.npy        float32 [frame_num, 8]
      sc_npy/NAME.npy         float32 [63]              shape code: frame 0's keypoints
      MP_lmk_npy/NAME.npy     float32 [frame_num, 478, 3]  (landmarks=True) mesh on the crop

NAME is the video's path relative to VIDEOS_DIR without its suffix (``a/b.mp4`` ->
``a/b``; with `flip`, the mirrored copy is ``NAME_flip``). `manifest.json`::

    {"format": "talkinghead-ditto-data", "version": 1, "fps": 25, "sample_rate": 16000,
     # per-frame shape of each array (sc: one row per video)
     "dims": {"aud": [D], "mtn": [328], "eye_open": [2], "eye_ball": [6], "emo": [8], "sc": []},
     "settings": {"face_backend", "motion_extractor", "hubert", "emotion", ...},
     "videos": {NAME: {"status": "ok", "source", "frame_num", "fps", "resampled_from",
                       "audio_seconds", "num_faces", "files": {kind: path},
                       # the crop: {"mode": "clip", "box": [x0, y0, x1, y1],
                       #            "M_c2o": 3x3 crop -> frame} or {"mode": "frame"}
                       "crop": {...}},
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

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talkinghead.errors import CheckpointError, MediaError, TalkingHeadError
from talkinghead.methods.ditto.emotion import SPEC_PREFIX as HSEMOTION_SPEC_PREFIX
from talkinghead.methods.ditto.emotion import EmotionClassifier
from talkinghead.timebase import FPS, SAMPLE_RATE
from talkinghead.training.prepare import (
    PrepareJob,
    PrepareReport,
    PrepareRun,
    VideoResult,
    find_videos,
    write_json,
)

log = logging.getLogger(__name__)

FORMAT = "talkinghead-ditto-data"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DATA_LIST_NAME = "data_list.json"
DATA_INFO_NAME = "data_info.json"

# data_list.json key -> (folder, data_info.json list name). Folder names are the release's.
ARRAY_KINDS: dict[str, tuple[str, str]] = {
    "aud": ("hubert_aud_npy", "hubert_aud_npy_list"),
    "mtn": ("LP_npy", "LP_npy_list"),
    "eye_open": ("eye_open_npy", "eye_open_npy_list"),
    "eye_ball": ("eye_ball_npy", "eye_ball_npy_list"),
    "emo": ("emo_npy", "emo_npy_list"),
    "sc": ("sc_npy", "sc_npy_list"),
    "lmk": ("MP_lmk_npy", "MP_lmk_npy_list"),
}
OPTIONAL_KINDS = ("lmk",)  # written only when asked for (``landmarks=True``)
MOTION_WITH_KP_DIM = 328  # 265 motion + 63 canonical keypoints, the release's LP_npy rows

ProgressCallback = Callable[[int, int], None]


CROP_MODES = ("clip", "frame")
EMOTION_INPUT_SIZE = 260  # enet_b2_8's input; a classifier's own `input_size` wins


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


# --- helpers --------------------------------------------------------------------------------


def _save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, np.ascontiguousarray(arr, dtype=np.float32))
    os.replace(tmp, path)


def video_names(videos: list[Path], videos_dir: Path) -> dict[str, Path]:
    """NAME -> video file: the path relative to `videos_dir` without its suffix."""
    root = videos_dir if videos_dir.is_dir() else videos_dir.parent
    names: dict[str, Path] = {}
    for p in videos:
        rel = p.relative_to(root)
        name = rel.with_suffix("").as_posix()
        if name in names:  # a.mp4 next to a.mov: keep both, the second by its full name
            name = rel.as_posix().replace(".", "_")
        names[name] = p
    return names


def interpolate_rows(known: dict[int, np.ndarray], n: int) -> np.ndarray:
    """Rows known at some indices -> [n, dim], linear in between, held at the ends."""
    idx = np.array(sorted(known))
    values = np.stack([known[i] for i in idx]).astype(np.float64)
    out = np.empty((n, values.shape[1]), np.float64)
    for c in range(values.shape[1]):
        out[:, c] = np.interp(np.arange(n), idx, values[:, c])
    return out.astype(np.float32)


def nearest_rows(known: dict[int, np.ndarray], n: int) -> np.ndarray:
    """Rows known at some indices -> [n, dim]: each index takes the nearest known row
    (the earlier one on a tie), as labels sampled at 5 fps spread to 25 fps frames."""
    idx = np.array(sorted(known))
    values = np.stack([known[i] for i in idx]).astype(np.float32)
    # The first known index at or after each frame, and the one before it: keep the closer.
    after = np.clip(np.searchsorted(idx, np.arange(n)), 0, len(idx) - 1)
    before = np.clip(after - 1, 0, len(idx) - 1)
    frames = np.arange(n)
    pick = np.where(np.abs(idx[before] - frames) <= np.abs(idx[after] - frames), before, after)
    return values[pick]


def face_box_crop(frame: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The face box of a frame as a square ``size`` crop: the landmarks' axis-aligned bounds
    (a mesh's forehead left out, as the crop does), the longer side, black outside."""
    from talkinghead.face.crop import LAYOUTS, warp_image

    pts = np.asarray(landmarks, np.float64)[:, :2]
    layout = LAYOUTS.get(len(pts))
    if layout is not None and layout.box_points is not None:
        pts = pts[list(layout.box_points)]
    lo, hi = pts.min(0), pts.max(0)
    side = max(float((hi - lo).max()), 1.0)
    s = size / side
    centre = (lo + hi) / 2
    m = np.array([[s, 0, size / 2 - s * centre[0]], [0, s, size / 2 - s * centre[1]], [0, 0, 1]])
    return warp_image(frame, m, size)


def resolve_emotion_classifier(spec: Any, *, instantiate: bool = True) -> Any:
    """A classifier, ``"hsemotion:PATH"`` (HSEmotion's ONNX model), or ``"module:name"``
    naming one (a class is instantiated without arguments)."""
    if not isinstance(spec, str):
        return spec
    if spec.startswith(HSEMOTION_SPEC_PREFIX):
        from talkinghead.methods.ditto.emotion import HSEmotionClassifier, resolve_hsemotion_path

        path = spec[len(HSEMOTION_SPEC_PREFIX) :]
        if not path:
            raise TalkingHeadError(
                "emotion classifier 'hsemotion:': give the model, hsemotion:PATH"
            )
        if not instantiate:
            return resolve_hsemotion_path(path)
        return HSEmotionClassifier(path)
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


def array_kinds(landmarks: bool) -> tuple[str, ...]:
    """The data_list keys a run writes per video."""
    return tuple(k for k in ARRAY_KINDS if landmarks or k not in OPTIONAL_KINDS)


def _files(name: str, kinds: tuple[str, ...]) -> dict[str, str]:
    return {k: f"{ARRAY_KINDS[k][0]}/{name}.npy" for k in kinds}


def _mesh_landmarker(face_analyzer: Any) -> Callable[[np.ndarray], np.ndarray | None] | None:
    """The face backend's 478-point mesh (crop -> [478, 3] normalised, or None), if it has one:
    the release backend's `landmark478`, the mediapipe backend's `mesh`."""
    return getattr(face_analyzer, "landmark478", None) or getattr(face_analyzer, "mesh", None)


# --- per-video work ---------------------------------------------------------------------------


@dataclass
class _WorkerSpec:
    """Everything a worker needs to build its networks (picklable)."""

    out_dir: str
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
    crop_mode: str = "clip"
    landmarks: bool = False


class DittoVideoWorker:
    """Turns one video into the training arrays (one instance per worker process)."""

    def __init__(self, spec: _WorkerSpec) -> None:
        import torch

        from talkinghead.audio.hubert import HubertFeatureExtractor
        from talkinghead.face import create_face_analyzer
        from talkinghead.models import load_official

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
        self.mesh = _mesh_landmarker(self.face) if spec.landmarks else None
        if spec.landmarks and self.mesh is None:
            raise TalkingHeadError(
                f"face backend {getattr(self.face, 'name', type(self.face).__name__)!r} has no "
                "478-point face mesh for landmarks; use --face-backend mediapipe or release"
            )

    def close(self) -> None:
        """Release the face analyser's native resources, unless the caller owns it."""
        nets = self.spec.networks
        if nets is None or nets.face_analyzer is None:
            close = getattr(self.face, "close", None)
            if close is not None:
                close()

    def __call__(self, job: PrepareJob) -> list[VideoResult]:
        """Write the arrays of `job`'s video (and of its mirror image with `flip`)."""
        start = time.perf_counter()
        out_dir = Path(self.spec.out_dir)
        results = []
        for name, variant in zip(job.outputs, self.process(job.video), strict=True):
            files = _files(name, tuple(variant["arrays"]))
            for kind, arr in variant["arrays"].items():
                _save_npy(out_dir / files[kind], arr)
            entry = {
                "status": "ok",
                "source": str(job.video),
                "flip": variant["flip"],
                "frame_num": variant["frame_num"],
                "fps": variant["fps"],
                "resampled_from": variant["resampled_from"],
                "audio_seconds": variant["audio_seconds"],
                "num_faces": variant["num_faces"],
                "crop": variant["crop"],
                "seconds": round(time.perf_counter() - start, 2),
                "files": files,
                "dims": {k: list(a.shape[1:]) for k, a in variant["arrays"].items()},
            }
            results.append(VideoResult(name, variant["frame_num"], entry))
        return results

    # -- pieces ---------------------------------------------------------------------------

    def _classify(self, crops: list[tuple[int, np.ndarray]], known: dict[int, np.ndarray]) -> None:
        """Run the emotion classifier on (frame index, face-box crop) pairs into `known`."""
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
        from talkinghead.methods.ditto.motion.conditions import NEUTRAL, emotion_vector

        if self.emotion_classifier is None:
            return np.repeat(emotion_vector(NEUTRAL).numpy()[None], n, axis=0)
        return nearest_rows(known, n)

    def _emotion_labelled(self, i: int) -> bool:
        return self.emotion_classifier is not None and i % self.spec.emotion_stride == 0

    def _crop_landmarks(self, crop: np.ndarray, where: str, i: int) -> np.ndarray:
        """MediaPipe's 478 landmarks [478, 3] on a crop, normalised, as the release stores them."""
        from talkinghead.errors import NoFaceError

        assert self.mesh is not None
        lmk = self.mesh(crop)
        if lmk is None:
            raise NoFaceError(
                f"{where} (frame {i}): no face mesh found in the {crop.shape[0]} crop "
                "for the landmarks; cut the clip where the face leaves the crop"
            )
        return np.asarray(lmk, np.float32).reshape(478, 3)

    def _emotion_crop(self, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        size = int(getattr(self.emotion_classifier, "input_size", EMOTION_INPUT_SIZE))
        return face_box_crop(frame, landmarks, size)

    def _open_frames(self, video: Path, flip: bool, *, warn: bool) -> tuple[float, bool, Any]:
        """(source fps, resampled?, the video's 25 fps RGB frames, mirrored with `flip`)."""
        from talkinghead.media.video import VideoReader

        reader = VideoReader(video)
        fps = reader.fps
        if fps is None:
            reader.close()
            raise MediaError(f"{video}: unknown frame rate")
        resampled = abs(fps - FPS) > 1e-3
        if resampled and warn:
            log.warning("%s: %.3f fps, resampled to %d fps", video, fps, FPS)
        frames = reader.frames(
            fps=FPS if resampled else None, fit=True, max_side=self.spec.max_side
        )
        if flip:
            frames = (np.ascontiguousarray(f[:, ::-1]) for f in frames)
        return fps, resampled, frames

    def _track(self, video: Path, flip: bool) -> dict[str, Any]:
        """Per 25 fps frame: motion with keypoints, eyes, emotion; frame rate and faces."""
        fps, resampled, frames = self._open_frames(video, flip, warn=not flip)
        where = f"{video}, mirrored" if flip else str(video)
        emo_known: dict[int, np.ndarray] = {}
        if self.spec.crop_mode == "frame":
            track = self._track_per_frame(frames, where, emo_known)
        else:
            track = self._track_clip(video, flip, frames, where, emo_known)
        n = track["mtn"].shape[0]
        return {**track, "emo": self._emotions(emo_known, n), "fps": fps, "resampled": resampled}

    def _track_per_frame(
        self, frames: Any, where: str, emo_known: dict[int, np.ndarray]
    ) -> dict[str, Any]:
        """Each frame cropped on its own face (roll-aligned): avatar registration's crop."""
        from talkinghead.methods.ditto.motion.extraction import extract_source_batches
        from talkinghead.methods.ditto.motion.format import dict_to_motion

        held: dict[int, np.ndarray] = {}  # frames to label, until their face is known

        def holding(frames: Any) -> Any:
            for i, frame in enumerate(frames):
                if self._emotion_labelled(i):
                    held[i] = frame
                yield frame

        batches = extract_source_batches(
            holding(frames),
            self.face,
            self.motion_extractor,
            device=self.device,
            batch_size=self.spec.batch_size,
            where=where,
        )
        motion, eye_open, eye_ball, lmk = [], [], [], []
        emo_crops: list[tuple[int, np.ndarray]] = []
        num_faces = 1
        for batch in batches:
            if batch.start == 0:
                num_faces = int(batch.faces[0].num_faces)
            motion.append(dict_to_motion(batch.motion, include_kp=True))
            eye_open.append(batch.eye_open)
            eye_ball.append(batch.eye_ball)
            for i, face in enumerate(batch.faces, batch.start):
                if self.mesh is not None and face.mesh is not None:  # the analyser's, on this crop
                    lmk.append(face.mesh)
                elif self.mesh is not None:
                    lmk.append(self._crop_landmarks(face.crop, where, i))
                if i in held:
                    emo_crops.append((i, self._emotion_crop(held.pop(i), face.landmarks)))
            if len(emo_crops) >= self.spec.batch_size:
                self._classify(emo_crops, emo_known)
        self._classify(emo_crops, emo_known)
        if not motion:
            raise MediaError(f"{where}: the video has no decodable frames")
        track = {
            "mtn": np.concatenate(motion).astype(np.float32),
            "eye_open": np.concatenate(eye_open),
            "eye_ball": np.concatenate(eye_ball),
            "num_faces": num_faces,
            "crop": {"mode": "frame"},
        }
        if self.mesh is not None:
            track["lmk"] = np.stack(lmk)
        return track

    def _track_clip(
        self, video: Path, flip: bool, frames: Any, where: str, emo_known: dict[int, np.ndarray]
    ) -> dict[str, Any]:
        """The release's crop: the face tracked through the clip, then every frame cropped
        with the clip's one box (two decoding passes, so memory stays per frame)."""
        from talkinghead.methods.ditto.motion.extraction import (
            CLIP_CROP,
            clip_box_transform,
            clip_crop_box,
            crop_clip_box,
            extract_motion_batches,
            track_faces,
        )
        from talkinghead.methods.ditto.motion.format import dict_to_motion

        landmarks, eye_open, eye_ball = [], [], []
        emo_crops: list[tuple[int, np.ndarray]] = []
        num_faces = 1
        for i, (frame, face) in enumerate(track_faces(frames, self.face, where=where)):
            if i == 0:
                num_faces = int(face.num_faces)
            landmarks.append(np.asarray(face.landmarks, np.float32)[:, :2])
            eye_open.append(np.asarray(face.eye_open, np.float32).reshape(2))
            eye_ball.append(np.asarray(face.eye_ball, np.float32).reshape(6))
            if self._emotion_labelled(i):
                emo_crops.append((i, self._emotion_crop(frame, face.landmarks)))
                if len(emo_crops) >= self.spec.batch_size:
                    self._classify(emo_crops, emo_known)
        self._classify(emo_crops, emo_known)
        if not landmarks:
            raise MediaError(f"{where}: the video has no decodable frames")
        box = clip_crop_box(landmarks, CLIP_CROP)
        _, m_c2o = clip_box_transform(box, CLIP_CROP.dsize)
        lmk: list[np.ndarray] = []

        def crops() -> Any:
            _, _, frames = self._open_frames(video, flip, warn=False)
            for i, frame in enumerate(frames):
                crop = crop_clip_box(frame, box, CLIP_CROP.dsize)
                if self.mesh is not None:  # the release runs the mesh on its cropped video
                    lmk.append(self._crop_landmarks(crop, where, i))
                yield crop

        batches = extract_motion_batches(
            crops(), self.motion_extractor, device=self.device, batch_size=self.spec.batch_size
        )
        mtn = np.concatenate([dict_to_motion(m, include_kp=True) for m in batches])
        if mtn.shape[0] != len(landmarks):
            raise MediaError(
                f"{where}: {mtn.shape[0]} frames decoded on the second pass, "
                f"{len(landmarks)} on the first; re-encode the video"
            )
        track = {
            "mtn": mtn.astype(np.float32),
            "eye_open": np.stack(eye_open),
            "eye_ball": np.stack(eye_ball),
            "num_faces": num_faces,
            "crop": {"mode": "clip", "box": list(box), "M_c2o": m_c2o.tolist()},
        }
        if self.mesh is not None:
            track["lmk"] = np.stack(lmk)
        return track

    # -- one video ------------------------------------------------------------------------

    def process(self, video: Path) -> list[dict[str, Any]]:
        """Arrays of one video (and of its mirror image with `flip`), as per-variant dicts."""
        from talkinghead.audio.io import load_audio

        audio = load_audio(video, SAMPLE_RATE)  # fails early for a file without audio
        aud = self.hubert.features(audio).astype(np.float32)
        results = []
        for flip in (False, True) if self.spec.flip else (False,):
            track = self._track(video, flip)
            mtn = track["mtn"]
            n = min(mtn.shape[0], aud.shape[0])
            if n == 0:
                raise MediaError(f"{video}: no frames with audio")
            results.append(
                {
                    "flip": flip,
                    "arrays": {
                        "aud": aud[:n],
                        "mtn": mtn[:n],
                        "eye_open": track["eye_open"][:n],
                        "eye_ball": track["eye_ball"][:n],
                        "emo": track["emo"][:n],
                        "sc": mtn[0, -63:],
                        **({"lmk": track["lmk"][:n]} if "lmk" in track else {}),
                    },
                    "frame_num": n,
                    "fps": track["fps"],
                    "resampled_from": track["fps"] if track["resampled"] else None,
                    "audio_seconds": round(audio.shape[0] / SAMPLE_RATE, 3),
                    "num_faces": track["num_faces"],
                    "crop": track["crop"],
                }
            )
        return results


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


class DittoLayout:
    """OUT_DIR in the release's layout: manifest.json, data_list.json, data_info.json."""

    def __init__(self, out_dir: Path, kinds: tuple[str, ...] = array_kinds(False)) -> None:
        self.out_dir = out_dir
        self.kinds = kinds  # arrays every finished video must have (landmarks: + lmk)
        self.manifest_path = out_dir / MANIFEST_NAME
        old = _load_manifest(self.manifest_path)
        self.entries: dict[str, Any] = dict(old.get("videos", {}))
        self.manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "fps": FPS,
            "sample_rate": SAMPLE_RATE,
            "dims": old.get("dims", {}),
            "settings": dict(old.get("settings", {})),
            "videos": self.entries,
        }

    def _complete(self, name: str) -> bool:
        entry = self.entries.get(name)
        files = entry.get("files", {}) if entry else {}
        return bool(
            entry
            and entry.get("status") == "ok"
            and all(k in files for k in self.kinds)  # e.g. landmarks asked for later
            and all((self.out_dir / p).is_file() for p in files.values())
        )

    def finished(self, job: PrepareJob) -> list[VideoResult] | None:
        if not all(self._complete(name) for name in job.outputs):
            return None
        return [
            VideoResult(name, int(self.entries[name]["frame_num"]), self.entries[name])
            for name in job.outputs
        ]

    def record(
        self, job: PrepareJob, results: list[VideoResult] | None, error: str | None
    ) -> str | None:
        if results is None:
            self.entries[job.key] = {"status": "failed", "source": str(job.video), "error": error}
            return None
        dims = self.manifest["dims"]
        for r in results:
            got = {k: list(v) for k, v in r.entry["dims"].items()}
            # A kind new to the dataset (landmarks asked for later) joins its dims.
            if all(dims.get(k, v) == v for k, v in got.items()):
                dims.update(got)
            else:
                refused = f"array dims {got} differ from the dataset's {dims}"
                for bad in results:
                    self.entries[bad.name] = {
                        "status": "failed",
                        "source": str(job.video),
                        "error": refused,
                    }
                return refused
        self.entries.update((r.name, r.entry) for r in results)
        return None

    def write(self) -> None:
        """manifest.json, then data_list.json and data_info.json from the finished videos."""
        write_json(self.manifest_path, self.manifest)
        ok = {n: e for n, e in self.entries.items() if e.get("status") == "ok"}
        data_list = [{"frame_num": e["frame_num"], **e["files"], "name": n} for n, e in ok.items()]
        write_json(self.out_dir / DATA_LIST_NAME, data_list)
        info: dict[str, list[str]] = {"fps25_video_list": [e["source"] for e in ok.values()]}
        for kind, (_, list_name) in ARRAY_KINDS.items():
            if not all(kind in e["files"] for e in ok.values()):
                continue  # the release's lists run in parallel: all videos or none
            info[list_name] = [
                str((self.out_dir / e["files"][kind]).resolve()) for e in ok.values()
            ]
        write_json(self.out_dir / DATA_INFO_NAME, info)


# --- entry point ----------------------------------------------------------------------------------


def _resolve_sources(
    checkpoints: Path | None, hubert: str | None, networks: PrepareNetworks | None
) -> tuple[str | None, dict[str, Any], str | None, str | None]:
    """(motion extractor path, its config, HuBERT spec, aux_dir) with user-facing errors."""
    from talkinghead.methods.ditto.checkpoints import ReleaseCheckpoints, read_sidecar

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


def _emotion_setting(emotion_classifier: Any) -> str:
    if emotion_classifier is None:
        return "default:Neutral"
    if isinstance(emotion_classifier, str):
        found = resolve_emotion_classifier(emotion_classifier, instantiate=False)  # fail early
        if emotion_classifier.startswith(HSEMOTION_SPEC_PREFIX):
            return f"{HSEMOTION_SPEC_PREFIX}{Path(found).resolve()}"
        return emotion_classifier
    return str(getattr(emotion_classifier, "name", type(emotion_classifier).__name__))


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
    flip: bool = True,
    max_side: int | None = 1920,
    crop_mode: str = "clip",
    landmarks: bool = False,
) -> PrepareReport:
    """Process every video under `videos_dir` into `out_dir` (layout: module docstring).

    checkpoints:  the release's root (``ditto_pytorch/models/motion_extractor.pth``,
                  optional ``talkinghead.json`` sidecar, ``aux_models/`` for the HuBERT
                  ONNX model and the release face backend)
    hubert:       a HuBERT ONNX file, or a `transformers` HuBERT directory / hub id
                  (default: ``aux_models/hubert_streaming_fix_kv.onnx``)
    face_backend: "auto" (release models when present, else mediapipe), "release", "mediapipe"
    emotion_classifier: an `EmotionClassifier`, ``"hsemotion:PATH"`` (HSEmotion's
                  enet_b2_8 ONNX file, or a model name in hsemotion-onnx's ~/.hsemotion
                  cache), or ``"module:name"`` of one (a class is instantiated in each
                  worker); None gives every frame the Neutral default
    emotion_stride: label every n-th 25 fps frame (5: the release's 5 fps); the others
                  take the nearest labelled frame's probabilities
    crop_mode:    "clip" (default, the release's): one axis-aligned box for the whole clip,
                  the mean of the per-frame boxes (scale 2.2, vy -0.1, whole pixels), so
                  head translation, scale and roll stay in the motion targets; "frame": a
                  roll-aligned crop per frame (avatar registration's), which removes them
    landmarks:    also write MediaPipe's 478 landmarks per frame on that crop
                  (``MP_lmk_npy/``, data_list key ``lmk``), what training's `use_lmk`
                  reads; a finished video without them is prepared again
    networks:     `PrepareNetworks` (or a dict with its fields) to use instead of files
    progress:     called with (videos done, total) at the start and after each video
    flip:         also store each video mirrored left-right (``NAME_flip``), the release's
                  augmentation, on by default as there (``flip=False`` / ``--no-flip``: off)
    """
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    if workers < 1 or batch_size < 1 or emotion_stride < 1:
        raise ValueError("workers, batch_size and emotion_stride must be >= 1")
    if crop_mode not in CROP_MODES:
        raise TalkingHeadError(
            f"crop mode {crop_mode!r} is not known; use one of {', '.join(CROP_MODES)}"
        )
    if isinstance(networks, Mapping):
        networks = PrepareNetworks(**networks)
    if workers > 1 and networks is not None and networks.face_analyzer is not None:
        raise ValueError("an injected face_analyzer only works with workers=1")
    videos = video_names(find_videos(videos_dir, exclude=out_dir), videos_dir)

    injected = None if networks is None else networks.face_analyzer
    if landmarks and injected is not None and _mesh_landmarker(injected) is None:
        raise TalkingHeadError(
            "landmarks: the given face analyser has no 478-point face mesh "
            "(`landmark478` or `mesh`); use the mediapipe or release backend"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = DittoLayout(out_dir, array_kinds(landmarks))
    jobs = [
        PrepareJob(video, name, (name, f"{name}_flip") if flip else (name,))
        for name, video in videos.items()
    ]
    run = PrepareRun(out_dir, jobs, layout)
    settings: dict[str, Any] = {
        "face_backend": face_backend,
        "emotion": _emotion_setting(emotion_classifier),
        "emotion_stride": emotion_stride,
        "flip": flip,
        "max_side": max_side,
        "crop_mode": crop_mode,
        "landmarks": landmarks,
    }
    make_worker = None
    if run.todo:
        motion_path, motion_cfg, hubert_spec, aux_dir = _resolve_sources(
            checkpoints, hubert, networks
        )
        settings["motion_extractor"] = motion_path or "injected"
        settings["hubert"] = hubert_spec or "injected"
        old = layout.manifest["settings"]
        changed = {k: (old[k], v) for k, v in settings.items() if k in old and old[k] != v}
        if changed:
            log.warning(
                "%s: settings differ from the earlier run's: %s", layout.manifest_path, changed
            )
        spec = _WorkerSpec(
            out_dir=str(out_dir),
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
            crop_mode=crop_mode,
            landmarks=landmarks,
        )
        make_worker = functools.partial(DittoVideoWorker, spec)
    layout.manifest["settings"].update(settings)
    return run.run(make_worker, workers=workers, progress=progress)


__all__ = [
    "ARRAY_KINDS",
    "CROP_MODES",
    "FORMAT",
    "OPTIONAL_KINDS",
    "DittoLayout",
    "DittoVideoWorker",
    "EmotionClassifier",
    "PrepareNetworks",
    "PrepareReport",
    "array_kinds",
    "face_box_crop",
    "interpolate_rows",
    "nearest_rows",
    "prepare_dataset",
    "resolve_emotion_classifier",
    "video_names",
]
