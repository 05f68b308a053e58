"""The pretrained files the metrics need: where they come from and where they are looked for.

Each file is searched, in order, in ``--weights-dir`` (under any of its accepted
names), in our cache (``$TALKINGHEAD_EVAL_CACHE``, else
``~/.cache/talkinghead/eval``) and in torch's hub checkpoint folder (where
torchvision and pytorch-fid keep their downloads, so an existing download is
reused). If it is in none of them it is fetched from its usual public location into
our cache, unless downloads are off; a file whose name carries a hash prefix
(torchvision's, pytorch-fid's) is checked against it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from talkinghead.errors import CheckpointError
from talkinghead.filemode import temporary_sibling


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: `names[0]` is the name it is cached under."""

    key: str
    names: tuple[str, ...]
    url: str
    what: str
    archive_member: str | None = None  # the file inside a downloaded zip

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def hash_prefix(self) -> str | None:
        """The sha256 prefix torchvision-style names end with (``-7be5be79.pth``)."""
        m = re.search(r"-([0-9a-f]{8,})\.\w+$", self.name)
        return m.group(1) if m else None


WEIGHT_FILES: dict[str, WeightFile] = {
    f.key: f
    for f in (
        WeightFile(
            "alexnet",
            ("alexnet-owt-7be5be79.pth",),
            "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            "torchvision's ImageNet AlexNet (the LPIPS-alex trunk)",
        ),
        WeightFile(
            "vgg16",
            ("vgg16-397923af.pth",),
            "https://download.pytorch.org/models/vgg16-397923af.pth",
            "torchvision's ImageNet VGG-16 (the LPIPS-vgg trunk)",
        ),
        WeightFile(
            "lpips_alex",
            ("lpips_v0.1_alex.pth", "alex.pth"),
            "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",
            "the LPIPS v0.1 linear layers for AlexNet",
        ),
        WeightFile(
            "lpips_vgg",
            ("lpips_v0.1_vgg.pth", "vgg.pth"),
            "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
            "the LPIPS v0.1 linear layers for VGG-16",
        ),
        WeightFile(
            "inception_fid",
            ("pt_inception-2015-12-05-6726825d.pth",),
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth",
            "pytorch-fid's Inception-v3 (TensorFlow FID weights)",
        ),
        WeightFile(
            "syncnet",
            ("syncnet_v2.model",),
            "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
            "SyncNet v2 (VGG, Oxford)",
        ),
        WeightFile(
            "arcface",
            ("w600k_r50.onnx",),
            "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
            "InsightFace's ArcFace R50 (WebFace600K), from the buffalo_l pack",
            archive_member="w600k_r50.onnx",
        ),
        WeightFile(
            "i3d",
            ("i3d_torchscript.pt",),
            "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
            "the TorchScript I3D (Kinetics-400) of StyleGAN-V's FVD",
        ),
    )
}

# Which files each metric needs.
METRIC_WEIGHTS: dict[str, tuple[str, ...]] = {
    "lpips": ("alexnet", "lpips_alex"),
    "lpips_vgg": ("vgg16", "lpips_vgg"),
    "fid": ("inception_fid",),
    "lse": ("syncnet",),
    "csim": ("arcface",),
    "fvd": ("i3d",),
}


def cache_dir() -> Path:
    env = os.environ.get("TALKINGHEAD_EVAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "talkinghead" / "eval"


def _torch_hub_checkpoints() -> Path | None:
    try:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # torch's hub dir is a convenience, never a requirement
        return None


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class WeightResolver:
    """Finds (or fetches) the files of `WEIGHT_FILES`; remembers what it resolved."""

    def __init__(
        self,
        weights_dir: str | os.PathLike[str] | None = None,
        download: bool = True,
        cache: str | os.PathLike[str] | None = None,
        on_download: Callable[[WeightFile], None] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        self.download = download
        self.cache = Path(cache) if cache is not None else cache_dir()
        self.on_download = on_download
        self.timeout = timeout
        self.resolved: dict[str, Path] = {}

    def search_dirs(self) -> list[Path]:
        dirs = [d for d in (self.weights_dir, self.cache, _torch_hub_checkpoints()) if d]
        return list(dict.fromkeys(dirs))

    def find(self, key: str) -> Path | None:
        """The local file for `key`, or None."""
        spec = WEIGHT_FILES[key]
        for d in self.search_dirs():
            # Other names (e.g. the lpips package's "alex.pth") only count in --weights-dir.
            names = spec.names if d == self.weights_dir else spec.names[:1]
            for name in names:
                if (d / name).is_file():
                    return d / name
        return None

    def resolve(self, key: str, metric: str = "") -> Path:
        """The file for `key`: found locally, else downloaded; CheckpointError if neither."""
        if key in self.resolved:
            return self.resolved[key]
        path = self.find(key)
        if path is None:
            spec = WEIGHT_FILES[key]
            if not self.download:
                raise CheckpointError(missing_message(metric, [spec], self))
            path = self._fetch(spec, metric)
        self.resolved[key] = path
        return path

    def missing(self, metrics: Iterable[str]) -> dict[str, list[WeightFile]]:
        """Metric -> the files it needs that are not on disk (nothing is downloaded)."""
        out: dict[str, list[WeightFile]] = {}
        for m in metrics:
            absent = [WEIGHT_FILES[k] for k in METRIC_WEIGHTS.get(m, ()) if self.find(k) is None]
            if absent:
                out[m] = absent
        return out

    def _fetch(self, spec: WeightFile, metric: str) -> Path:
        self.cache.mkdir(parents=True, exist_ok=True)
        target = self.cache / spec.name
        if self.on_download is not None:
            self.on_download(spec)
        tmp = temporary_sibling(target, "")  # readable like a plain download, not 0600
        try:
            try:
                with (
                    urllib.request.urlopen(spec.url, timeout=self.timeout) as r,
                    open(tmp, "wb") as f,
                ):
                    shutil.copyfileobj(r, f)
            except OSError as e:  # URLError is an OSError
                raise CheckpointError(
                    missing_message(metric, [spec], self) + f" (download failed: {e})"
                ) from None
            if spec.archive_member is not None:
                self._extract(tmp, spec, target)
            else:
                prefix = spec.hash_prefix
                if prefix is not None and not sha256(tmp).startswith(prefix):
                    raise CheckpointError(
                        f"{spec.url}: the download's sha256 does not start with {prefix}"
                    )
                os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    @staticmethod
    def _extract(archive: Path, spec: WeightFile, target: Path) -> None:
        try:
            with zipfile.ZipFile(archive) as z:
                members = [n for n in z.namelist() if Path(n).name == spec.archive_member]
                if not members:
                    raise CheckpointError(f"{spec.url}: the archive has no {spec.archive_member}")
                part = target.with_name(f".{target.name}.part")
                with z.open(members[0]) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(part, target)
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{spec.url}: not a zip archive ({e})") from None


def missing_message(metric: str, files: list[WeightFile], resolver: WeightResolver) -> str:
    """One line: which metric needs which file, and where it was looked for."""
    where = ", ".join(str(d) for d in resolver.search_dirs())
    parts = [f"{f.name} ({f.what}; {f.url})" for f in files]
    who = f"metric {metric!r} needs " if metric else "missing "
    return f"{who}{' and '.join(parts)}; looked in {where}"
