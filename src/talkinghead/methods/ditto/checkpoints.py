"""Finding the release's checkpoint files, on disk or on the Hugging Face Hub.

The release (``digital-avatar/ditto-talkinghead`` on the Hub) is laid out as::

    <root>/
      ditto_cfg/v0.4_hubert_cfg_pytorch.pkl     config of the PyTorch pipeline (and *_trt*.pkl)
      ditto_pytorch/                            the release's ``--data_root`` for PyTorch
        models/{appearance_extractor,motion_extractor,warp_network,decoder,
                stitch_network,lmdm_v0.4_hubert}.pth
        aux_models/{det_10g.onnx, 2d106det.onnx, landmark203.onnx,
                    face_landmarker.task, hubert_streaming_fix_kv.onnx}
      ditto_onnx/*.onnx                         the same networks exported (optional here)
      ditto_trt_*/                              TensorRT engines (not used here)

Only ``ditto_pytorch/`` and ``ditto_cfg/`` are needed. `resolve_checkpoints` takes a
root the user names, or else the Hub cache, downloading those two folders only
when they are not cached; `download_release` (``talkinghead download``) fetches
them into the cache or a folder. Both use the pinned `DEFAULT_REVISION` unless
told otherwise, so a later push to the Hub repo cannot change what is loaded.

The config pkl (`load_release_config`) is a pickle of plain containers; it is
read with an unpickler that refuses anything but builtins and numpy arrays, so
a tampered file cannot run code. Its structure, as the release reads it::

    {
      "base_cfg": {                      # one entry per network/auxiliary model
        "insightface_det_cfg":  {"model_path", "device", "force_ori_type"},   # det_10g.onnx
        "landmark106_cfg":      {"model_path", "device", "force_ori_type"},   # 2d106det.onnx
        "landmark203_cfg":      {"model_path", "device", "force_ori_type"},
        "landmark478_cfg":      {"task_path", "blaze_face_model_path", "face_mesh_model_path",
                                 "device", "force_ori_type"},   # mediapipe face_landmarker.task
        "appearance_extractor_cfg", "motion_extractor_cfg", "stitch_network_cfg",
        "warp_network_cfg", "decoder_cfg": {"model_path", "device"},
        "hubert_cfg":           {"model_path", "device", "force_ori_type"},
      },
      "audio2motion_cfg": {              # the LMDM and its conditioning
        "model_path", "device", "motion_feat_dim" (265), "audio_feat_dim" (1024 + 35),
        "seq_frames" (80), "use_emo", "use_sc", "use_eye_open", "use_eye_ball",
        "w2f_type" ("hubert"),
      },
      "default_kwargs": {...},           # setup options overriding the pipeline's defaults:
                                         # crop_scale, sampling_timesteps, overlap_v2, emo, ...
    }

Model paths are relative to the data root (``ditto_pytorch/``) unless they name
an existing file; `resolve_config_paths` makes them absolute the same way.

Networks whose sizes differ from the release's (tiny test releases, a retrained
motion model) are described by a sidecar, ``models/talkinghead.json`` (`SIDECAR_NAME`):
constructor kwargs per network kind, read by `read_sidecar` for inference and data
preparation and written by training's export; its ``conditions`` entry holds the condition
flags of a trained motion model that differ from the release's (`motion_condition_flags`).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import importlib
import io
import json
import os
import pickle
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkinghead.errors import CheckpointError
from talkinghead.models.registry import OFFICIAL_NETWORKS

HUB_REPO_ID = "digital-avatar/ditto-talkinghead"
# The release commit fetched by default (not "main", which the authors may move). Public
# projects pin this same commit for ditto_pytorch/ and ditto_cfg/v0.4_hubert_cfg_pytorch.pkl,
# one of them checking all 12 files (2,314,719,638 bytes) against the Hub's SHA-256s.
DEFAULT_REVISION = "e4a2f60328ee7c32af585ac4b3cce299e4c8e254"
# What the PyTorch pipeline needs from the repo; the ONNX and TensorRT folders are gigabytes more.
# Always passed to snapshot_download as a list: a list works in every huggingface_hub version,
# while `hf download --include a --include b` keeps only the last pattern in hub 0.34-0.36.
HUB_PATTERNS = ("ditto_pytorch/**", "ditto_cfg/**")
RELEASE_SIZE = "about 2.3 GB"
CONFIG_NAME = "v0.4_hubert_cfg_pytorch.pkl"
PYTORCH_DIR = "ditto_pytorch"
CONFIG_DIR = "ditto_cfg"
ONNX_DIR = "ditto_onnx"

# Auxiliary models by the config's key stem (``<name>_cfg``) -> file in ditto_pytorch/aux_models/.
AUX_MODELS: Mapping[str, str] = {
    "insightface_det": "det_10g.onnx",
    "landmark106": "2d106det.onnx",
    "landmark203": "landmark203.onnx",
    "landmark478": "face_landmarker.task",
    "hubert": "hubert_streaming_fix_kv.onnx",
}
CONFIG_SECTIONS = ("base_cfg", "audio2motion_cfg", "default_kwargs")
SIDECAR_NAME = "talkinghead.json"  # optional per-network constructor kwargs beside the .pth files
# The sidecar's entry for the condition blocks a trained motion model uses (train-motion's
# use_* flags, the release's audio2motion_cfg names), beside the networks' kwargs.
SIDECAR_CONDITIONS = "conditions"
CONDITION_FLAGS = ("use_emo", "use_eye_open", "use_eye_ball", "use_sc", "use_lmk")


def download_command(
    local_dir: str | os.PathLike[str] = "./checkpoints", revision: str | None = None
) -> str:
    """The shell command that fetches what `resolve_checkpoints` needs into `local_dir`."""
    command = f"talkinghead download --dir {shlex.quote(str(local_dir))}"
    if revision is not None and revision != DEFAULT_REVISION:
        command += f" --revision {shlex.quote(revision)}"
    return command


@dataclass(frozen=True)
class ReleaseCheckpoints:
    """Every file of the release the Ditto pipeline reads, under one root.

    root:       the directory holding ``ditto_pytorch/`` and ``ditto_cfg/``
    config:     ``ditto_cfg/v0.4_hubert_cfg_pytorch.pkl``
    models:     network kind (as in `talkinghead.models.registry`) -> ``.pth`` file
    aux_models: auxiliary model (keys of `AUX_MODELS`) -> file
    onnx:       file stem -> ``ditto_onnx/<stem>.onnx``, only those present
    """

    root: Path
    config: Path
    models: Mapping[str, Path]
    aux_models: Mapping[str, Path]
    onnx: Mapping[str, Path]

    @classmethod
    def from_root(cls, root: str | os.PathLike[str]) -> ReleaseCheckpoints:
        """Paths in the release's layout under `root` (files may be missing; see `missing`).

        Also accepts the ``ditto_pytorch`` directory itself (the release's
        ``--data_root``) or its ``models`` directory, going up to the root.
        """
        root = _find_root(Path(root).expanduser())
        models_dir = root / PYTORCH_DIR / "models"
        aux_dir = root / PYTORCH_DIR / "aux_models"
        onnx_dir = root / ONNX_DIR
        onnx = {p.stem: p for p in sorted(onnx_dir.glob("*.onnx"))} if onnx_dir.is_dir() else {}
        return cls(
            root=root,
            config=root / CONFIG_DIR / CONFIG_NAME,
            models={k: models_dir / s.checkpoint_name for k, s in OFFICIAL_NETWORKS.items()},
            aux_models={k: aux_dir / name for k, name in AUX_MODELS.items()},
            onnx=onnx,
        )

    @property
    def data_root(self) -> Path:
        """The directory the config's relative model paths start from."""
        return self.root / PYTORCH_DIR

    def model(self, kind: str) -> Path:
        """The ``.pth`` of one network, by its registry kind (e.g. ``"decoder"``)."""
        try:
            return self.models[kind]
        except KeyError:
            raise KeyError(f"unknown network {kind!r}; known: {sorted(self.models)}") from None

    def missing(self, *, include_aux: bool = True) -> list[Path]:
        """Needed files that are absent: the config, the networks and (by default) the aux models."""
        needed = [self.config, *self.models.values()]
        if include_aux:
            needed += self.aux_models.values()
        return [p for p in needed if not p.is_file()]

    def require(self, *, include_aux: bool = True) -> ReleaseCheckpoints:
        """Self, or a `CheckpointError` naming what is missing and how to get it."""
        missing = self.missing(include_aux=include_aux)
        if missing:
            names = ", ".join(_rel(p, self.root) for p in missing)
            raise CheckpointError(
                f"{self.root}: incomplete Ditto checkpoints, {len(missing)} file(s) missing "
                f"({names}); get them with: {download_command(self.root)}"
            )
        return self


