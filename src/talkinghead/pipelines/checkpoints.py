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
when they are not cached.

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
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkinghead.errors import CheckpointError
from talkinghead.models.registry import OFFICIAL_NETWORKS

HUB_REPO_ID = "digital-avatar/ditto-talkinghead"
# What the PyTorch pipeline needs from the repo; the ONNX and TensorRT folders are gigabytes more.
HUB_PATTERNS = ("ditto_pytorch/**", "ditto_cfg/**")
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


def download_command(local_dir: str | os.PathLike[str] = "./checkpoints") -> str:
    """The shell command that fetches what `resolve_checkpoints` needs into `local_dir`."""
    includes = " ".join(f'--include "{p.removesuffix("*")}"' for p in HUB_PATTERNS)
    return f"hf download {HUB_REPO_ID} {includes} --local-dir {local_dir}"


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

    With `path`, only that directory is used. Without, the Hugging Face cache is
    searched first without touching the network; if the files are not there and
    `download` is true, only ``ditto_pytorch/**`` and ``ditto_cfg/**`` are fetched
    into the cache. With `strict` (the default), any missing file raises a
    `CheckpointError` that says what to download and where to put it; otherwise
    the caller checks `ReleaseCheckpoints.missing()`.
    """
    if path is not None:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise CheckpointError(
                f"{root}: checkpoint directory not found; get the Ditto checkpoints with: "
                f"{download_command(root)}"
            )
        ckpts = ReleaseCheckpoints.from_root(root)
        return ckpts.require() if strict else ckpts

    try:
        import huggingface_hub
    except ImportError:
        raise _not_found_error(
            "huggingface_hub is not installed (pip install huggingface_hub)"
        ) from None

    kwargs: dict[str, Any] = {
        "repo_id": repo_id,
        "allow_patterns": list(HUB_PATTERNS),
        "revision": revision,
        "cache_dir": None if cache_dir is None else str(cache_dir),
    }
    cached = _cached_snapshot(huggingface_hub, kwargs)
    if cached is not None and not cached.missing():
        return cached
    if not download:
        raise _not_found_error(f"not in the Hugging Face cache and downloading is off ({repo_id})")
    try:
        root = Path(huggingface_hub.snapshot_download(**kwargs))
    except _hub_errors() as e:
        raise _not_found_error(
            f"not cached, and downloading {repo_id} failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'})"
        ) from e
    ckpts = ReleaseCheckpoints.from_root(root)
    return ckpts.require() if strict else ckpts


def _cached_snapshot(hub: Any, kwargs: dict[str, Any]) -> ReleaseCheckpoints | None:
    try:
        root = hub.snapshot_download(**kwargs, local_files_only=True)
    except _hub_errors():
        return None
    return ReleaseCheckpoints.from_root(root)


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What snapshot_download raises when the Hub is unreachable or the files are not cached."""
    errors: list[type[BaseException]] = [OSError]  # ConnectionError, requests', HfHubHTTPError
    for module, name in (
        ("huggingface_hub.errors", "LocalEntryNotFoundError"),
        ("huggingface_hub.errors", "EntryNotFoundError"),
        ("huggingface_hub.errors", "HfHubHTTPError"),
        ("huggingface_hub.utils", "LocalEntryNotFoundError"),
        ("httpx", "HTTPError"),
        ("requests", "RequestException"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)


def _not_found_error(reason: str) -> CheckpointError:
    return CheckpointError(
        f"Ditto checkpoints not found: {reason}. Download them where there is network access "
        f"with: {download_command()} ; then pass --checkpoints ./checkpoints"
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
    try:
        cfg = _ConfigUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise CheckpointError(f"{path}: not a plain Ditto config pickle ({e})") from e
    except Exception as e:  # truncated/corrupt pickles raise a variety of errors
        raise CheckpointError(f"{path}: corrupt config pickle ({type(e).__name__}: {e})") from e
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
