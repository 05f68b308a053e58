"""`talkinghead serve --ray`: the same FastAPI server as replicas of a Ray Serve deployment.

    app = build_ray_app(load_pipeline, ServeSettings(...), RayServeOptions(replicas=2))
    serve.start(http_options={"host": "127.0.0.1", "port": 8000}); serve.run(app)

Each replica is one `create_app(...)` with its own pipeline (loaded once, at replica
start), its own sessions and its own busy rule (`max_sessions` per replica). Ray
Serve's HTTP proxy forwards a WebSocket to one replica for the connection's whole
life, so a session stays on the replica that accepted it; the router sends a new
connection to the replica with fewer requests in flight.

Avatars: a replica keeps its registered avatars to itself (memory, its temporary
folder), but every upload is also published to one store on disk that all replicas
share (`shared_dir`, the same machine or a shared file system). A replica asked for
an id it does not hold registers the shared upload on demand, keeping the id. Ids are
a keyed hash of the bytes (`id_key`, one random key per deployment), so the same
upload gives the same id on every replica and ids stay unguessable. Deleting an
avatar removes it from the shared store; other replicas forget it on their next
look-up of that id.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkinghead.filemode import temporary_sibling
from talkinghead.serve.app import ServeSettings, create_app
from talkinghead.serve.avatars import AVATAR_ID, SOURCE_SUFFIX, AvatarRecord, AvatarRegistry

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "talkinghead"
# Requests a replica takes at once beyond its sessions (uploads, health, the page):
# a full replica must still be reachable so that it can refuse a session as busy
# instead of Ray queueing the connection.
HTTP_HEADROOM = 16


class SharedAvatarRegistry(AvatarRegistry):
    """An `AvatarRegistry` whose uploads are published to a store shared by replicas."""

    def __init__(self, *args: Any, shared_dir: Path, id_key: bytes, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shared_dir = Path(shared_dir)
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        self.id_key = id_key

    def _shared_path(self, avatar_id: str) -> Path:
        return self.shared_dir / f"{avatar_id}{SOURCE_SUFFIX}"

    def _content_id(self, path: Path) -> str:
        h = hashlib.blake2b(digest_size=8, key=self.id_key)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def add_file(self, path: Path, avatar_id: str | None = None) -> tuple[AvatarRecord, bool]:
        avatar_id = avatar_id or self._content_id(path)
        record, created = super().add_file(path, avatar_id)
        shared = self._shared_path(record.id)
        if not shared.exists():
            # Temp file + rename: another replica never sees half an upload.
            tmp = temporary_sibling(shared, ".part")  # the mode a plain copy would get
            try:
                shutil.copyfile(record.path, tmp)
                os.replace(tmp, shared)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return record, created

    def get(self, avatar_id: str) -> AvatarRecord | None:
        """The record, registering a shared upload on demand (blocks: call from a thread)."""
        if not AVATAR_ID.match(avatar_id):
            return None
        shared = self._shared_path(avatar_id)
        record = super().get(avatar_id)
        if record is not None:
            if not shared.exists():  # deleted through another replica
                self._forget(record)
                return None
            return record
        if not shared.is_file():
            return None
        tmp = self.new_upload_file()
        try:
            shutil.copyfile(shared, tmp)
            record, _ = super().add_file(tmp, avatar_id)
        except FileNotFoundError:
            return None  # deleted meanwhile
        except Exception as exc:  # a damaged file must not break the session's error path
            log.warning("cannot register shared avatar %s: %s", avatar_id, exc)
            return None
        finally:
            tmp.unlink(missing_ok=True)
        return record

    def delete(self, avatar_id: str) -> bool:
        """Remove the avatar here and from the shared store (the others forget it lazily)."""
        if not AVATAR_ID.match(avatar_id):
            return False
        record = super().get(avatar_id)  # the local record only: nothing to register
        if record is not None:
            self._forget(record)
        try:
            self._shared_path(avatar_id).unlink()
        except FileNotFoundError:
            return record is not None
        return True

    def _forget(self, record: AvatarRecord) -> None:
        """Drop a local record and this replica's files of it (not the shared upload)."""
        with self._lock:
            self._records.pop(record.id, None)
        self._delete_files(record)


@dataclass(frozen=True)
class RayServeOptions:
    """How the deployment is spread: replicas and what each one holds."""

    replicas: int = 1
    gpus_per_replica: float = 0.0  # 1: one replica per GPU
    cpus_per_replica: float = 1.0


def default_replicas() -> int:
    """One replica per GPU of the Ray cluster; 1 without GPUs (call after `ray.init`)."""
    import ray

    return max(int(ray.cluster_resources().get("GPU", 0)), 1)


def build_ray_app(
    pipeline_factory: Callable[[], Any],
    settings: ServeSettings,
    options: RayServeOptions,
    shared_dir: Path,
) -> Any:
    """The bound Ray Serve application (give it to `serve.run`).

    `pipeline_factory` runs once in each replica (it must pickle: a function or a
    `functools.partial`); `shared_dir` is the avatar store every replica reads.
    """
    from ray import serve

    id_key = secrets.token_bytes(16)  # one per deployment: the same on every replica

    @serve.ingress()
    class TalkingHeadReplica:
        def __init__(self, factory: Callable[[], Any], settings: ServeSettings) -> None:
            self.factory = factory
            self.settings = settings

        def __serve_build_asgi_app__(self) -> Any:
            def registry(*args: Any, **kwargs: Any) -> SharedAvatarRegistry:
                return SharedAvatarRegistry(*args, shared_dir=shared_dir, id_key=id_key, **kwargs)

            # The pipeline loads in the app's startup (a worker thread of this replica).
            return create_app(self.factory, self.settings, registry_factory=registry)

    deployment = serve.deployment(
        TalkingHeadReplica,
        name=DEPLOYMENT_NAME,
        num_replicas=options.replicas,
        max_ongoing_requests=settings.max_sessions + HTTP_HEADROOM,
        ray_actor_options={
            "num_cpus": options.cpus_per_replica,
            "num_gpus": options.gpus_per_replica,
        },
    )
    return deployment.bind(pipeline_factory, settings)
