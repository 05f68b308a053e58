"""`evaluate`: every metric over one pair of videos or a whole test set, as one result.

Per-video metrics (a row per pair; the test-set figure is their mean):

=============  ===============================================================
``psnr``       PSNR (dB), mean over the sampled frames; ``psnr_face`` on face crops
``ssim``       SSIM, likewise (``ssim_face``)
``lpips``      LPIPS v0.1 with AlexNet (``lpips_face``)
``lpips_vgg``  LPIPS v0.1 with VGG-16 (``lpips_vgg_face``)
``lse``        ``lse_d``, ``lse_c`` (and the found ``av_offset``) of the prediction
``csim``       ArcFace cosine similarity of the prediction to the source identity
=============  ===============================================================

Set-level metrics (one number over all pairs, in the mean row only): ``fid``
(sampled frames of all predictions vs all references) and ``fvd`` (16-frame clips).

``face_crop=True`` adds the ``*_face`` columns: the reference's face track crops
both videos (see `talkinghead.eval.face`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from talkinghead.errors import CheckpointError, MediaError, SettingsError
from talkinghead.eval import face as face_mod
from talkinghead.eval.video import (
    SYNC_FPS,
    VideoPair,
    align_pair,
    pair_inputs,
    read_video,
    sample_indices,
)
from talkinghead.eval.weights import (
    METRIC_WEIGHTS,
    WEIGHT_FILES,
    WeightResolver,
    missing_message,
    sha256,
)

METRICS = ("psnr", "ssim", "lpips", "lpips_vgg", "fid", "lse", "csim", "fvd")
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "fid", "lse", "csim")
SET_METRICS = frozenset({"fid", "fvd"})
# Columns each metric adds to a row, in table order.
_COLUMNS = {
    "psnr": ("psnr",),
    "ssim": ("ssim",),
    "lpips": ("lpips",),
    "lpips_vgg": ("lpips_vgg",),
    "lse": ("lse_d", "lse_c", "av_offset"),
    "csim": ("csim",),
    "fid": ("fid",),
    "fvd": ("fvd",),
}
_FACE_METRICS = ("psnr", "ssim", "lpips", "lpips_vgg")
# Columns that are not averaged into the test-set row.
_NOT_AVERAGED = frozenset({"av_offset"})
DECIMALS = {"psnr": 2, "ssim": 4, "lpips": 4, "lse_d": 3, "lse_c": 3, "csim": 4, "fid": 2, "fvd": 2}

Progress = Callable[[str, int, int], None]  # (what, pairs done, pairs total)


def parse_metrics(metrics: str | Iterable[str]) -> tuple[str, ...]:
    """Metric names from "a,b" or a list; validated, duplicates dropped, order kept."""
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [m.strip().lower().replace("-", "_") for m in items if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {', '.join(unknown)}; expected some of {', '.join(METRICS)}"
        )
    if not names:
        raise ValueError("no metric requested")
    return tuple(dict.fromkeys(names))


def metric_columns(metrics: Sequence[str], face_crop: bool) -> list[str]:
    """Per-video columns in `METRICS` order, then the set-level ones."""
    cols: list[str] = []
    for m in sorted(metrics, key=lambda m: (m in SET_METRICS, METRICS.index(m))):
        cols += _COLUMNS[m]
        if face_crop and m in _FACE_METRICS:
            cols.append(f"{m}_face")
    return cols


def _decimals(col: str) -> int:
    base = col.removesuffix("_face")
    return DECIMALS.get(base, DECIMALS.get(base.split("_")[0], 4))


def format_value(col: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if col == "av_offset":
        return str(int(value))
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{_decimals(col)}f}"


@dataclass
class VideoScores:
    """One pair's row."""

    name: str
    pred: str
    ref: str
    frames: int  # frames compared (after cutting to the shorter video and max_frames)
    scores: dict[str, float] = field(default_factory=dict)
    audio: str | None = None  # where LSE's audio came from
    source: str | None = None  # CSIM's identity image (None: the reference's first frame)


