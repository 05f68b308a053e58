"""Avatar registration: a source image or video -> everything generation needs from it.

Per source frame the face analyser gives the 512 crop (and where it sits in the
frame), the eye attributes and landmarks to track the next frame; the crop,
shrunk to 256 with area interpolation and scaled to [0, 1], goes through the
motion extractor (pose logits, translation, expression, scale, canonical
keypoints) and the appearance extractor (the 3D feature volume f_s). That per-frame
part is `talkinghead.methods.ditto.motion.extraction`, which Ditto's data preparation runs too.

Following the release:

* the shape code ``sc`` is frame 0's canonical keypoints, taken *before* smoothing;
* a video source's motion is smoothed over time by a centred moving average of
  13 frames whose window shrinks at the ends (no padding); every key is
  smoothed, the pose logits and ``kp`` included (the release ignores none);
* output frame ``i`` uses source frame ``mirror_index(i, F)``: 0..F-1, then
  F-1..0, then 0..F-1 again, each end frame shown twice in a row.

`AvatarCache` keeps registered avatars on disk, keyed by the source file's
content, the networks' identities, the face backend and the crop settings, up to
a size limit (least recently used entries go first).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import struct
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from talkinghead.errors import MediaError, TalkingHeadError
from talkinghead.face.types import CropConfig, FaceAnalyzer
from talkinghead.filemode import temporary_sibling
from talkinghead.media.source import mirror_index
from talkinghead.methods.ditto.motion.extraction import extract_source_batches
from talkinghead.methods.ditto.motion.format import MOTION_KEYS

log = logging.getLogger(__name__)

SOURCE_SMOOTH_K = 13  # the release's smo_k_s
# Bump when registration results or the cache layout change: old entries then miss.
CACHE_FORMAT_VERSION = 2  # 2: + frame 0's face mesh (the use_lmk condition)

ProgressCallback = Callable[[int, int], None]


def mean_filter(values: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average along axis 0 over 2 * (k // 2) + 1 frames.

    At the ends the window is cut to the frames that exist (and the mean taken
    over those), as in the release, rather than padded.
    """
    n = values.shape[0]
    half = k // 2
    csum = np.concatenate(
        [np.zeros_like(values[:1], dtype=np.float64), np.cumsum(values, 0, dtype=np.float64)]
    )
    idx = np.arange(n)
    lo = np.maximum(idx - half, 0)
    hi = np.minimum(idx + half + 1, n)
    count = (hi - lo).reshape((n,) + (1,) * (values.ndim - 1))
    return ((csum[hi] - csum[lo]) / count).astype(values.dtype)


def smooth_motion(
    x_s_info: Mapping[str, np.ndarray], k: int = SOURCE_SMOOTH_K
) -> dict[str, np.ndarray]:
    """Temporal smoothing of stacked [F, size] motion (no-op for one frame or k <= 1)."""
    out = {name: np.array(v, copy=True) for name, v in x_s_info.items()}
    if k <= 1:
        return out
    for name, v in out.items():
        if v.shape[0] > 1:
            out[name] = mean_filter(v, k)
    return out


