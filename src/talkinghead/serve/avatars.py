"""The avatar registry: uploaded portraits and short videos, registered once, used by id.

Uploads are stored under names the server chooses (a random id), never a name or
path from the client; what a file is gets decided by decoding it, not by its
extension or declared type. The same bytes uploaded again give the same avatar.

An upload is decoded once (with the pixel limit checked from its header), and
decoding and registration run one upload at a time, so concurrent uploads cannot
stack their memory. Only the `max_loaded` most recently used avatars are kept in
memory (a video avatar holds an 8 MiB feature volume per frame at full size); the
others are reloaded from the derived store (`derived_dir`, the server's own: the
registered avatar, written by `AvatarCache`) or, without one, registered again from
the stored upload. With `use_pipeline_cache` registration goes through the
pipeline's own avatar cache instead (the user's cache folder, kept across restarts).
Deleting an avatar deletes its upload and its derived data.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkinghead.errors import MediaError, NoFaceError, TalkingHeadError
from talkinghead.media.source import DEFAULT_MAX_PIXELS, PixelLimitError, SourceMedia
from talkinghead.media.video import NotAPictureError

log = logging.getLogger(__name__)

AVATAR_ID = re.compile(r"^[0-9a-f]{16}$")
SOURCE_SUFFIX = ".source"
THUMBNAIL_SIDE = 160


class UploadError(Exception):
    """An upload the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class AvatarRecord:
    id: str
    path: Path
    digest: str  # of the uploaded bytes: the same upload again finds this record
    kind: str  # "image" or "video"
    width: int
    height: int
    frames: int
    bytes: int
    thumbnail: bytes
    created: float = field(default_factory=time.time)
    avatar: Any = None  # the registered Avatar while loaded
    derived: Path | None = None  # the registered avatar on disk, if stored

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "bytes": self.bytes,
            "created": self.created,
            "thumbnail": f"/avatars/{self.id}/thumbnail",
        }


def _thumbnail(frame: np.ndarray) -> bytes:
    import cv2

    h, w = frame.shape[:2]
    scale = THUMBNAIL_SIDE / max(h, w)
    if scale < 1:
        frame = cv2.resize(
            frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
        )
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]))
    return jpeg.tobytes() if ok else b""


def _without_path(error: Exception, path: Path) -> str:
    """A media error's message without the server-side path it starts with."""
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