def read_sidecar(models_dir: Path) -> dict[str, dict[str, Any]]:
    """Constructor kwargs per network kind from ``talkinghead.json`` beside the checkpoints."""
    path = models_dir / SIDECAR_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable network configuration ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a JSON object of network kinds expected")
    unknown = sorted(set(data) - set(OFFICIAL_NETWORKS) - {SIDECAR_CONDITIONS})
    if unknown:
        raise CheckpointError(f"{path}: unknown network kinds {unknown}")
    flags = data.get(SIDECAR_CONDITIONS, {})
    if (
        not isinstance(flags, dict)
        or set(flags) - set(CONDITION_FLAGS)
        or not all(isinstance(v, bool) for v in flags.values())
    ):
        raise CheckpointError(
            f"{path}: {SIDECAR_CONDITIONS!r} must map {', '.join(CONDITION_FLAGS)} to true/false"
        )
    return data


def motion_condition_flags(
    checkpoints: ReleaseCheckpoints, release_config: Mapping[str, Any] | None = None
) -> dict[str, bool]:
    """The condition blocks the motion model was trained with, as the release's flags.

    The config pkl's ``audio2motion_cfg`` flags (the release builds its conditions from
    them), then the sidecar's ``conditions`` entry over them (a model from train-motion,
    installed into a release whose pkl describes the original). A flag neither names is the
    release's: on, but ``use_lmk`` off. `release_config`: the pkl, when already loaded.
    """
    flags = {k: k != "use_lmk" for k in CONDITION_FLAGS}
    if release_config is None and checkpoints.config.is_file():
        release_config = load_release_config(checkpoints.config)
    a2m = (release_config or {}).get("audio2motion_cfg") or {}
    flags.update({k: bool(a2m[k]) for k in CONDITION_FLAGS if k in a2m})
    models_dir = checkpoints.models["lmdm"].parent
    flags.update(read_sidecar(models_dir).get(SIDECAR_CONDITIONS, {}))
    return flags