@dataclass(eq=False)  # arrays have no single truth value; compare fields explicitly
class Avatar:
    """A registered source: F frames (F = 1 for an image) and what generation needs of each.

    frames:       [F, H, W, 3] uint8 RGB, the (resized) source frames, for paste-back
    x_s_info:     motion per source frame, stacked: pitch/yaw/roll [F, 66] (bin logits),
                  t [F, 3], exp [F, 63], scale [F, 1], kp [F, 63], float32; smoothed over
                  time for videos. `x_s_info_at(j)` gives the release's per-frame [1, size] dict.
    f_s:          [F, 32, 16, 64, 64] float32 appearance feature volumes
    M_c2o:        [F, 3, 3] float32, crop (512) pixels -> frame pixels
    eye_open:     [F, 2] float32;  eye_ball: [F, 6] float32
    sc:           [63] float32 shape code: frame 0's canonical keypoints (before smoothing)
    is_image:     an image source (motion then comes entirely from the driving signal)
    fps:          the source video's frame rate (None for images)
    face_backend: name of the face analyser that registered it
    num_faces:    faces the analyser saw in frame 0 (the largest is used)
    source_path:  the source file, when registration started from one
    mesh:         [478, 3] float32, frame 0's MediaPipe face mesh on its 512 crop, normalised
                  (a motion model trained with use_lmk is conditioned on it); None when the
                  face analyser gave none
    """

    frames: np.ndarray
    x_s_info: dict[str, np.ndarray]
    f_s: np.ndarray
    M_c2o: np.ndarray
    eye_open: np.ndarray
    eye_ball: np.ndarray
    sc: np.ndarray
    is_image: bool
    fps: float | None
    face_backend: str
    num_faces: int
    source_path: str | None = None
    mesh: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_size(self) -> tuple[int, int]:
        """(height, width) of the source frames."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def frame_index(self, output_index: int) -> int:
        """Source frame used for output frame `output_index` (mirror looping)."""
        return mirror_index(output_index, self.num_frames)

    def frame_indices(self, num_output_frames: int) -> np.ndarray:
        """Source frame of each of the first `num_output_frames` output frames, [N] int64."""
        n = self.num_frames
        i = np.arange(num_output_frames, dtype=np.int64)
        turn, pos = np.divmod(i, n)
        return np.where(turn % 2 == 0, pos, n - 1 - pos)

    def x_s_info_at(self, source_index: int) -> dict[str, np.ndarray]:
        """Motion of source frame `source_index` as {key: [1, size]} (the renderer's form)."""
        return {k: v[source_index : source_index + 1] for k, v in self.x_s_info.items()}

    def validate(self) -> None:
        """Raise ValueError when the fields do not describe the same F frames."""
        n = self.num_frames
        if (
            n < 1
            or self.frames.ndim != 4
            or self.frames.shape[3] != 3
            or self.frames.dtype != np.uint8
        ):
            raise ValueError(
                f"frames must be [F>=1, H, W, 3] uint8, got {self.frames.shape} {self.frames.dtype}"
            )
        if set(self.x_s_info) != set(MOTION_KEYS):
            raise ValueError(f"x_s_info keys {sorted(self.x_s_info)} != {sorted(MOTION_KEYS)}")
        per_frame = {
            **{f"x_s_info[{k}]": (v, 2) for k, v in self.x_s_info.items()},
            "f_s": (self.f_s, 5),
            "M_c2o": (self.M_c2o, 3),
            "eye_open": (self.eye_open, 2),
            "eye_ball": (self.eye_ball, 2),
        }
        for name, (arr, ndim) in per_frame.items():
            if arr.ndim != ndim or arr.shape[0] != n:
                raise ValueError(
                    f"{name} has shape {arr.shape}; expected {ndim} dims and {n} frames"
                )
        if self.M_c2o.shape[1:] != (3, 3) or self.sc.shape != self.x_s_info["kp"].shape[1:]:
            raise ValueError(f"bad M_c2o {self.M_c2o.shape} or sc {self.sc.shape}")
        if self.is_image and n != 1:
            raise ValueError(f"an image avatar has one frame, got {n}")
        if self.mesh is not None and (self.mesh.ndim != 2 or self.mesh.shape[0] != 478):
            raise ValueError(f"mesh must be [478, C], got {self.mesh.shape}")


# --- registration -------------------------------------------------------------------------


def _unpack_source(
    media: Any, is_image: bool | None, fps: float | None
) -> tuple[Sequence[np.ndarray], bool, float | None, str | None]:
    """SourceMedia-like object, [F, H, W, 3] array, [H, W, 3] image or list of frames."""
    path = None
    if hasattr(media, "frames"):
        frames = media.frames
        is_image = media.is_image if is_image is None else is_image
        fps = getattr(media, "fps", None) if fps is None else fps
        path = getattr(media, "path", None)
        path = None if path is None else str(path)
    elif isinstance(media, np.ndarray) and media.ndim == 3:
        frames = [media]
    else:
        frames = media
    where = path or "source"
    if len(frames) == 0:
        raise MediaError(f"{where}: no frames to register")
    if is_image is None:
        is_image = len(frames) == 1 and fps is None
    if is_image and len(frames) != 1:
        raise ValueError(f"{where}: an image source has one frame, got {len(frames)}")
    shape = frames[0].shape
    for i, f in enumerate(frames):
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or f.shape != shape:
            raise ValueError(
                f"{where}: frame {i} must be HxWx3 uint8 like frame 0 {shape}, got {f.shape} {f.dtype}"
            )
    return frames, bool(is_image), (None if is_image else fps), path


def _torch_state_digest(*modules: nn.Module) -> str:
    """Digest of the parameters and buffers of `modules` (fallback model identity)."""
    h = hashlib.blake2b(digest_size=16)
    for m in modules:
        h.update(type(m).__qualname__.encode())
        for name, t in m.state_dict().items():
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class AvatarRegistrar:
    """Registers a source with a face analyser and the renderer's two extractor networks.

    model_identity: a string naming the networks' weights, for the cache key; by default
    it is a digest of their state_dicts (computed once). `from_checkpoints` uses a cheap
    digest of the checkpoint files instead.
    """

    def __init__(
        self,
        face_analyzer: FaceAnalyzer,
        motion_extractor: nn.Module,
        appearance_extractor: nn.Module,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        smooth_k: int = SOURCE_SMOOTH_K,
        model_identity: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.face_analyzer = face_analyzer
        self.device = torch.device(device)
        self.motion_extractor = motion_extractor.to(self.device).eval()
        self.appearance_extractor = appearance_extractor.to(self.device).eval()
        self.batch_size = batch_size
        self.smooth_k = smooth_k
        self._model_identity = model_identity

    @classmethod
    def from_checkpoints(
        cls,
        face_analyzer: FaceAnalyzer,
        motion_extractor_path: str | os.PathLike,
        appearance_extractor_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        *,
        motion_config: Mapping[str, Any] | None = None,
        appearance_config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> AvatarRegistrar:
        """Load the release's two extractor checkpoints; their file digests name the models.

        `motion_config` / `appearance_config` override the networks' constructor defaults
        (tiny test variants); other keyword arguments go to the constructor.
        """
        from talkinghead.models import load_official

        motion = load_official(
            "motion_extractor", motion_extractor_path, device=device, **(motion_config or {})
        )
        appearance = load_official(
            "appearance_extractor",
            appearance_extractor_path,
            device=device,
            **(appearance_config or {}),
        )
        kwargs.setdefault(
            "model_identity",
            cls.checkpoints_identity(motion_extractor_path, appearance_extractor_path),
        )
        return cls(face_analyzer, motion, appearance, device=device, **kwargs)

    @staticmethod
    def checkpoints_identity(
        motion_extractor_path: str | os.PathLike, appearance_extractor_path: str | os.PathLike
    ) -> str:
        """`model_identity` for extractors loaded from these two checkpoint files (cheap)."""
        return ";".join(
            f"{kind}={checkpoint_identity(p)}"
            for kind, p in (
                ("motion_extractor", motion_extractor_path),
                ("appearance_extractor", appearance_extractor_path),
            )
        )

    @property
    def model_identity(self) -> str:
        if self._model_identity is None:
            self._model_identity = "state:" + _torch_state_digest(
                self.motion_extractor, self.appearance_extractor
            )
        return self._model_identity

    def identity(self) -> dict[str, Any]:
        """Everything besides the source that decides the registration result (the cache key)."""
        fa = self.face_analyzer
        # Only plain values: a repr holding an object address would change the key every run.
        crops = (getattr(fa, "crop_config", None), getattr(fa, "crop", None))
        crop = next((c for c in crops if isinstance(c, CropConfig)), None)
        face_identity = getattr(fa, "identity", None)
        return {
            "models": self.model_identity,
            "face_backend": str(getattr(fa, "name", type(fa).__name__)),
            # A backend may name its own auxiliary models' weights with an `identity` string.
            "face_identity": face_identity if isinstance(face_identity, str) else None,
            "crop": asdict(crop) if crop is not None else None,
            "smooth_k": self.smooth_k,
        }

    def register(
        self,
        media_or_frames: Any,
        is_image: bool | None = None,
        fps: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Avatar:
        """Register a source: a `SourceMedia`, one RGB image, or a sequence/array of RGB frames.

        Without `is_image`, a single frame with no `fps` counts as an image. `progress`
        is called with (frames done, total) after each network batch.
        """
        frames, is_image, fps, path = _unpack_source(media_or_frames, is_image, fps)
        n = len(frames)
        M_c2o = np.empty((n, 3, 3), np.float32)
        eye_open = np.empty((n, 2), np.float32)
        eye_ball = np.empty((n, 6), np.float32)
        motion: dict[str, np.ndarray] = {}
        f_s: np.ndarray | None = None
        num_faces = 0
        mesh = None
        if progress is not None:
            progress(0, n)
        batches = extract_source_batches(
            frames,
            self.face_analyzer,
            self.motion_extractor,
            self.appearance_extractor,
            device=self.device,
            batch_size=self.batch_size,
            where=path or "source",
            is_image=is_image,
        )
        for batch in batches:
            start, stop = batch.start, batch.stop
            assert batch.f_s is not None
            if start == 0:
                num_faces = int(batch.faces[0].num_faces)
                mesh = batch.faces[0].mesh
                # sizes come from the networks (tiny test variants differ)
                f_s = np.empty((n, *batch.f_s.shape[1:]), np.float32)
                motion = {k: np.empty((n, o.shape[1]), np.float32) for k, o in batch.motion.items()}
            assert f_s is not None
            M_c2o[start:stop] = batch.M_c2o
            eye_open[start:stop] = batch.eye_open
            eye_ball[start:stop] = batch.eye_ball
            f_s[start:stop] = batch.f_s
            for k, o in batch.motion.items():
                motion[k][start:stop] = o
            if progress is not None:
                progress(stop, n)
        assert f_s is not None
        sc = motion["kp"][0].copy()  # before smoothing, as the release does
        if not is_image and n > 1:
            motion = smooth_motion(motion, self.smooth_k)
        avatar = Avatar(
            frames=np.stack(frames)
            if not isinstance(frames, np.ndarray)
            else np.ascontiguousarray(frames),
            x_s_info=motion,
            f_s=f_s,
            M_c2o=M_c2o,
            eye_open=eye_open,
            eye_ball=eye_ball,
            sc=sc,
            is_image=is_image,
            fps=None if fps is None else float(fps),
            face_backend=str(
                getattr(self.face_analyzer, "name", type(self.face_analyzer).__name__)
            ),
            num_faces=num_faces,
            source_path=path,
            mesh=None if mesh is None else np.asarray(mesh, np.float32),
        )
        avatar.validate()
        return avatar


# --- on-disk cache ------------------------------------------------------------------------

_HASH_CHUNK = 1 << 20
_CHECKPOINT_SPAN = 1 << 20
CACHE_DIR_ENV = "TALKINGHEAD_CACHE"
CACHE_MAX_MB_ENV = "TALKINGHEAD_CACHE_MAX_MB"  # MiB; 0 means no limit
DEFAULT_CACHE_MAX_BYTES = 2 << 30
# A temp file untouched this long belongs to a writer that died; younger ones may still
# be written by another process (its mtime moves on with every write).
STALE_TEMP_SECONDS = 30 * 60
_ENTRY_SUFFIX = ".avatar"
_TEMP_SUFFIX = ".tmp"


def default_cache_dir() -> Path:
    """`$TALKINGHEAD_CACHE/avatars`, else `$XDG_CACHE_HOME/talkinghead/avatars`, else
    `~/.cache/talkinghead/avatars`."""
    root = os.environ.get(CACHE_DIR_ENV)
    if root:
        return Path(root).expanduser() / "avatars"
    # The XDG base directory spec: only an absolute XDG_CACHE_HOME counts.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache_home = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return cache_home / "talkinghead" / "avatars"


def default_cache_max_bytes() -> int:
    """`$TALKINGHEAD_CACHE_MAX_MB` (MiB, 0: no limit) in bytes, else 2 GiB."""
    text = os.environ.get(CACHE_MAX_MB_ENV, "").strip()
    if not text:
        return DEFAULT_CACHE_MAX_BYTES
    try:
        mib = float(text)
    except ValueError:
        mib = math.nan
    if not math.isfinite(mib) or mib < 0:
        raise TalkingHeadError(
            f"{CACHE_MAX_MB_ENV}={text!r} is not a size in MiB; set e.g. 2048, or 0 for no limit"
        )
    return int(mib * (1 << 20))


def file_digest(path: str | os.PathLike) -> str:
    """Content hash of a whole file (blake2b-128)."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise MediaError(f"{path}: cannot read source ({exc.strerror or exc})") from exc
    return h.hexdigest()


def frames_digest(frames: Sequence[np.ndarray], is_image: bool, fps: float | None) -> str:
    """Content hash of in-memory source frames (pixels, sizes, and image or video)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"frames:{len(frames)}:{is_image}:{fps}".encode())
    for frame in frames:
        frame = np.ascontiguousarray(frame)
        h.update(f"{frame.dtype}:{frame.shape}".encode())
        h.update(memoryview(frame).cast("B"))
    return h.hexdigest()


def checkpoint_identity(path: str | os.PathLike) -> str:
    """Cheap identity of a checkpoint file: size, mtime and a hash of its first and last MiB.

    The tail of a torch zip checkpoint is its central directory, which holds the CRC-32 of
    every stored tensor, so weights that differ anywhere change the digest.
    """
    st = os.stat(path)
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(_CHECKPOINT_SPAN))
        if st.st_size > _CHECKPOINT_SPAN:
            f.seek(max(_CHECKPOINT_SPAN, st.st_size - _CHECKPOINT_SPAN))
            h.update(f.read())
    return f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()}"


# Entry layout: MAGIC, u64 header length, JSON header, zero padding to _ALIGN, then the
# arrays' raw bytes, each starting on an _ALIGN boundary. The header lists every array
# (name, dtype, shape, offset) and the CRC-32 of the payload. One read and one checksum
# pass load an entry, and the arrays are views of that one buffer: about twice as fast as
# an .npz (whose zip layer reads in chunks and copies).
_MAGIC = b"THAVATAR"
_ALIGN = 64
_PREFIX = struct.Struct("<8sQ")


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _write_entry(f: IO[bytes], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    table, offset = [], 0
    for name, a in arrays.items():
        table.append([name, a.dtype.str, list(a.shape), offset])
        offset = _aligned(offset + a.nbytes)
    crc = 0
    blobs = []
    for (_, _, _, off), a in zip(table, arrays.values(), strict=True):
        blob = memoryview(np.ascontiguousarray(a)).cast("B")
        pad = bytes(_aligned(off + a.nbytes) - off - a.nbytes)
        crc = zlib.crc32(pad, zlib.crc32(blob, crc))
        blobs.append((blob, pad))
    header = json.dumps({"meta": meta, "arrays": table, "size": offset, "crc32": crc}).encode()
    head = _PREFIX.pack(_MAGIC, len(header)) + header
    f.write(head + bytes(_aligned(len(head)) - len(head)))
    for blob, pad in blobs:
        f.write(blob)
        f.write(pad)


def _read_entry(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of `_write_entry`; ValueError for anything but a whole, intact entry."""
    with open(path, "rb") as f:
        magic, header_len = _PREFIX.unpack(f.read(_PREFIX.size))
        if magic != _MAGIC or header_len > 1 << 20:
            raise ValueError("not an avatar cache entry")
        header = json.loads(f.read(header_len))
        f.seek(_aligned(_PREFIX.size + header_len))
        buf = bytearray(header["size"])
        if f.readinto(buf) != len(buf) or f.read(1):
            raise ValueError("entry has the wrong size")
    if zlib.crc32(buf) != header["crc32"]:
        raise ValueError("entry fails its checksum")
    arrays = {}
    for name, dtype, shape, offset in header["arrays"]:
        dt = np.dtype(dtype)
        count = math.prod(shape)
        arrays[name] = np.frombuffer(buf, dt, count, offset).reshape(shape)
    return header["meta"], arrays


def _avatar_arrays(avatar: Avatar) -> dict[str, np.ndarray]:
    arrays = {
        "frames": avatar.frames,
        "f_s": avatar.f_s,
        "M_c2o": avatar.M_c2o,
        "eye_open": avatar.eye_open,
        "eye_ball": avatar.eye_ball,
        "sc": avatar.sc,
    }
    if avatar.mesh is not None:
        arrays["mesh"] = avatar.mesh
    arrays.update({f"x_s_info.{k}": v for k, v in avatar.x_s_info.items()})
    return arrays


class CacheEntry(NamedTuple):
    """One avatar cache file: its path, size in bytes and last use (epoch seconds)."""

    path: Path
    size: int
    last_used: float


class AvatarCache:
    """Registered avatars on disk, one file per (source content, settings) key.

    Entries are written atomically (temp file + rename), so a reader sees a whole entry
    or none; an unreadable or inconsistent entry is deleted and registered again.

    The folder holds at most `max_bytes` (default `$TALKINGHEAD_CACHE_MAX_MB`, else
    2 GiB; 0: no limit): after each save the least recently used entries (a hit
    counts as a use; the entry's mtime records it) are evicted until the rest fits.
    An avatar larger than the whole limit is not cached. Several processes may share
    the folder: a temp file another writer may still be filling is never deleted.
    """

    def __init__(
        self, directory: str | os.PathLike | None = None, *, max_bytes: int | None = None
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.max_bytes = default_cache_max_bytes() if max_bytes is None else int(max_bytes)
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0: no limit), got {max_bytes}")
        self.last_hit: bool | None = None  # whether the last get_or_register was a hit

    def key(
        self,
        path: str | os.PathLike | None,
        registrar: AvatarRegistrar,
        *,
        max_side: int | None = 1920,
        max_frames: int | None = None,
        source_digest: str | None = None,
    ) -> str:
        """The entry key of a source file `path`, or of in-memory frames by `source_digest`."""
        spec = {
            "format": CACHE_FORMAT_VERSION,
            "source": source_digest if source_digest is not None else file_digest(path),
            "max_side": max_side,
            "max_frames": max_frames,
            **registrar.identity(),
        }
        blob = json.dumps(spec, sort_keys=True, default=str).encode()
        return hashlib.blake2b(blob, digest_size=16).hexdigest()

    def entry_path(self, key: str) -> Path:
        return self.directory / f"{key}{_ENTRY_SUFFIX}"

    def load(self, key: str) -> Avatar | None:
        """The cached avatar for `key`; None when absent or unusable (a corrupt entry is removed)."""
        entry = self.entry_path(key)
        try:
            meta, z = _read_entry(entry)
            if meta.get("format") != CACHE_FORMAT_VERSION or meta.get("key") != key:
                raise ValueError(f"entry is for {meta.get('key')} format {meta.get('format')}")
            avatar = Avatar(
                frames=z["frames"],
                x_s_info={k: z[f"x_s_info.{k}"] for k in MOTION_KEYS},
                f_s=z["f_s"],
                M_c2o=z["M_c2o"],
                eye_open=z["eye_open"],
                eye_ball=z["eye_ball"],
                sc=z["sc"],
                is_image=bool(meta["is_image"]),
                fps=meta["fps"],
                face_backend=meta["face_backend"],
                num_faces=int(meta["num_faces"]),
                source_path=meta.get("source_path"),
                mesh=z.get("mesh"),
            )
            avatar.validate()
            _mark_used(entry)
            return avatar
        except FileNotFoundError:
            return None
        except Exception as exc:  # whatever a damaged file raises (ValueError, KeyError...)
            log.warning(
                "ignoring corrupt avatar cache entry %s (%s); registering again", entry, exc
            )
            with contextlib.suppress(OSError):
                entry.unlink()
            return None

    def save(self, key: str, avatar: Avatar) -> Path | None:
        """Write `avatar` under `key` atomically, then evict down to the limit.

        Returns the entry's path, or None when the avatar alone exceeds the limit (it is
        then not written). Nothing is left behind if writing fails.
        """
        arrays = _avatar_arrays(avatar)
        size = sum(_aligned(a.nbytes) for a in arrays.values())
        if self.max_bytes and size > self.max_bytes:
            log.warning(
                "not caching the avatar of %s: it takes %.0f MiB, more than the cache limit "
                "of %.0f MiB (raise %s to keep it)",
                avatar.source_path,
                size / (1 << 20),
                self.max_bytes / (1 << 20),
                CACHE_MAX_MB_ENV,
            )
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": CACHE_FORMAT_VERSION,
            "key": key,
            "is_image": avatar.is_image,
            "fps": avatar.fps,
            "face_backend": avatar.face_backend,
            "num_faces": avatar.num_faces,
            "source_path": avatar.source_path,
        }
        entry = self.entry_path(key)
        tmp = temporary_sibling(entry, _TEMP_SUFFIX)  # a cache file like any other, not 0600
        try:
            with open(tmp, "wb") as f:
                _write_entry(f, meta, arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, entry)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _mark_used(entry)
        self.prune(keep=entry)
        return entry

    def get_or_register(
        self,
        path: str | os.PathLike,
        registrar: AvatarRegistrar,
        *,
        load: Callable[..., Any] | None = None,
        max_side: int | None = 1920,
        max_frames: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> Avatar:
        """The avatar of the source file `path`, from the cache or registered (and cached) now.

        `load(path, max_side=..., max_frames=...)` reads the source into a SourceMedia-like
        object (default: `talkinghead.media.source.load_source`); on a hit neither it nor
        the registrar runs. A cache that cannot be written only costs a warning.
        """
        key = self.key(path, registrar, max_side=max_side, max_frames=max_frames)
        avatar = self.load(key)
        self.last_hit = avatar is not None
        if avatar is not None:
            avatar.source_path = str(path)
            return avatar
        if load is None:
            from talkinghead.media.source import load_source as load
        media = load(path, max_side=max_side, max_frames=max_frames)
        avatar = registrar.register(media, progress=progress)
        avatar.source_path = str(path)
        try:
            self.save(key, avatar)
        except OSError as exc:
            log.warning("could not cache the avatar of %s in %s (%s)", path, self.directory, exc)
        return avatar

    def get_or_register_media(
        self,
        media: Any,
        registrar: AvatarRegistrar,
        *,
        max_side: int | None = 1920,
        max_frames: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> Avatar:
        """`get_or_register` for decoded in-memory frames (a SourceMedia-like object).

        The key is a digest of the pixels, so the same picture given as an array or a PIL
        image, in any call, finds the same entry. `max_side`/`max_frames` are the limits
        the frames were decoded with.
        """
        digest = frames_digest(media.frames, bool(media.is_image), media.fps)
        key = self.key(
            None, registrar, max_side=max_side, max_frames=max_frames, source_digest=digest
        )
        avatar = self.load(key)
        self.last_hit = avatar is not None
        if avatar is not None:
            avatar.source_path = None
            return avatar
        avatar = registrar.register(media, progress=progress)
        try:
            self.save(key, avatar)
        except OSError as exc:
            log.warning("could not cache an in-memory avatar in %s (%s)", self.directory, exc)
        return avatar

    def entries(self) -> list[CacheEntry]:
        """The entries on disk, least recently used first."""
        found = []
        for path in self._files(f"*{_ENTRY_SUFFIX}"):
            try:
                st = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            found.append((st.st_mtime_ns, path.name, CacheEntry(path, st.st_size, st.st_mtime)))
        return [entry for *_, entry in sorted(found)]

    def prune(self, *, keep: Path | None = None) -> int:
        """Evict least recently used entries until the rest fits `max_bytes`, and delete
        temp files abandoned by dead writers; returns how many files were removed.

        `keep` (the entry just written) is never evicted.
        """
        removed = self._remove_stale_temp_files()
        if not self.max_bytes:
            return removed
        entries = self.entries()
        total = sum(e.size for e in entries)
        for e in entries:
            if total <= self.max_bytes:
                break
            if e.path == keep:
                continue
            total -= e.size  # gone either way: by us, or already by another process
            # Best effort: the entry just saved is in place, whatever happens here.
            with contextlib.suppress(OSError):
                e.path.unlink()
                removed += 1
        return removed

    def clear(self) -> int:
        """Delete every entry and abandoned temp file; returns how many files were removed.

        Temp files other processes may still be writing are left alone.
        """
        removed = self._remove_stale_temp_files()
        for e in self.entries():
            with contextlib.suppress(FileNotFoundError):
                e.path.unlink()
                removed += 1
        return removed

    def _files(self, pattern: str) -> list[Path]:
        return list(self.directory.glob(pattern)) if self.directory.is_dir() else []

    def _remove_stale_temp_files(self) -> int:
        removed = 0
        cutoff = time.time() - STALE_TEMP_SECONDS
        for path in self._files(f".*{_TEMP_SUFFIX}"):
            with contextlib.suppress(OSError):  # renamed into place or removed meanwhile
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed


def _mark_used(entry: Path) -> None:
    """Record a use in the entry's mtime, the eviction order (atime is often not kept)."""
    # Explicit nanosecond times: the kernel's own timestamps tick only every few ms.
    now = time.time_ns()
    with contextlib.suppress(OSError):  # evicted meanwhile, or another user's file
        os.utime(entry, ns=(now, now))