class AvatarRegistry:
    """Registered avatars by id. Methods block (decoding, face analysis): call them
    from worker threads, not the event loop."""

    def __init__(
        self,
        pipeline: Any,
        directory: Path,
        *,
        derived_dir: Path | None = None,
        use_pipeline_cache: bool = False,
        max_avatars: int = 32,
        max_frames: int = 50,
        max_loaded: int = 4,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.pipeline = pipeline
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.use_pipeline_cache = use_pipeline_cache
        self.max_avatars = max_avatars
        self.max_frames = max_frames
        self.max_loaded = max(max_loaded, 1)
        self.max_pixels = max_pixels
        self._records: OrderedDict[str, AvatarRecord] = OrderedDict()
        self._lock = threading.RLock()
        # Decoding and registration, one at a time: face analysers are not thread-safe,
        # and a decoded upload can take hundreds of MB (uploads must not stack).
        self._work_lock = threading.Lock()
        self._derived = None
        if derived_dir is not None and not use_pipeline_cache:
            from talkinghead.methods.ditto.avatar import AvatarCache

            self._derived = AvatarCache(derived_dir, max_bytes=0)  # 0: the store has no limit

    # ---- queries

    def __len__(self) -> int:
        return len(self._records)

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.public() for r in self._records.values()]

    def get(self, avatar_id: str) -> AvatarRecord | None:
        if not AVATAR_ID.match(avatar_id):
            return None
        with self._lock:
            return self._records.get(avatar_id)

    def avatar(self, avatar_id: str) -> Any:
        """The registered avatar (reloaded from the derived store, or registered again from
        the stored upload, if it was unloaded); KeyError if unknown."""
        record = self.get(avatar_id)
        if record is None:
            raise KeyError(avatar_id)
        with self._lock:
            if record.avatar is not None:
                self._records.move_to_end(avatar_id)
                return record.avatar
        with self._work_lock:
            avatar = record.avatar  # loaded by another session meanwhile?
            if avatar is None and record.derived is not None and self._derived is not None:
                avatar = self._derived.load(record.id)
            if avatar is None:
                media = self._decode(record.path)
                avatar = self._register(media)
                record.derived = self._store(record.id, avatar)
        with self._lock:
            if avatar_id not in self._records:
                self._delete_files(record)  # deleted while we reloaded it
                raise KeyError(avatar_id)
            record.avatar = avatar
            self._records.move_to_end(avatar_id)
            self._evict()
        return avatar

    # ---- changes

    def new_upload_file(self) -> Path:
        """A fresh server-named file in the store for an upload in progress."""
        fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=self.directory)
        os.close(fd)
        return Path(name)

    def add_file(self, path: Path, avatar_id: str | None = None) -> tuple[AvatarRecord, bool]:
        """Register the file at `path` (moved into the store); (record, created).

        `avatar_id`: keep this id (a stored upload registered again), else a random one.
        Raises `UploadError` 413 for a picture over the pixel limit, 415 for anything
        that does not decode as an image or video (or is damaged), 422 when no face is
        found, 507 when the registry is full.
        """
        digest = self._digest(path)
        with self._work_lock:
            existing = self._find_digest(digest)
            if existing is not None:
                path.unlink(missing_ok=True)
                return existing, False
            if len(self._records) >= self.max_avatars:
                raise UploadError(
                    507, f"the server holds {self.max_avatars} avatars; delete one first"
                )
            media = self._decode(path)
            avatar_id = avatar_id or secrets.token_hex(8)
            final = self.directory / f"{avatar_id}{SOURCE_SUFFIX}"
            os.replace(path, final)
            try:
                avatar = self._register(media)
                derived = self._store(avatar_id, avatar)
            except BaseException:
                final.unlink(missing_ok=True)
                raise
        h, w = media.size
        record = AvatarRecord(
            id=avatar_id,
            path=final,
            digest=digest,
            kind="image" if media.is_image else "video",
            width=w,
            height=h,
            frames=len(media.frames),
            bytes=final.stat().st_size,
            thumbnail=_thumbnail(media.frames[0]),
            avatar=avatar,
            derived=derived,
        )
        with self._lock:
            self._records[avatar_id] = record
            self._evict()
        return record, True

    def add_local(self, source: Path) -> AvatarRecord:
        """Register a file the operator named (copied into the store like an upload)."""
        tmp = self.new_upload_file()
        try:
            shutil.copyfile(source, tmp)
            record, _ = self.add_file(tmp)
        except UploadError as exc:
            raise MediaError(f"{source}: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return record

    def load_existing(self) -> int:
        """Register the sources already in the store (a restart with the same directory),
        keeping their ids."""
        count = 0
        for path in sorted(self.directory.glob(f"*{SOURCE_SUFFIX}")):
            avatar_id = path.name[: -len(SOURCE_SUFFIX)]
            if not AVATAR_ID.match(avatar_id):
                log.warning("skipping %s: not a name the server gave", path.name)
                continue
            tmp = self.new_upload_file()
            try:
                os.replace(path, tmp)
                self.add_file(tmp, avatar_id)
                count += 1
            except Exception as exc:  # one bad file must not stop the server
                log.warning("skipping stored avatar %s: %s", path.name, exc)
            finally:
                tmp.unlink(missing_ok=True)
        return count

    def delete(self, avatar_id: str) -> bool:
        """Forget the avatar and delete its upload and derived data (sessions already
        running keep their own reference to the registered avatar)."""
        record = self.get(avatar_id)
        if record is None:
            return False
        with self._lock:
            self._records.pop(avatar_id, None)
        self._delete_files(record)
        return True

    def cleanup_uploads(self) -> None:
        for part in self.directory.glob(".upload-*.part"):
            part.unlink(missing_ok=True)

    # ---- internals

    def _find_digest(self, digest: str) -> AvatarRecord | None:
        with self._lock:
            return next((r for r in self._records.values() if r.digest == digest), None)

    def _max_side(self) -> int | None:
        config = getattr(self.pipeline, "config", None)
        return getattr(config, "max_size", 1920)

    def _decode(self, path: Path) -> SourceMedia:
        from talkinghead.media.source import load_source

        try:
            return load_source(
                path,
                max_side=self._max_side(),
                max_frames=self.max_frames,
                max_pixels=self.max_pixels,
            )
        except PixelLimitError as exc:
            raise UploadError(413, _without_path(exc, path)) from None
        except NotAPictureError as exc:  # its message already says "not ... image or video"
            raise UploadError(415, _without_path(exc, path)) from None
        except MediaError as exc:
            raise UploadError(
                415, f"not an image or video the server can decode: {_without_path(exc, path)}"
            ) from None

    def _register(self, media: SourceMedia) -> Any:
        """The avatar of decoded frames (caller holds `_work_lock`)."""
        frames: Any = media.frames[0] if media.is_image else media.frames
        options: dict[str, Any] = {"max_frames": self.max_frames}
        config = getattr(self.pipeline, "config", None)
        if not self.use_pipeline_cache and hasattr(config, "replace"):
            options["config"] = config.replace(cache=False)  # derived data stay ours
        try:
            return self.pipeline.register(frames, **options)
        except NoFaceError:
            raise UploadError(422, "no face found in the upload") from None
        except TalkingHeadError as exc:
            raise UploadError(422, f"cannot register the upload: {exc}") from None

    def _store(self, avatar_id: str, avatar: Any) -> Path | None:
        """Write the registered avatar to the derived store; its path, or None."""
        if self._derived is None:
            return None
        from talkinghead.methods.ditto.avatar import Avatar

        if not isinstance(avatar, Avatar):
            return None  # a stand-in pipeline's: registered again when needed
        try:
            return self._derived.save(avatar_id, avatar)
        except OSError as exc:
            log.warning("cannot store avatar %s (%s); it will be registered again", avatar_id, exc)
            return None

    def _delete_files(self, record: AvatarRecord) -> None:
        with contextlib.suppress(OSError):
            record.path.unlink()
        if record.derived is not None:
            with contextlib.suppress(OSError):
                record.derived.unlink()

    def _evict(self) -> None:
        loaded = [r for r in self._records.values() if r.avatar is not None]
        for record in loaded[: max(len(loaded) - self.max_loaded, 0)]:
            record.avatar = None  # oldest first (the dict is in least-recently-used order)

    @staticmethod
    def _digest(path: Path) -> str:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