@dataclass
class EvaluationResult:
    rows: list[VideoScores]
    mean: dict[str, float]
    columns: list[str]
    settings: dict
    versions: dict[str, str]
    weights: dict[str, dict[str, str]]
    skipped: dict[str, str]

    def to_dict(self) -> dict:
        return {
            "format": "talkinghead-evaluation/1",
            "columns": self.columns,
            "videos": [asdict(r) for r in self.rows],
            "mean": self.mean,
            "skipped": self.skipped,
            "settings": self.settings,
            "versions": self.versions,
            "weights": self.weights,
        }

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """JSON (non-finite numbers as JSON5/Python's Infinity/NaN, which json.load reads)."""
        from talkinghead.filemode import write_text_atomically

        return write_text_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per video and a final ``mean`` row (set-level metrics only there)."""
        from talkinghead.filemode import write_text_atomically

        f = io.StringIO()  # the table is small; published whole or not at all
        w = csv.writer(f)
        w.writerow(["video", "pred", "ref", "frames", *self.columns])
        for r in self.rows:
            w.writerow(
                [
                    r.name,
                    r.pred,
                    r.ref,
                    r.frames,
                    *(_csv(r.scores.get(c)) for c in self.columns),
                ]
            )
        total = sum(r.frames for r in self.rows)
        w.writerow(["mean", "", "", total, *(_csv(self.mean.get(c)) for c in self.columns)])
        return write_text_atomically(path, f.getvalue())

    def table(self, title: str | None = "talkinghead evaluate"):
        """A rich Table: a row per video, then the mean."""
        from rich.table import Table

        t = Table(title=title, show_footer=False)
        t.add_column("video", style="bold")
        t.add_column("frames", justify="right")
        for c in self.columns:
            t.add_column(c, justify="right")
        for r in self.rows:
            t.add_row(
                r.name, str(r.frames), *(format_value(c, r.scores.get(c)) for c in self.columns)
            )
        if len(self.rows) > 1 or any(c in self.mean for c in self.columns):
            t.add_section()
            t.add_row(
                "mean",
                str(sum(r.frames for r in self.rows)),
                *(format_value(c, self.mean.get(c)) for c in self.columns),
                style="bold",
            )
        return t


def _csv(value: float | None) -> str:
    if value is None:
        return ""
    return repr(float(value))


def versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Versions of what the numbers depend on."""
    import importlib.metadata as md

    import cv2
    import scipy

    from talkinghead import __version__

    out = {
        "talkinghead": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "opencv": cv2.__version__,
    }
    for dist in ("av", *extra):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


class _Networks:
    """Metric networks, loaded on first use from the resolved files."""

    def __init__(self, resolver: WeightResolver, device: str) -> None:
        self.resolver = resolver
        self.device = device
        self._cache: dict[str, object] = {}

    def _path(self, key: str) -> Path:
        return self.resolver.resolved[key]

    def get(self, name: str):
        if name in self._cache:
            return self._cache[name]
        from talkinghead.eval import networks

        if name in ("lpips", "lpips_vgg"):
            net = "alex" if name == "lpips" else "vgg"
            trunk, lin = METRIC_WEIGHTS[name]
            model = networks.load_lpips(net, self._path(trunk), self._path(lin)).to(self.device)
        elif name == "fid":
            model = networks.load_inception(self._path("inception_fid")).to(self.device)
        elif name == "lse":
            model = networks.load_syncnet(self._path("syncnet")).to(self.device)
        elif name == "csim":
            from talkinghead.eval.identity import ArcFaceEmbedder

            providers = (
                ["CUDAExecutionProvider", "CPUExecutionProvider"]
                if self.device.startswith("cuda")
                else None
            )
            model = ArcFaceEmbedder(self._path("arcface"), providers)
        elif name == "fvd":
            model = networks.load_i3d(self._path("i3d")).to(self.device)
        else:  # pragma: no cover - guarded by parse_metrics
            raise KeyError(name)
        self._cache[name] = model
        return model