def _find_root(path: Path) -> Path:
    if (path / PYTORCH_DIR).is_dir() or (path / CONFIG_DIR).is_dir():
        return path
    if (path / "models").is_dir() or (path / "aux_models").is_dir():
        return path.parent  # given ditto_pytorch/ itself
    if path.name == "models" and path.parent.name == PYTORCH_DIR:
        return path.parent.parent  # given ditto_pytorch/models/
    return path


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def resolve_checkpoints(
    path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    repo_id: str = HUB_REPO_ID,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    strict: bool = True,
) -> ReleaseCheckpoints:
    """The release's checkpoints: from `path`, else from the Hub cache, else downloaded.

    With `path`, only that directory is used (a `revision` is then an error: a
    folder has none). Without, the Hugging Face cache (`cache_dir`, default the
    standard one) is searched first without touching the network; if the files are
    not there and `download` is true, only ``ditto_pytorch/**`` and ``ditto_cfg/**``
    are fetched into the cache. `revision` (branch, tag or commit) defaults to
    `DEFAULT_REVISION`. With `strict` (the default), any missing file raises a
    `CheckpointError` that says what to download and where to put it; otherwise
    the caller checks `ReleaseCheckpoints.missing()`.
    """
    if path is not None:
        root = Path(path).expanduser()
        if revision is not None:
            raise CheckpointError(
                f"{root}: a local checkpoint directory has no revisions; drop the revision "
                f"({revision}) or the directory"
            )
        if not root.is_dir():
            raise CheckpointError(
                f"{root}: checkpoint directory not found; get the Ditto checkpoints with: "
                f"{download_command(root)}"
            )
        ckpts = ReleaseCheckpoints.from_root(root)
        return ckpts.require() if strict else ckpts

    hub = _import_hub(_not_found_error)
    revision = revision or DEFAULT_REVISION
    kwargs: dict[str, Any] = {
        "repo_id": repo_id,
        "revision": revision,
        "cache_dir": None if cache_dir is None else str(cache_dir),
    }
    cached = _cached_snapshot(hub, kwargs)
    if cached is not None and not cached.missing():
        return cached
    if not download:
        if cached is not None and not strict:
            return cached  # the caller decides which of the missing files it can do without
        if cached is not None:
            raise _not_found_error(
                f"the Hugging Face cache holds an incomplete copy ({len(cached.missing())} "
                f"file(s) missing) and downloading is off ({repo_id}@{revision})",
                revision,
            )
        raise _not_found_error(
            f"not in the Hugging Face cache and downloading is off ({repo_id}@{revision})",
            revision,
        )
    try:
        root = _snapshot(hub, **kwargs)
    except _hub_errors() as e:
        dest = cache_dir or hub.constants.HF_HUB_CACHE
        reason = _describe_hub_error(e, repo_id, revision, dest)
        raise _not_found_error(
            f"not cached, and downloading {repo_id} failed: {reason}", revision
        ) from e
    ckpts = ReleaseCheckpoints.from_root(root)
    return ckpts.require() if strict else ckpts


