"""Face detection, landmarks, the 512 crop and paste-back, eye attributes.

Two backends produce the same `FaceCrop`: the release's auxiliary models
(``release_backend``) and an offline default built on the models inside the
mediapipe wheel (``mediapipe_backend``). Both are imported on first use.
"""

from __future__ import annotations

import threading
from pathlib import Path

from talkinghead.face.crop import (
    DEFAULT_CROP,
    Crop,
    crop_from_landmarks,
    crop_transform,
    warp_image,
    warp_points,
)
from talkinghead.face.eyes import eye_attributes, eye_attributes_from_landmarks
from talkinghead.face.paste import PasteBack, feather_mask, paste_back
from talkinghead.face.types import CropConfig, FaceAnalyzer, FaceBox, FaceCrop

BACKENDS = ("auto", "release", "mediapipe")


def create_face_analyzer(
    backend: str = "auto",
    aux_dir: str | Path | None = None,
    crop: CropConfig = DEFAULT_CROP,
) -> FaceAnalyzer:
    """A face analyser; its ``name`` says which backend it is.

    ``"auto"``: the release's models when all of them (`RELEASE_AUX_FILES`) are in
    ``aux_dir``, else mediapipe. ``"release"`` requires them (`CheckpointError`
    names the first missing file).
    """
    from talkinghead.face import release_backend

    if backend not in BACKENDS:
        raise ValueError(f"unknown face backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "release" or (backend == "auto" and release_backend.has_release_files(aux_dir)):
        if aux_dir is None:
            raise ValueError("the release face backend needs aux_dir")
        return release_backend.ReleaseFaceAnalyzer.from_dir(aux_dir, crop)
    from talkinghead.face.mediapipe_backend import MediapipeFaceAnalyzer

    return MediapipeFaceAnalyzer(crop)


_THREAD_ANALYZERS = threading.local()


def thread_face_analyzer(backend: str = "auto", aux_dir: str | Path | None = None) -> FaceAnalyzer:
    """`create_face_analyzer`'s analyser (default crop), built once per thread and reused by
    that thread's later calls with the same settings: MediaPipe's graphs take a while to
    build and must not be shared between threads."""
    cache = getattr(_THREAD_ANALYZERS, "cache", None)
    if cache is None:
        cache = _THREAD_ANALYZERS.cache = {}
    # Only the release backend (and "auto", choosing it) reads files from aux_dir.
    key = (backend, None if aux_dir is None or backend == "mediapipe" else str(aux_dir))
    if key not in cache:
        cache[key] = create_face_analyzer(backend, aux_dir=aux_dir)
    return cache[key]


__all__ = [
    "BACKENDS",
    "Crop",
    "CropConfig",
    "FaceAnalyzer",
    "FaceBox",
    "FaceCrop",
    "PasteBack",
    "create_face_analyzer",
    "crop_from_landmarks",
    "crop_transform",
    "eye_attributes",
    "eye_attributes_from_landmarks",
    "feather_mask",
    "paste_back",
    "thread_face_analyzer",
    "warp_image",
    "warp_points",
]