@torch.no_grad()
def _lpips(model, a: np.ndarray, b: np.ndarray, device: str, batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, len(a), batch_size):
        x = torch.from_numpy(a[i : i + batch_size]).permute(0, 3, 1, 2).float()
        y = torch.from_numpy(b[i : i + batch_size]).permute(0, 3, 1, 2).float()
        # [0, 255] -> [-1, 1], as lpips.im2tensor does.
        out.append(model(x.to(device) / 127.5 - 1, y.to(device) / 127.5 - 1).cpu().double().numpy())
    return np.concatenate(out)


def _audio_for_lse(pair: VideoPair) -> tuple[np.ndarray, Path]:
    from talkinghead.audio.io import load_audio

    candidates = [p for p in (pair.audio, pair.pred, pair.ref) if p is not None]
    for path in candidates:
        try:
            return load_audio(path, 16000), path
        except MediaError:
            if path == pair.audio:
                raise
    raise MediaError(f"{pair.pred}: LSE needs audio; give --audio or a video with an audio track")


def evaluate(
    pred: str | os.PathLike[str],
    ref: str | os.PathLike[str],
    audio: str | os.PathLike[str] | None = None,
    metrics: str | Iterable[str] = DEFAULT_METRICS,
    *,
    source: str | os.PathLike[str] | None = None,
    face_crop: bool = False,
    weights_dir: str | os.PathLike[str] | None = None,
    skip_missing: bool = False,
    download: bool = True,
    frame_stride: int = 1,
    max_frames: int | None = None,
    fid_method: str = "sqrtm",
    device: str = "cpu",
    batch_size: int = 16,
    face_tracker: face_mod.FaceTracker | None = None,
    progress: Progress | None = None,
    on_download: Callable[[object], None] | None = None,
) -> EvaluationResult:
    """Evaluate predictions against references (two videos, or two directories paired by name).

    audio:        LSE's audio (file, or directory paired by name); default: the
                  prediction's audio track, else the reference's.
    source:       CSIM's identity image (file or directory); default: each
                  reference's first frame.
    face_crop:    also compute PSNR/SSIM/LPIPS on face crops.
    weights_dir:  where to look for the pretrained files first (see `weights`).
    skip_missing: leave out a metric whose files are missing instead of failing.
    download:     fetch missing files into the cache (False: only look locally).
    frame_stride, max_frames: frame sampling (see `talkinghead.eval.video`).
    fid_method:   "sqrtm" (pytorch-fid's) or "fast" (same value, faster).
    face_tracker: frames, name -> FaceTrack (default: the MediaPipe mesh tracker).
    """
    from talkinghead.eval.fid import FID_METHODS

    names = parse_metrics(metrics)
    if fid_method not in FID_METHODS:
        raise ValueError(f"unknown FID method {fid_method!r}; expected one of {FID_METHODS}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    sample_indices(1, frame_stride)  # validates the stride
    pairs = pair_inputs(pred, ref, audio, source)

    resolver = WeightResolver(weights_dir, download=download, on_download=on_download)
    skipped: dict[str, str] = {}
    problems: list[str] = []
    for m in names:
        errors: list[tuple[str, CheckpointError]] = []
        for key in METRIC_WEIGHTS.get(m, ()):
            try:
                resolver.resolve(key, m)
            except CheckpointError as e:
                errors.append((key, e))
        if not errors:
            continue
        if len(errors) == 1:
            message = str(errors[0][1])
        else:  # name every missing file of the metric at once
            message = missing_message(m, [WEIGHT_FILES[k] for k, _ in errors], resolver)
            message += " (download failed)" if download else ""
        if skip_missing:
            skipped[m] = message
        else:
            problems.append(message)
    if problems:
        raise CheckpointError("; ".join(problems) + " (or pass --skip-missing)")
    active = tuple(m for m in names if m not in skipped)
    nets = _Networks(resolver, device)
    tracker = face_tracker
    needs_faces = face_crop or "lse" in active or "csim" in active
    if needs_faces and tracker is None:
        try:
            tracker = face_mod.MeshFaceTracker()
        except SettingsError as e:  # mediapipe missing: say what needs it
            raise SettingsError(f"face tracking (LSE, CSIM, --face-crop): {e}") from None

    rows: list[VideoScores] = []
    fid_feats: dict[str, list[np.ndarray]] = {"pred": [], "ref": []}
    fvd_feats: dict[str, list[np.ndarray]] = {"pred": [], "ref": []}
    for done, pair in enumerate(pairs):
        if progress is not None:
            progress(pair.name, done, len(pairs))
        row = _evaluate_pair(
            pair,
            active,
            nets,
            tracker,
            face_crop,
            frame_stride,
            max_frames,
            device,
            batch_size,
            fid_feats,
            fvd_feats,
        )
        rows.append(row)
    if progress is not None:
        progress("set-level metrics", len(pairs), len(pairs))

    columns = metric_columns(active, face_crop)
    mean: dict[str, float] = {}
    for c in columns:
        vals = [r.scores[c] for r in rows if c in r.scores]
        if vals and c not in _NOT_AVERAGED:
            mean[c] = float(np.mean(vals))
    from talkinghead.eval.fid import fid_from_features

    if "fid" in active:
        p, r = np.concatenate(fid_feats["pred"]), np.concatenate(fid_feats["ref"])
        if min(len(p), len(r)) < 2:
            raise MediaError(f"FID needs at least 2 sampled frames per side, got {len(p)}")
        mean["fid"] = fid_from_features(p, r, fid_method)
    if "fvd" in active:
        p, r = np.concatenate(fvd_feats["pred"]), np.concatenate(fvd_feats["ref"])
        if min(len(p), len(r)) < 2:
            raise MediaError(
                f"FVD needs at least 2 clips of 16 frames per side, got {len(p)} and {len(r)}"
            )
        mean["fvd"] = fid_from_features(p, r, fid_method)

    settings = {
        "metrics": list(active),
        "requested_metrics": list(names),
        "face_crop": face_crop,
        "frame_stride": frame_stride,
        "max_frames": max_frames,
        "frame_pairing": "cut to the shorter video; prediction resized to the reference's size "
        "(INTER_AREA to shrink, INTER_CUBIC to enlarge)",
        "device": device,
        "fid": {"method": fid_method, "dims": 2048, "input": "RGB [0,1], bilinear to 299x299"},
        "lpips": {"version": "0.1", "input": "RGB [-1,1] at the frame's size"},
        "ssim": {
            "window": "gaussian 11x11 sigma 1.5",
            "K1": 0.01,
            "K2": 0.03,
            "channels": "RGB mean",
        },
        "lse": {
            "fps": SYNC_FPS,
            "vshift": 15,
            "crop": "syncnet_python crop_video, scale 0.4, 224x224",
        },
        "csim": {"template": "arcface 112x112", "identity": "source image or reference frame 0"},
        "fvd": {"clip_frames": 16, "clips": "non-overlapping from frame 0"},
        "face_crop_scale": face_mod.FACE_CROP_SCALE,
        "face_tracker": type(tracker).__name__ if tracker is not None else None,
    }
    extra = ["onnxruntime"] if "csim" in active else []
    if needs_faces:
        extra.append("mediapipe")
    weights = {
        key: {"file": WEIGHT_FILES[key].name, "path": str(path), "sha256": sha256(path)}
        for key, path in resolver.resolved.items()
    }
    return EvaluationResult(rows, mean, columns, settings, versions(extra), weights, skipped)


def _evaluate_pair(
    pair: VideoPair,
    metrics: tuple[str, ...],
    nets: _Networks,
    tracker: face_mod.FaceTracker | None,
    face_crop: bool,
    stride: int,
    max_frames: int | None,
    device: str,
    batch_size: int,
    fid_feats: dict[str, list[np.ndarray]],
    fvd_feats: dict[str, list[np.ndarray]],
) -> VideoScores:
    pred_v, ref_v = read_video(pair.pred, max_frames), read_video(pair.ref, max_frames)
    pred, ref = align_pair(pred_v, ref_v, max_frames)
    idx = sample_indices(len(pred), stride)
    ps, rs = pred[idx], ref[idx]
    row = VideoScores(pair.name, str(pair.pred), str(pair.ref), len(pred))
    s = row.scores

    crops: tuple[np.ndarray, np.ndarray] | None = None
    if face_crop:
        track = tracker(rs, f"{pair.ref}")
        windows = face_mod.face_windows(track)
        crops = (face_mod.face_crops(ps, windows), face_mod.face_crops(rs, windows))

    from talkinghead.eval import pixel

    for m in ("psnr", "ssim"):
        if m in metrics:
            fn = pixel.psnr if m == "psnr" else pixel.ssim
            s[m] = float(np.mean(fn(ps, rs)))
            if crops is not None:
                s[f"{m}_face"] = float(np.mean(fn(*crops)))
    for m in ("lpips", "lpips_vgg"):
        if m in metrics:
            model = nets.get(m)
            s[m] = float(np.mean(_lpips(model, ps, rs, device, batch_size)))
            if crops is not None:
                s[f"{m}_face"] = float(np.mean(_lpips(model, *crops, device, batch_size)))
    if "fid" in metrics:
        from talkinghead.eval.fid import inception_features

        model = nets.get("fid")
        fid_feats["pred"].append(inception_features(model, ps, batch_size, device=device))
        fid_feats["ref"].append(inception_features(model, rs, batch_size, device=device))
    if "fvd" in metrics:
        from talkinghead.eval.fvd import i3d_features

        model = nets.get("fvd")
        fvd_feats["pred"].append(i3d_features(model, pred, device=device))
        fvd_feats["ref"].append(i3d_features(model, ref, device=device))

    if "lse" in metrics or "csim" in metrics:
        pred_track = tracker(pred, f"{pair.pred}")
        if "lse" in metrics:
            from talkinghead.eval.sync import lse
            from talkinghead.eval.video import resample_indices

            audio, audio_path = _audio_for_lse(pair)
            sync_idx = resample_indices(len(pred), pred_v.fps)
            sync_crops = face_mod.syncnet_crops(pred[sync_idx], pred_track.take(sync_idx))
            try:
                score = lse(nets.get("lse"), sync_crops, audio, batch_size=20, device=device)
            except ValueError as e:  # too short to score
                raise MediaError(f"{pair.pred}: {e}") from None
            s["lse_d"], s["lse_c"], s["av_offset"] = score.lse_d, score.lse_c, float(score.offset)
            row.audio = str(audio_path)
        if "csim" in metrics:
            from talkinghead.eval.identity import csim

            embed = nets.get("csim")
            if pair.source is not None:
                ident = read_video(pair.source, max_frames=1).frames[:1]
                row.source = str(pair.source)
                what = str(pair.source)
            else:
                ident, what = ref[:1], f"{pair.ref} frame 0"
            ident_track = tracker(ident, what)
            src_face = face_mod.arcface_align(ident[0], ident_track.points[0])
            faces = np.stack(
                [
                    face_mod.arcface_align(f, p)
                    for f, p in zip(ps, pred_track.points[idx], strict=True)
                ]
            )
            s["csim"] = csim(embed(src_face[None])[0], embed(faces))
    return row