def download_release(
    local_dir: str | os.PathLike[str] | None = None,
    *,
    revision: str | None = None,
    repo_id: str = HUB_REPO_ID,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> ReleaseCheckpoints:
    """Fetch ``ditto_pytorch/`` and ``ditto_cfg/`` of the release; what `talkinghead download` runs.

    Into `local_dir` when given (a plain folder to pass as ``--checkpoints``), else into
    the Hugging Face cache (`cache_dir`, default the standard one) where
    `resolve_checkpoints` finds it. Files already there are not fetched again;
    huggingface_hub draws its own progress bars. `revision` defaults to
    `DEFAULT_REVISION`. Every failure (no huggingface_hub, offline, unknown
    revision or repo, disk full, a revision without the PyTorch release) is a
    one-line `CheckpointError`.
    """
    hub = _import_hub(
        lambda reason: CheckpointError(f"cannot download the Ditto release: {reason}")
    )
    revision = revision or DEFAULT_REVISION
    dest = local_dir if local_dir is not None else cache_dir or hub.constants.HF_HUB_CACHE
    try:
        root = _snapshot(
            hub,
            repo_id=repo_id,
            revision=revision,
            local_dir=None if local_dir is None else str(Path(local_dir).expanduser()),
            cache_dir=None if cache_dir is None else str(cache_dir),
            local_files_only=local_files_only,
        )
    except _hub_errors() as e:
        reason = _describe_hub_error(e, repo_id, revision, dest)
        raise CheckpointError(f"downloading {repo_id}@{revision} failed: {reason}") from e
    ckpts = ReleaseCheckpoints.from_root(root)
    missing = ckpts.missing()
    if missing:
        names = ", ".join(_rel(p, ckpts.root) for p in missing)
        raise CheckpointError(
            f"{repo_id}@{revision}: {len(missing)} file(s) missing in {ckpts.root} after the "
            f"download ({names}); run it again with network access, or pass a --revision that "
            f"has ditto_pytorch/ and ditto_cfg/{CONFIG_NAME}"
        )
    return ckpts


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the Hub cache is (`cache_dir`, else huggingface_hub's default: $HF_HUB_CACHE ...)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    hub = _import_hub(lambda reason: CheckpointError(f"no model-hub cache: {reason}"))
    return Path(hub.constants.HF_HUB_CACHE)


def _import_hub(error: Callable[[str], CheckpointError]) -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants
    except ImportError:
        raise error("huggingface_hub is not installed (pip install 'talkinghead[hub]')") from None
    return huggingface_hub


def _snapshot(hub: Any, **kwargs: Any) -> Path:
    """snapshot_download of the release's two folders; only arguments every hub >= 0.34 takes."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    # A list, never repeated flags or a comma string: see HUB_PATTERNS.
    return Path(hub.snapshot_download(allow_patterns=list(HUB_PATTERNS), **kwargs))


def _cached_snapshot(hub: Any, kwargs: dict[str, Any]) -> ReleaseCheckpoints | None:
    try:
        root = _snapshot(hub, **kwargs, local_files_only=True)
    except _hub_errors():
        return None
    return ReleaseCheckpoints.from_root(root)


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What snapshot_download raises when the Hub is unreachable or the files are not cached."""
    # OSError covers ConnectionError, requests' errors and HfHubHTTPError in hub < 1.
    return (
        OSError,
        *_error_classes(
            "huggingface_hub.errors:LocalEntryNotFoundError",
            "huggingface_hub.errors:EntryNotFoundError",
            "huggingface_hub.errors:HfHubHTTPError",
            "huggingface_hub.errors:HFValidationError",  # a malformed repo id or revision
            "huggingface_hub.utils:LocalEntryNotFoundError",
            "httpx:HTTPError",
            "httpx2:HTTPError",
            "requests:RequestException",
        ),
    )


def _error_classes(*names: str) -> tuple[type[BaseException], ...]:
    """Exception classes by "module:Name", those this environment has (hub versions differ)."""
    found: list[type[BaseException]] = []
    for qualified in names:
        module, _, name = qualified.partition(":")
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


def _describe_hub_error(
    error: BaseException, repo_id: str, revision: str, dest: str | os.PathLike[str]
) -> str:
    """What went wrong, on one line, with what to do about it."""
    first_line = (str(error).strip().splitlines() or ["no details"])[0]
    first_line = re.split(r"(?<=\.)\s", first_line)[0]  # the hub's messages run on for lines
    if len(first_line) > 200:
        first_line = first_line[:197] + "..."
    detail = f"{type(error).__name__}: {first_line}"
    if isinstance(error, _error_classes("huggingface_hub.errors:RevisionNotFoundError")):
        return (
            f"revision {revision!r} does not exist in {repo_id} "
            "(pass an existing branch, tag or commit hash)"
        )
    if isinstance(error, _error_classes("huggingface_hub.errors:RepositoryNotFoundError")):
        return (
            f"{repo_id} does not exist on the model hub or is not accessible ({detail}; "
            "a private or gated repo needs a token in HF_TOKEN)"
        )
    if _is_disk_full(error):
        return (
            f"no space left on the disk of {dest} (the release needs {RELEASE_SIZE}); free some "
            "space, or download into a folder on another disk with --dir"
        )
    offline = _error_classes(
        "huggingface_hub.errors:LocalEntryNotFoundError",
        "huggingface_hub.errors:OfflineModeIsEnabled",
        "httpx:TransportError",
        "httpx2:TransportError",
        "requests:ConnectionError",
        "requests:Timeout",
    )
    if isinstance(error, (ConnectionError, TimeoutError, *offline)):
        return (
            f"the model hub cannot be reached and the files are not in {dest} ({detail}); "
            "check the network connection (or HF_HUB_OFFLINE, HF_ENDPOINT)"
        )
    return detail


def _is_disk_full(error: BaseException | None) -> bool:
    # The hub may wrap the OSError (or only keep its text), so follow the cause chain.
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _not_found_error(reason: str, revision: str | None = None) -> CheckpointError:
    return CheckpointError(
        f"Ditto checkpoints not found: {reason}. Download them where there is network access "
        f"with: {download_command(revision=revision)} ; then pass --checkpoints ./checkpoints"
    )


# -- the release's config pkl --

_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy 1 vs 2 names of the same module
# fmt: off
_ALLOWED_GLOBALS = {
    "builtins": {
        "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex",
        "bool", "str", "bytes", "bytearray", "slice", "range",
    },
    "collections": {"OrderedDict", "defaultdict"},
    "_codecs": {"encode"},  # how protocol <= 2 stores bytes (numpy array data)
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy.core.numeric": {"_frombuffer"},  # protocol 5 arrays
}
# fmt: on


class _Refused(pickle.UnpicklingError):
    pass


class _ConfigUnpickler(pickle.Unpickler):
    """Only containers, numbers, strings and numpy arrays/scalars; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol 0-2 pickles name Python 2's module
            module = "builtins"
        canonical = module.replace("numpy._core", "numpy.core", 1)
        if name not in _ALLOWED_GLOBALS.get(canonical, ()):
            raise _Refused(f"refusing to load {module}.{name}")
        if canonical.startswith("numpy.core"):
            return _numpy_core_attr(canonical.removeprefix("numpy.core"), name)
        return getattr(importlib.import_module(canonical), name)


def _numpy_core_attr(submodule: str, name: str) -> Any:
    for package in reversed(_NUMPY_CORE):  # prefer numpy._core: numpy 2 warns on numpy.core
        try:
            return getattr(importlib.import_module(package + submodule), name)
        except (ImportError, AttributeError):
            continue
    raise _Refused(f"numpy has no {submodule.lstrip('.')}.{name}")


def load_release_config(
    pkl_path: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Read a ``ditto_cfg/*.pkl`` config safely (see the module doc for its structure).

    With `data_root`, model paths are resolved against it (`resolve_config_paths`).
    """
    path = Path(pkl_path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the config ({e.strerror or e})") from e
    if not data:
        raise CheckpointError(f"{path}: the config file is empty; an interrupted download or copy?")
    try:
        cfg = _ConfigUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise CheckpointError(f"{path}: not a plain Ditto config pickle ({e})") from e
    except Exception as e:  # truncated/corrupt pickles raise a variety of errors
        if data[:1] != b"\x80":  # how pickles of protocol 2 and up start (the release's: 4)
            raise CheckpointError(f"{path}: not a pickle (a ditto_cfg/*.pkl config is one)") from e
        raise CheckpointError(
            f"{path}: a damaged config pickle ({type(e).__name__}: {e}); a truncated download?"
        ) from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: config is a {type(cfg).__name__}, expected a dict")
    absent = [k for k in CONFIG_SECTIONS if not isinstance(cfg.get(k), dict)]
    if absent:
        raise CheckpointError(f"{path}: config lacks the section(s) {', '.join(absent)}")
    return cfg if data_root is None else resolve_config_paths(cfg, data_root)


def resolve_config_paths(cfg: Mapping[str, Any], data_root: str | os.PathLike[str]) -> dict:
    """A copy of `cfg` whose model paths are absolute: existing files as they are, else under `data_root`."""
    root = Path(data_root)

    def resolve(p: str) -> str:
        return p if os.path.isfile(p) else str(root / p)

    out = copy.deepcopy(dict(cfg))
    for key, section in out["base_cfg"].items():
        if not isinstance(section, dict):
            continue
        if key == "landmark478_cfg":
            for k in ("task_path", "blaze_face_model_path", "face_mesh_model_path"):
                if section.get(k):
                    section[k] = resolve(section[k])
        elif section.get("model_path"):
            section["model_path"] = resolve(section["model_path"])
    a2m = out["audio2motion_cfg"]
    if a2m.get("model_path"):
        a2m["model_path"] = resolve(a2m["model_path"])
    return out
