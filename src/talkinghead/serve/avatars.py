"""The avatar registry: uploaded portraits and short videos, registered once, used by id.

Uploads are stored under names the server chooses (the content's hash), never a
name or path from the client; what a file is gets decided by decoding it, not by
its extension or declared type. Registered avatars stay on disk (and in the
pipeline's avatar cache); only the `max_loaded` most recently used are kept in
memory (a video avatar holds an 8 MiB feature volume per frame at full size).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
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
    kind: str  # "image" or "video"
    width: int
    height: int
    frames: int
    bytes: int
    thumbnail: bytes
    created: float = field(default_factory=time.time)
    avatar: Any = None  # the registered Avatar while loaded

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


class AvatarRegistry:
    """Registered avatars by id. Methods block (decoding, face analysis): call them
    from worker threads, not the event loop."""

    def __init__(
        self,
        pipeline: Any,
        directory: Path,
        *,
        max_avatars: int = 32,
        max_frames: int = 50,
        max_loaded: int = 4,
    ) -> None:
        self.pipeline = pipeline
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_avatars = max_avatars
        self.max_frames = max_frames
        self.max_loaded = max(max_loaded, 1)
        self._records: OrderedDict[str, AvatarRecord] = OrderedDict()
        self._lock = threading.RLock()
        # Face analysers are not thread-safe: one registration at a time.
        self._register_lock = threading.Lock()

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
        """The registered avatar (registering it again from disk if it was unloaded)."""
        record = self.get(avatar_id)
        if record is None:
            raise KeyError(avatar_id)
        with self._lock:
            if record.avatar is not None:
                self._records.move_to_end(avatar_id)
                return record.avatar
        avatar = self._register(record.path)
        with self._lock:
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

    def add_file(self, path: Path) -> tuple[AvatarRecord, bool]:
        """Register the file at `path` (moved into the store); (record, created).

        Raises `UploadError` 415 for anything that does not decode as an image or video,
        422 when no face is found, 507 when the registry is full.
        """
        from talkinghead.media.source import load_source

        avatar_id = self._digest(path)
        existing = self.get(avatar_id)
        if existing is not None:
            path.unlink(missing_ok=True)
            return existing, False
        if len(self._records) >= self.max_avatars:
            raise UploadError(507, f"the server holds {self.max_avatars} avatars; delete one first")
        try:
            media = load_source(path, max_side=self._max_side(), max_frames=self.max_frames)
        except MediaError:
            raise UploadError(415, "not an image or video the server can decode") from None
        final = self.directory / f"{avatar_id}{SOURCE_SUFFIX}"
        os.replace(path, final)
        try:
            avatar = self._register(final)
        except NoFaceError:
            final.unlink(missing_ok=True)
            raise UploadError(422, "no face found in the upload") from None
        except TalkingHeadError as exc:
            final.unlink(missing_ok=True)
            raise UploadError(422, f"cannot register the upload: {exc}") from None
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        h, w = media.size
        record = AvatarRecord(
            id=avatar_id,
            path=final,
            kind="image" if media.is_image else "video",
            width=w,
            height=h,
            frames=len(media.frames),
            bytes=final.stat().st_size,
            thumbnail=_thumbnail(media.frames[0]),
            avatar=avatar,
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
        """Register the sources already in the store (a restart with the same directory)."""
        count = 0
        for path in sorted(self.directory.glob(f"*{SOURCE_SUFFIX}")):
            tmp = self.new_upload_file()
            try:
                os.replace(path, tmp)
                self.add_file(tmp)
                count += 1
            except Exception as exc:  # one bad file must not stop the server
                log.warning("skipping stored avatar %s: %s", path.name, exc)
            finally:
                tmp.unlink(missing_ok=True)
        return count

    def delete(self, avatar_id: str) -> bool:
        record = self.get(avatar_id)
        if record is None:
            return False
        with self._lock:
            self._records.pop(avatar_id, None)
        # Sessions already running keep their own reference to the avatar.
        with contextlib.suppress(OSError):
            record.path.unlink()
        return True

    def cleanup_uploads(self) -> None:
        for part in self.directory.glob(".upload-*.part"):
            part.unlink(missing_ok=True)

    # ---- internals

    def _max_side(self) -> int | None:
        config = getattr(self.pipeline, "config", None)
        return getattr(config, "max_size", 1920)

    def _register(self, path: Path) -> Any:
        with self._register_lock:
            return self.pipeline.register(path, max_frames=self.max_frames)

    def _evict(self) -> None:
        loaded = [r for r in self._records.values() if r.avatar is not None]
        for record in loaded[: max(len(loaded) - self.max_loaded, 0)]:
            record.avatar = None  # oldest first (the dict is in least-recently-used order)

    @staticmethod
    def _digest(path: Path) -> str:
        h = hashlib.blake2b(digest_size=8)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
