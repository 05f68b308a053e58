"""Training Ditto's motion model (LMDM / MotionDiT) on prepared data, with `accelerate`.

Data: the output of `talkinghead prepare-data` (or any release-style ``data_list.json``:
a list of ``{"frame_num", "mtn", "aud", "emo", "eye_open", "eye_ball"}`` with .npy paths,
absolute or relative to the json's folder; see `talkinghead.methods.ditto.data`).

One training sample, as in the release's training branch:

* a window of ``seq_frames`` (80) consecutive frames starting at f >= 1 of a video:
  the target motion x_0 ``mtn[f:f+L, :265]``;
* the conditioning frame: ``mtn[f-1]``, the frame before the window (`use_last_frame`),
  else a random frame of the same video;
* the per-frame condition, concatenated in this order (the inference pipeline's,
  `talkinghead.methods.ditto.motion.conditions`): HuBERT ``aud[f:f+L]``, the window's mean emotion
  repeated (`use_emo`), ``eye_open`` and ``eye_ball`` per frame (`use_eye_open`,
  `use_eye_ball`), the canonical keypoints ``mtn[r, 265:328]`` of a random frame r
  of the video as the shape code (`use_sc`), and that same frame's MediaPipe landmarks
  ``lmk[r]`` (478 x 3, flattened; `use_lmk`). ``audio_feat_dim`` must equal the sum;
* with `use_cond_end`, also the clip-end frame ``mtn[f+L]`` (``mtn[f+L-1]`` for the
  video's last window), as the release's dataset builds it; its trainer feeds it to no
  network input, and neither does this one.

Every window of every video (f = 1 .. frame_num - L) is visited once per epoch, in an
order shuffled per epoch from the seed.

Objective: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps with t uniform in [0, 1000) on the
release's cosine schedule; the network predicts x_0 with the condition replaced by the
learned null tokens for a random `cond_drop_prob` (0.2) of the samples, which is what
classifier-free guidance needs at inference. The loss (L2 by default) is summed over the
motion's parts (scale, pitch, yaw, roll, t, exp; each part's mean, times its weight) of

* P: the x_0 reconstruction,
* V, A: the first and second temporal differences (velocity, acceleration), which keep
  the motion smooth,
* L (`use_last_frame_loss`): the first predicted frame against the conditioning frame,
  which keeps consecutive windows continuous,
* R (`use_reg_loss`): ``REG_WEIGHT`` (1e-4) times the mean absolute prediction, for
  every part but the scale, weighted neither by the part nor by `dim_ws_npy` (the
  release's regulariser).

The optimiser is AdamW (lr 1e-4, weight decay 0.02) or, with ``optimizer="adan"``, the
release's Adan (from `pytorch-optimizer`). Gradients are clipped (`grad_clip`), an
exponential moving average of the weights (`ema_decay`, with warm-up) is kept and
exported, and the precision is accelerate's (``accelerate launch --mixed_precision`` or
``accelerate config``) unless `mixed_precision` names one. The release's
``mtn_mean_var_npy`` (targets normalised by mean/variance) and ``dim_ws_npy``
(per-dimension loss weights) are options; the data are read through a bounded pool of
memory maps (`max_open_files`), so any number of videos loads.

Output directory::

    OUT_DIR/
      train_config.json          the configuration (checked on resume)
      train_log.jsonl            one line per `log_every` steps (losses, lr, grad norm, samples/s)
      logs/                      TensorBoard events (when tensorboard is installed)
      state/step_00001234/       accelerate state: model, optimiser, EMA, RNGs, + trainer.json
                                 and rank_state_{rank}.pt (each rank's own random streams)
      ckpts/lmdm_e0050_s00001234.pth   exported weights (EMA), the release's container
      export/lmdm_v0.4_hubert.pth      the latest export, named as the release's file
      export/talkinghead.json          {"lmdm": {...}} when the network differs from the release's
      samples/step_00001234.npz        validation samples (`sample_every`): the sampled and the true
                                 motion of a held-out video's start, per-part L1 errors
      samples/step_00001234.mp4        with `sample_renderer`: that start rendered by `generate`

Running again with the same OUT_DIR resumes from the latest state (optimiser, EMA, step,
RNG and the position in the epoch).

Validation samples (`talkinghead.training.samples`): `holdout` videos are kept out of
training (listed as ``holdout_videos`` in train_config.json; a resume keeps them) and
every `sample_every` steps the main process samples the motion of the first
`sample_seconds` of the first one from its stored conditions with the EMA weights, through
the method's clip-wise DDIM windows (`sample_motion`), off the training RNG streams.
With `sample_renderer` (a release folder), each sample is also a video (`_video_render`):
``python -m talkinghead generate`` in a subprocess, so training never imports the
pipeline, on a temporary release holding the EMA weights, with the held-out video's
first frame as the source and its first `sample_seconds` of speech.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from talkinghead.errors import CheckpointError, TalkingHeadError
from talkinghead.methods.ditto.checkpoints import (
    CONDITION_FLAGS,
    SIDECAR_CONDITIONS,
    SIDECAR_NAME,
)
from talkinghead.models.registry import OFFICIAL_NETWORKS
from talkinghead.timebase import FPS, SAMPLE_RATE
from talkinghead.training.arrays import NpyPool
from talkinghead.training.config_checks import check_train_fields
from talkinghead.training.distributed import (
    build_accelerator,
    end_training,
    load_rank_state,
    resolve_mixed_precision,
    save_rank_state,
)
from talkinghead.training.ema import EMA
from talkinghead.training.loss_log import LossLog, format_line
from talkinghead.training.samples import (
    DEFAULT_SAMPLE_SECONDS,
    DEFAULT_SAMPLE_STEPS,
    PeriodicSamples,
    choose_holdout,
    resolve_sample_every,
)

log = logging.getLogger(__name__)

CONFIG_NAME = "train_config.json"
LOG_NAME = "train_log.jsonl"
STATE_DIR = "state"
TRAINER_STATE = "trainer.json"
EXPORT_DIR = "export"
LMDM_CHECKPOINT = OFFICIAL_NETWORKS["lmdm"].checkpoint_name  # the export is named as the release's
PRELOAD_NAME = "data_preload.npz"
SC_DIM = 63
LMK_SHAPE = (478, 3)  # MediaPipe's face mesh with irises, normalised x, y, z
# The release's regulariser: weight per part of mean |x_0 prediction|; the scale has none.
REG_WEIGHT = 1e-4
UNREGULARISED_PARTS = ("scale",)

ProgressCallback = Callable[[int, int, float], None]


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class MotionTrainConfig:
    """Options of `talkinghead train-motion`; defaults are the release's v0.4 model.

    The `use_*` flags, `audio_feat_dim`, `motion_feat_dim`, `seq_frames`, `batch_size`,
    `epochs`, `save_ckpt_freq`, `lr` and `data_preload` are the release's options (its
    README enables `use_sc`, `use_last_frame(_loss)`, `use_emo` and `use_eye_*`, which
    the released network was trained with; `use_lmk`, `use_cond_end` and `use_reg_loss`
    are off there and here).
    """

    # condition layout and data
    use_sc: bool = True
    use_last_frame: bool = True
    use_last_frame_loss: bool = True
    use_emo: bool = True
    use_eye_open: bool = True
    use_eye_ball: bool = True
    use_lmk: bool = False  # + a random frame's 478x3 MediaPipe landmarks (data key "lmk")
    use_cond_end: bool = False  # items also carry the clip-end frame (unused by the network)
    audio_feat_dim: int | None = 1103  # None: from the data and the flags
    motion_feat_dim: int = 265
    seq_frames: int = 80
    data_preload: bool = False  # load every array into memory (cached in data_preload.npz)
    data_preload_path: str | None = None  # default DATA_DIR/data_preload.npz

    # network (LMDMConfig fields; the release's values)
    latent_dim: int = 512
    ff_size: int = 1024
    num_layers: int = 8
    num_heads: int = 8
    num_cond_layers: int = 2
    dropout: float = 0.1

    # optimisation
    epochs: int = 1000
    batch_size: int = 512
    lr: float = 1e-4
    weight_decay: float = 0.02
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    cond_drop_prob: float = 0.2
    loss_type: str = "l2"  # "l2" | "l1"
    velocity_weight: float = 1.0
    acceleration_weight: float = 1.0
    last_frame_weight: float = 1.0
    use_reg_loss: bool = False  # + REG_WEIGHT * mean |prediction| per part but the scale
    part_weights: Mapping[str, float] = field(default_factory=dict)  # motion field -> weight
    # Release options: [2, motion_feat_dim] mean/variance the targets are normalised by
    # (x - mean) / sqrt(var), and [motion_feat_dim] per-dimension loss weights.
    mtn_mean_var_npy: str | None = None
    dim_ws_npy: str | None = None
    optimizer: str = "adamw"  # "adamw" | "adan" (the release's; pytorch-optimizer's Adan)
    ema_decay: float = 0.9999  # 0 disables; exports then hold the raw weights
    ema_warmup: bool = True  # decay min(decay, (1+n)/(10+n)): short runs export trained weights
    mixed_precision: str | None = (
        None  # None: accelerate's (launch flag / config), else no|fp16|bf16
    )
    max_open_files: int = 64  # memory-mapped arrays open at once per process
    num_workers: int = 0
    seed: int = 0
    init_checkpoint: str | None = None  # start from these LMDM weights (fine-tuning)

    # bookkeeping
    save_ckpt_freq: int = 50  # epochs between saves (state + exported weights)
    save_every_steps: int = 0  # also save every N steps (0: only by epoch)
    keep_states: int = 2  # training states kept on disk (exports are all kept)
    log_every: int = 10  # steps between loss lines (console, train_log.jsonl, TensorBoard)
    max_steps: int = 0  # stop after this many steps in all (0: run every epoch)
    tensorboard: bool = True

    # validation samples (`talkinghead.training.samples`)
    preset: str = "release"  # the preset these defaults came from (sets sample_every's)
    sample_every: int | None = None  # None: 0 (off) for the tiny preset, else 5000
    holdout: int | None = None  # videos kept out; None: 1 when sampling and >= 2 videos
    sample_seconds: float = DEFAULT_SAMPLE_SECONDS  # motion sampled from a video's start
    sample_steps: int = DEFAULT_SAMPLE_STEPS  # DDIM steps of a sample
    sample_renderer: str | None = None  # a Ditto release folder: samples also rendered as .mp4

    def __post_init__(self) -> None:
        check_train_fields(self)  # lr, seed, counts, decay, precision, samples...
        if self.loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be 'l1' or 'l2', got {self.loss_type!r}")
        if self.optimizer not in ("adamw", "adan"):
            raise ValueError(f"optimizer must be adamw or adan, got {self.optimizer!r}")
        if not 0 <= self.cond_drop_prob < 1:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        for name in ("keep_states", "max_open_files"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for part, weight in self.part_weights.items():
            if not 0 <= weight < float("inf"):
                raise ValueError(f"part weight {part}={weight}: a loss weight must be >= 0")

    def lmdm_overrides(self, audio_feat_dim: int) -> dict[str, Any]:
        """LMDM constructor kwargs that differ from the release's network."""
        from talkinghead.models.lmdm import LMDMConfig

        wanted = {
            "motion_feat_dim": self.motion_feat_dim,
            "audio_feat_dim": audio_feat_dim,
            "seq_frames": self.seq_frames,
            "latent_dim": self.latent_dim,
            "ff_size": self.ff_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_cond_layers": self.num_cond_layers,
            "dropout": self.dropout,
        }
        release = asdict(LMDMConfig())
        return {k: v for k, v in wanted.items() if release[k] != v}

    def condition_overrides(self) -> dict[str, bool]:
        """The condition flags that differ from the release's layout (use_lmk off, the
        others on): the sidecar's ``conditions`` entry, which generate builds them from."""
        release = {k: k != "use_lmk" for k in CONDITION_FLAGS}
        return {k: getattr(self, k) for k in CONDITION_FLAGS if getattr(self, k) != release[k]}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["part_weights"] = dict(self.part_weights)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MotionTrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Fields that fix the network or the data layout: a resumed run must keep them.
STRUCTURAL_FIELDS = (
    "use_sc",
    "use_emo",
    "use_eye_open",
    "use_eye_ball",
    "use_lmk",
    "audio_feat_dim",
    "motion_feat_dim",
    "seq_frames",
    "latent_dim",
    "ff_size",
    "num_layers",
    "num_heads",
    "num_cond_layers",
    "mtn_mean_var_npy",
)

PRESETS: dict[str, MotionTrainConfig] = {
    "release": MotionTrainConfig(),
    # A few-second CPU run: a small network on short windows (tests, smoke runs). 16 frames:
    # generation overlaps consecutive windows by 10 frames, so windows must be longer.
    "tiny": MotionTrainConfig(
        preset="tiny",
        audio_feat_dim=None,
        seq_frames=16,
        latent_dim=32,
        ff_size=64,
        num_layers=1,
        num_heads=2,
        num_cond_layers=1,
        dropout=0.0,
        epochs=20,
        batch_size=16,
        lr=2e-3,
        weight_decay=0.0,
        ema_decay=0.9,
        save_ckpt_freq=10,
        log_every=10,
    ),
}


# --- data -----------------------------------------------------------------------------------


@dataclass
class VideoArrays:
    """One prepared video: arrays by data_list key, in memory when preloaded, else read
    through a shared `NpyPool` (a bounded number of memory maps open, whatever the count
    of videos)."""

    name: str
    frame_num: int
    paths: dict[str, Path]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    pool: NpyPool | None = None

    def _pool(self) -> NpyPool:
        if self.pool is None:
            self.pool = NpyPool()
        return self.pool

    def get(self, key: str) -> np.ndarray:
        """The whole array (in memory when preloaded; else a copy read through the pool)."""
        if key in self.arrays:
            return self.arrays[key]
        return self._pool().rows(self.paths[key], dtype=None)

    def rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """float32 copy of rows [start, stop)."""
        if key in self.arrays:
            return np.array(self.arrays[key][start:stop], np.float32)
        return self._pool().rows(self.paths[key], start, stop)

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self.arrays:
            return tuple(self.arrays[key].shape)
        return self._pool().shape(self.paths[key])


def _keys(cfg: MotionTrainConfig) -> list[str]:
    keys = ["mtn", "aud"]
    if cfg.use_emo:
        keys.append("emo")
    if cfg.use_eye_open:
        keys.append("eye_open")
    if cfg.use_eye_ball:
        keys.append("eye_ball")
    if cfg.use_lmk:
        keys.append("lmk")
    return keys


def find_data_list(data: str | os.PathLike) -> Path:
    """DATA_DIR (holding data_list.json) or the json itself."""
    path = Path(data)
    if path.is_dir():
        path = path / "data_list.json"
    if not path.is_file():
        raise TalkingHeadError(f"{path}: data list not found (run `talkinghead prepare-data`)")
    return path


def load_data_list(data: str | os.PathLike, cfg: MotionTrainConfig) -> list[VideoArrays]:
    """The videos of a data_list.json long enough for one window (the others are dropped)."""
    path = find_data_list(data)
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TalkingHeadError(f"{path}: unreadable data list ({exc})") from None
    if not isinstance(entries, list):
        raise TalkingHeadError(f"{path}: expected a JSON list of videos")
    keys = _keys(cfg)
    pool = NpyPool(cfg.max_open_files)  # one pool for all videos: the open-file bound is global
    videos, short = [], 0
    for i, e in enumerate(entries):
        missing = [k for k in (*keys, "frame_num") if k not in e]
        if missing:
            hint = (
                " (use_lmk needs MediaPipe landmarks: run `talkinghead prepare-data --landmarks`)"
                if "lmk" in missing
                else ""
            )
            raise TalkingHeadError(f"{path}: entry {i} lacks {', '.join(missing)}{hint}")
        paths = {k: Path(e[k]) if Path(e[k]).is_absolute() else path.parent / e[k] for k in keys}
        n = int(e["frame_num"])
        if n < cfg.seq_frames + 1:  # a window needs the frame before it
            short += 1
            continue
        videos.append(VideoArrays(str(e.get("name", paths["mtn"].stem)), n, paths, pool=pool))
    if short:
        log.warning(
            "%s: %d video(s) shorter than %d frames skipped", path, short, cfg.seq_frames + 1
        )
    if not videos:
        raise TalkingHeadError(
            f"{path}: no video with at least {cfg.seq_frames + 1} frames to train on"
        )
    return videos


def preload(videos: Sequence[VideoArrays], cfg: MotionTrainConfig, path: Path) -> None:
    """Load every array into memory, from (or into) one .npz cache keyed by the data list."""
    keys = _keys(cfg)
    digest = hashlib.sha1(
        json.dumps(
            [[v.name, v.frame_num, {k: str(v.paths[k]) for k in keys}] for v in videos]
        ).encode()
    ).hexdigest()
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["digest"]) == digest:
                    offsets = z["offsets"]
                    for i, v in enumerate(videos):
                        a, b = int(offsets[i]), int(offsets[i + 1])
                        v.arrays = {k: z[k][a:b] for k in keys}
                    return
            log.info("%s is for other data; rebuilding it", path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable %s (%s)", path, exc)
    for v in videos:
        v.arrays = {k: np.array(v.get(k)[: v.frame_num], np.float32) for k in keys}
    offsets = np.cumsum([0] + [v.frame_num for v in videos])
    payload = {k: np.concatenate([v.arrays[k] for v in videos]) for k in keys}
    tmp = path.with_name(f".{path.name}.tmp.npz")
    try:
        np.savez(tmp, digest=np.array(digest), offsets=offsets, **payload)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write the preload cache %s (%s)", path, exc)


class MotionWindowDataset(torch.utils.data.Dataset):
    """Every (video, start frame) window; items are (x_0 [L, D], cond_frame [D], cond [L, C]),
    plus the clip-end frame [D] with `use_cond_end`."""

    def __init__(self, videos: Sequence[VideoArrays], cfg: MotionTrainConfig) -> None:
        self.videos = list(videos)
        self.cfg = cfg
        self.seed = cfg.seed
        L = cfg.seq_frames
        self.windows = np.array(
            [(vi, f) for vi, v in enumerate(self.videos) for f in range(1, v.frame_num - L + 1)],
            dtype=np.int64,
        ).reshape(-1, 2)
        first = self.videos[0]
        mtn_dim = first.shape("mtn")[1]
        need = cfg.motion_feat_dim + (SC_DIM if cfg.use_sc else 0)
        if mtn_dim < need:
            raise TalkingHeadError(
                f"{first.paths['mtn']}: motion rows have {mtn_dim} values, need {need} "
                f"(motion_feat_dim {cfg.motion_feat_dim}{' + 63 keypoints for use_sc' if cfg.use_sc else ''})"
            )
        if cfg.use_lmk and first.shape("lmk")[1:] != LMK_SHAPE:
            raise TalkingHeadError(
                f"{first.paths['lmk']}: landmarks of shape {first.shape('lmk')}, expected "
                f"[frames, {LMK_SHAPE[0]}, {LMK_SHAPE[1]}] (MediaPipe's face mesh with irises)"
            )
        self.blocks = self._blocks(first)
        self.cond_dim = sum(n for _, n in self.blocks)
        self.mtn_mean_std = load_mean_std(cfg.mtn_mean_var_npy, cfg.motion_feat_dim)

    def _blocks(self, v: VideoArrays) -> list[tuple[str, int]]:
        cfg = self.cfg
        blocks = [("aud", v.shape("aud")[1])]
        for key, on in (("emo", cfg.use_emo), ("eye_open", cfg.use_eye_open)):
            if on:
                blocks.append((key, v.shape(key)[1]))
        if cfg.use_eye_ball:
            blocks.append(("eye_ball", int(np.prod(v.shape("eye_ball")[1:]))))
        if cfg.use_sc:
            blocks.append(("sc", SC_DIM))
        if cfg.use_lmk:
            blocks.append(("lmk", int(np.prod(LMK_SHAPE))))
        return blocks

    def describe_condition(self) -> str:
        return " + ".join(f"{n} ({k})" for k, n in self.blocks) + f" = {self.cond_dim}"

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        cfg = self.cfg
        # `EpochShuffle` passes epoch * len + window; plain indices are epoch 0.
        epoch, index = divmod(int(index), len(self))
        # Random frame choices from (seed, epoch, window): the same in any worker or resumed run.
        rng = np.random.default_rng((self.seed, epoch, index))
        vi, f = (int(x) for x in self.windows[index])
        v = self.videos[vi]
        L, D = cfg.seq_frames, cfg.motion_feat_dim
        x0 = v.rows("mtn", f, f + L)[:, :D]
        ref = f - 1 if cfg.use_last_frame else int(rng.integers(v.frame_num))
        cond_frame = v.rows("mtn", ref, ref + 1)[0, :D]
        frames = [x0, cond_frame]
        if cfg.use_cond_end:  # the frame after the window; the last window ends the video
            end = f + L if f + L < v.frame_num else f + L - 1
            frames.append(v.rows("mtn", end, end + 1)[0, :D])
        frames = [self.normalise(m) for m in frames]
        # One random frame gives both the shape code and the landmarks, as in the release.
        r = int(rng.integers(v.frame_num)) if cfg.use_sc or cfg.use_lmk else 0
        cond = self.condition(v, f, L, r)
        motion = [torch.from_numpy(np.ascontiguousarray(m, np.float32)) for m in frames]
        return (motion[0], motion[1], torch.from_numpy(cond), *motion[2:])

    def normalise(self, motion: np.ndarray) -> np.ndarray:
        """Motion in the network's space: the release normalises every motion frame."""
        if self.mtn_mean_std is None:
            return motion
        mean, std = self.mtn_mean_std
        return (motion - mean) / std

    def denormalise(self, motion: np.ndarray) -> np.ndarray:
        """Network-space motion back in the data's space (`normalise` undone)."""
        if self.mtn_mean_std is None:
            return motion
        mean, std = self.mtn_mean_std
        return motion * std + mean

    def condition(self, v: VideoArrays, f: int, length: int, shape_frame: int) -> np.ndarray:
        """[length, cond_dim]: the condition of frames [f, f + length) of `v`, with the shape
        code and landmarks of frame `shape_frame`."""
        cfg, L, D = self.cfg, length, self.cfg.motion_feat_dim
        parts = [v.rows("aud", f, f + L)]
        if cfg.use_emo:
            emo = v.rows("emo", f, f + L).mean(0)
            parts.append(np.broadcast_to(emo, (L, emo.shape[0])))
        if cfg.use_eye_open:
            parts.append(v.rows("eye_open", f, f + L))
        if cfg.use_eye_ball:
            parts.append(v.rows("eye_ball", f, f + L).reshape(L, -1))
        r = shape_frame
        if cfg.use_sc:
            sc = v.rows("mtn", r, r + 1)[0, D : D + SC_DIM]
            parts.append(np.broadcast_to(sc, (L, SC_DIM)))
        if cfg.use_lmk:
            lmk = v.rows("lmk", r, r + 1).reshape(-1)
            parts.append(np.broadcast_to(lmk, (L, lmk.shape[0])))
        return np.concatenate(parts, axis=1)


def load_mean_std(path: str | None, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) [dim] each from the release's ``mtn_mean_var_npy`` ([2, >= dim]: mean, var)."""
    if not path:
        return None
    try:
        mv = np.load(path).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise TalkingHeadError(f"{path}: unreadable mean/variance array ({exc})") from None
    if mv.ndim != 2 or mv.shape[0] != 2 or mv.shape[1] < dim:
        raise TalkingHeadError(
            f"{path}: mean/variance array has shape {mv.shape}, expected [2, {dim}]"
        )
    var = mv[1, :dim].copy()
    var[var == 0] = 1e-8  # a constant dimension would divide by zero
    return mv[0, :dim], np.sqrt(var)


def load_dim_weights(path: str | None, dim: int) -> np.ndarray | None:
    """The release's ``dim_ws_npy``: one loss weight per motion dimension."""
    if not path:
        return None
    try:
        w = np.load(path).astype(np.float32).reshape(-1)
    except (OSError, ValueError) as exc:
        raise TalkingHeadError(f"{path}: unreadable dimension weights ({exc})") from None
    if w.shape[0] < dim:
        raise TalkingHeadError(f"{path}: {w.shape[0]} dimension weights, expected {dim}")
    return w[:dim]


def compute_mean_var(videos: Sequence[VideoArrays], dim: int) -> np.ndarray:
    """[2, dim] mean and variance of the motion over every frame (for ``mtn_mean_var_npy``)."""
    total = np.zeros(dim, np.float64)
    sq = np.zeros(dim, np.float64)
    n = 0
    for v in videos:
        m = v.rows("mtn", 0, v.frame_num)[:, :dim].astype(np.float64)
        total += m.sum(0)
        sq += (m * m).sum(0)
        n += m.shape[0]
    mean = total / max(n, 1)
    return np.stack([mean, np.maximum(sq / max(n, 1) - mean * mean, 0.0)]).astype(np.float32)


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A permutation per epoch drawn from (seed, epoch): a resumed run sees the same order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        # The epoch rides along in the index, so the dataset's own draws depend on it.
        offset = self.epoch * self.size
        return iter((torch.randperm(self.size, generator=g) + offset).tolist())


# --- loss -----------------------------------------------------------------------------------


def motion_parts(dim: int) -> list[tuple[str, slice]]:
    """The parts the loss is averaged over: the motion fields, or one part for other dims."""
    from talkinghead.methods.ditto.motion.format import MOTION_LAYOUT

    if dim == MOTION_LAYOUT.dim:
        return [(f.name, f.slice) for f in MOTION_LAYOUT.fields]
    return [("mtn", slice(0, dim))]


def motion_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    cond_frame: torch.Tensor,
    cfg: MotionTrainConfig,
    dim_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum over motion parts of the P/V/A(/L/R) terms; also the terms by name.

    `dim_weights` [D] (``dim_ws_npy``) scales each dimension's error before the means.
    R (`use_reg_loss`) is ``REG_WEIGHT * mean(|pred|)`` of each part but the scale, as the
    release adds it: an L1 pull of the prediction towards zero, whatever the loss type,
    and left out of the part and dimension weights.
    """
    base = nn.functional.mse_loss if cfg.loss_type == "l2" else nn.functional.l1_loss
    terms: dict[str, torch.Tensor] = {}
    total = pred.new_zeros(())
    for name, sl in motion_parts(pred.shape[-1]):
        w = float(cfg.part_weights.get(name, 1.0))
        dw = None if dim_weights is None else dim_weights[sl]

        def fn(a: torch.Tensor, b: torch.Tensor, dw: torch.Tensor | None = dw) -> torch.Tensor:
            if dw is None:
                return base(a, b)
            return (base(a, b, reduction="none") * dw).mean()

        p, g = pred[..., sl], target[..., sl]
        pv, gv = p[:, 1:] - p[:, :-1], g[:, 1:] - g[:, :-1]
        part = {"P": fn(p, g)}
        if cfg.velocity_weight:
            part["V"] = fn(pv, gv) * cfg.velocity_weight
        if cfg.acceleration_weight and p.shape[1] > 2:
            part["A"] = fn(pv[:, 1:] - pv[:, :-1], gv[:, 1:] - gv[:, :-1]) * cfg.acceleration_weight
        if cfg.use_last_frame_loss and cfg.last_frame_weight:
            part["L"] = fn(p[:, 0], cond_frame[:, sl]) * cfg.last_frame_weight
        for k, v in part.items():
            terms[f"{name}_{k}"] = v * w
            total = total + v * w
        if cfg.use_reg_loss and name not in UNREGULARISED_PARTS:
            reg = p.abs().mean() * REG_WEIGHT
            terms[f"{name}_R"] = reg
            total = total + reg
    return total, terms


# --- checkpoints ----------------------------------------------------------------------------


def write_sidecar(
    directory: Path, lmdm_kwargs: Mapping[str, Any], conditions: Mapping[str, bool] | None = None
) -> Path | None:
    """export/talkinghead.json = {"lmdm": kwargs, "conditions": flags}, each only when it
    differs from the release's (`MotionTrainConfig.condition_overrides`); no file for the
    release's network and layout."""
    path = directory / SIDECAR_NAME
    data: dict[str, Any] = {}
    if lmdm_kwargs:
        data["lmdm"] = dict(lmdm_kwargs)
    if conditions:
        data[SIDECAR_CONDITIONS] = dict(conditions)
    if not data:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    path.write_text(json.dumps(data, indent=1))
    return path


def export_checkpoint(
    decoder_state: Mapping[str, torch.Tensor], lmdm_kwargs: Mapping[str, Any], path: Path
) -> Path:
    """Write MotionDecoder weights in the release's ``{"model_state_dict": ...}`` container."""
    from talkinghead.models import save_official
    from talkinghead.models.lmdm import LMDM

    # Building the module draws initial weights: keep that off the training RNG stream.
    with torch.random.fork_rng(devices=[]):
        net = LMDM(**lmdm_kwargs)
    net.model.load_state_dict(decoder_state)
    save_official(net, "lmdm", path)
    return path


def install_checkpoint(
    run_or_checkpoint: str | os.PathLike, checkpoints_root: str | os.PathLike
) -> Path:
    """Put a trained LMDM where `talkinghead generate --checkpoints ROOT` reads it.

    Copies the export (``OUT_DIR/export/lmdm_v0.4_hubert.pth`` or a given .pth) to
    ``ROOT/ditto_pytorch/models/lmdm_v0.4_hubert.pth`` (the file it replaces is kept once
    as ``.orig``) and sets or clears the ``lmdm`` and ``conditions`` entries of the sidecar
    there, keeping the other networks' entries.
    """
    name = LMDM_CHECKPOINT
    src = Path(run_or_checkpoint)
    sidecar_src = None
    if src.is_dir():
        export = src / EXPORT_DIR if (src / EXPORT_DIR).is_dir() else src
        src, sidecar_src = export / name, export / SIDECAR_NAME
    elif src.with_name(SIDECAR_NAME).is_file():
        sidecar_src = src.with_name(SIDECAR_NAME)
    if not src.is_file():
        raise CheckpointError(f"{src}: trained LMDM checkpoint not found")
    trained: dict[str, Any] = {}
    if sidecar_src is not None and sidecar_src.is_file():
        trained = json.loads(sidecar_src.read_text())
    root = Path(checkpoints_root)
    models = root / "ditto_pytorch" / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / name
    backup = target.with_name(target.name + ".orig")
    if target.is_file() and not backup.exists():
        shutil.copy2(target, backup)
    shutil.copy2(src, target)
    sidecar = models / SIDECAR_NAME
    data = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    for entry in ("lmdm", SIDECAR_CONDITIONS):  # the motion model's; the renderer's stay
        if trained.get(entry):
            data[entry] = trained[entry]
        else:
            data.pop(entry, None)
    if data:
        sidecar.write_text(json.dumps(data, indent=1))
    elif sidecar.is_file():
        sidecar.unlink()
    return target


def _state_dirs(out_dir: Path) -> list[Path]:
    """Complete training states (trainer.json is written last), oldest first."""
    root = out_dir / STATE_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / TRAINER_STATE).is_file())


# --- validation samples ---------------------------------------------------------------------

SAMPLE_SUFFIX = ".npz"


def sample_length(video: VideoArrays, seconds: float) -> int:
    """Frames of a sample: the first `seconds` of the video (all of a shorter one)."""
    return max(1, min(video.frame_num, round(seconds * FPS)))


def sample_motion(
    net: nn.Module,
    dataset: MotionWindowDataset,
    video: VideoArrays,
    frames: int,
    *,
    steps: int = DEFAULT_SAMPLE_STEPS,
    seed: int = 0,
) -> np.ndarray:
    """[frames, D] motion for the first `frames` frames of `video`, sampled by `net` (an
    `LMDM`) from the video's stored conditions the way generate samples: clip-wise DDIM
    windows (`ClipwiseGenerator`), the first one conditioned on the video's first frame,
    as generate conditions on the source's. The noise comes from `seed` alone."""
    from talkinghead.diffusion import DDIMSampler
    from talkinghead.methods.ditto.motion.clipwise import ClipwiseConfig, ClipwiseGenerator

    D = dataset.cfg.motion_feat_dim
    device = next(net.parameters()).device
    # The shape code and landmarks of the first frame, the one generate would animate.
    cond = torch.from_numpy(np.ascontiguousarray(dataset.condition(video, 0, frames, 0)))
    source = dataset.normalise(video.rows("mtn", 0, 1)[0, :D])
    ddim = DDIMSampler(num_steps=steps)

    def window(cond_frame: torch.Tensor, cond: torch.Tensor, generator) -> torch.Tensor:
        return ddim(net, cond_frame.to(device), cond.to(device), generator=generator).cpu()

    L = int(net.seq_frames)
    # The release's offline schedule; a short-window (tiny) model needs a shorter overlap.
    clipwise = ClipwiseConfig(seq_frames=L, overlap=min(ClipwiseConfig().overlap, L - 1))
    generator = ClipwiseGenerator(window, source, clipwise)
    motion = generator.generate(cond, generator=torch.Generator().manual_seed(seed))
    return dataset.denormalise(motion.numpy().astype(np.float32))


def sample_errors(sampled: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Mean absolute error per motion part (``l1_<part>``) and over all of it (``l1``)."""
    diff = np.abs(sampled - true)
    errors = {"l1": float(diff.mean())}
    errors.update(
        (f"l1_{name}", float(diff[:, sl].mean())) for name, sl in motion_parts(diff.shape[1])
    )
    return errors


def _motion_render(
    build_net: Callable[[], nn.Module],
    weights: Callable[[], Mapping[str, torch.Tensor]],
    dataset: MotionWindowDataset,
    video: VideoArrays,
    cfg: MotionTrainConfig,
    device: torch.device,
    errors_out: dict[str, float],
) -> Callable[[int, Path], None]:
    """A `PeriodicSamples` render: the sampled and the true motion of `video`'s first
    `sample_seconds`, and their per-part L1 errors (also left in `errors_out`), as .npz."""
    net: nn.Module | None = None

    def render(step: int, path: Path) -> None:
        nonlocal net
        errors_out.clear()
        frames = sample_length(video, cfg.sample_seconds)
        # Off the training RNG streams: a run with samples trains exactly as one without.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if net is None:
                net = build_net().to(device).eval()
            net.model.load_state_dict(weights())
            sampled = sample_motion(
                net, dataset, video, frames, steps=cfg.sample_steps, seed=cfg.seed
            )
        true = video.rows("mtn", 0, frames)[:, : cfg.motion_feat_dim]
        errors = sample_errors(sampled, true)
        parts = [k.removeprefix("l1_") for k in errors if k != "l1"]
        np.savez(
            path,
            motion=sampled,
            true_motion=true,
            parts=np.array(parts),
            l1=np.array([errors[f"l1_{p}"] for p in parts], np.float32),
            video=np.array(video.name),
            step=np.array(step),
        )
        errors_out.update(errors)

    return render


def _log_sample(logger: LossLog, step: int, errors: Mapping[str, float]) -> None:
    """A ``sample/...`` line of its own: train_log.jsonl, TensorBoard and the console."""
    values = {f"sample/{k}": v for k, v in errors.items()}
    if not logger.enabled or not values:
        return
    with open(logger.path, "a") as f:
        f.write(json.dumps({"step": step, **{k: round(v, 7) for k, v in values.items()}}) + "\n")
    if logger.tb is not None:
        for k, v in values.items():
            logger.tb.add_scalar(k, v, step)
        logger.tb.flush()
    if logger.echo is not None:
        logger.echo(format_line(step, values, logger.total_steps))


# --- video samples (`sample_renderer`) ------------------------------------------------------

SAMPLE_VIDEO_SUFFIX = ".mp4"
# Under `accelerate launch` the other ranks wait at a barrier while the main one renders;
# this stays well inside the 30 min collective timeout. A 2 s preview takes seconds on a
# GPU, a minute or two on a CPU.
SAMPLE_RENDER_TIMEOUT = 600.0
RENDER_LOG_CHARS = 4000  # tail of generate's stderr kept in the log when it fails


def check_sample_renderer(path: str | os.PathLike) -> Path:
    """The root of the release folder `sample_renderer` names (as `generate --checkpoints`
    takes), or a one-line `CheckpointError`."""
    from talkinghead.methods.ditto.checkpoints import ReleaseCheckpoints

    given = Path(path).expanduser()
    if not given.is_dir():
        raise CheckpointError(
            f"--sample-renderer {given}: folder not found; give a Ditto release folder "
            "(the one `generate --checkpoints` takes)"
        )
    ckpt = ReleaseCheckpoints.from_root(given)
    missing = [p.name for p in ckpt.models.values() if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"--sample-renderer {given}: not a Ditto release folder (missing "
            f"{', '.join(missing)} under ditto_pytorch/models); give the folder "
            "`generate --checkpoints` takes"
        )
    return ckpt.root


def sample_source_video(data_list: Path, name: str) -> Path:
    """The original video of prepared video `name`: ``videos.NAME.source`` of the
    manifest.json prepare-data wrote beside `data_list`; a one-line error without one."""
    from talkinghead.methods.ditto.data import MANIFEST_NAME

    manifest = data_list.parent / MANIFEST_NAME
    try:
        source = json.loads(manifest.read_text())["videos"][name]["source"]
    except (OSError, ValueError, KeyError, TypeError):
        raise TalkingHeadError(
            f"--sample-renderer: {manifest} records no source video for {name!r}; "
            "use data from `talkinghead prepare-data` or drop --sample-renderer"
        ) from None
    path = Path(source)
    if not path.is_file():
        raise TalkingHeadError(
            f"--sample-renderer: {path} (the source of {name!r}) not found; "
            "put the video back or drop --sample-renderer"
        )
    return path


def _link_release(release: Path, into: Path) -> Path:
    """`into`: the release as symlinks, but for the motion model and the sidecar, which
    the install writes (through a symlink it would overwrite the release's own files).
    Returns `into`'s models folder."""
    from talkinghead.methods.ditto.checkpoints import PYTORCH_DIR

    models = into / PYTORCH_DIR / "models"
    models.mkdir(parents=True)
    own = {release / PYTORCH_DIR, release / PYTORCH_DIR / "models"}
    own |= {release / PYTORCH_DIR / "models" / n for n in (LMDM_CHECKPOINT, SIDECAR_NAME)}
    for folder in (release, release / PYTORCH_DIR, release / PYTORCH_DIR / "models"):
        for entry in folder.iterdir():
            if entry not in own:
                (into / entry.relative_to(release)).symlink_to(entry.resolve())
    sidecar = release / PYTORCH_DIR / "models" / SIDECAR_NAME
    if sidecar.is_file():
        shutil.copyfile(sidecar, models / SIDECAR_NAME)  # the other networks' sizes
    return models


def _video_render(
    weights: Callable[[], Mapping[str, torch.Tensor]],
    lmdm_kwargs: Mapping[str, Any],
    renderer: Path,
    source_video: Path,
    cfg: MotionTrainConfig,
    device: torch.device,
    work_dir: Path,
) -> Callable[[int, Path], None]:
    """A `PeriodicSamples` render: `generate` (a subprocess) on a temporary release
    holding the current weights, the first frame of `source_video` as the source (the
    frame the motion samples are conditioned on) and its first `sample_seconds` of
    speech. The temporary files live in `work_dir` and go afterwards."""

    def render(step: int, path: Path) -> None:
        import soundfile
        from PIL import Image

        from talkinghead.audio.io import load_audio
        from talkinghead.media.video import iter_video_frames

        with tempfile.TemporaryDirectory(prefix=".sample_render_", dir=work_dir) as tmp_name:
            tmp = Path(tmp_name)
            release = tmp / "release"
            _link_release(renderer, release)
            export = tmp / EXPORT_DIR
            export.mkdir()
            export_checkpoint(weights(), lmdm_kwargs, export / LMDM_CHECKPOINT)
            write_sidecar(export, lmdm_kwargs, cfg.condition_overrides())
            install_checkpoint(export, release)
            frame = next(iter(iter_video_frames(source_video, max_frames=1)))
            Image.fromarray(frame).save(tmp / "source.png")
            speech = load_audio(source_video, SAMPLE_RATE)
            speech = speech[: max(1, round(cfg.sample_seconds * SAMPLE_RATE))]
            soundfile.write(tmp / "speech.wav", speech, SAMPLE_RATE)
            command = [
                sys.executable, "-m", "talkinghead", "generate",
                "--checkpoints", str(release),
                "--source", str(tmp / "source.png"),
                "--audio", str(tmp / "speech.wav"),
                "--output", str(path),
                "--seed", "0",
                "--steps", str(cfg.sample_steps),
                "--device", str(device),
                "--no-download", "--no-cache", "--quiet",
            ]  # fmt: skip
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=SAMPLE_RENDER_TIMEOUT
                )
            except subprocess.TimeoutExpired as exc:
                stderr = exc.stderr or ""
                if isinstance(stderr, bytes):
                    stderr = stderr.decode(errors="replace")
                log.warning("step %d: generate's stderr:\n%s", step, stderr[-RENDER_LOG_CHARS:])
                raise RuntimeError(f"generate ran past {SAMPLE_RENDER_TIMEOUT:.0f} s") from None
            if done.returncode != 0:
                log.warning(
                    "step %d: generate's stderr:\n%s", step, done.stderr[-RENDER_LOG_CHARS:]
                )
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"generate exited with status {done.returncode}: {last}")

    return render


# --- training -------------------------------------------------------------------------------


def build_optimizer(params, cfg: MotionTrainConfig) -> torch.optim.Optimizer:
    """AdamW (torch), or Adan as the release trains with (the `pytorch-optimizer` package)."""
    if cfg.optimizer == "adan":
        try:
            from pytorch_optimizer import Adan
        except ImportError:
            raise TalkingHeadError(
                "--optimizer adan needs the pytorch-optimizer package: "
                "pip install 'talkinghead[train]'"
            ) from None
        return Adan(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


@dataclass
class TrainResult:
    out_dir: Path
    start_step: int  # step the run resumed from (0 for a fresh run)
    step: int
    epoch: int  # completed epochs (fractional progress is in the state)
    checkpoint: Path | None  # latest export (release container)
    sidecar: Path | None
    losses: list[float] = field(default_factory=list)  # per step, this run only
    seconds: float = 0.0
    is_main_process: bool = True  # False on the other processes of a distributed run
    holdout: list[str] = field(default_factory=list)  # videos kept out of training
    samples: list[Path] = field(default_factory=list)  # validation samples written (this run)


def _check_resume(out_dir: Path, cfg: MotionTrainConfig) -> None:
    path = out_dir / CONFIG_NAME
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    diff = [
        f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}"
        for k in STRUCTURAL_FIELDS
        if k in old and old[k] != getattr(cfg, k)
    ]
    if diff:
        raise TalkingHeadError(
            f"{out_dir}: holds a run with another network/data layout ({'; '.join(diff)}); "
            "use another OUT_DIR or the same options"
        )


def train_motion(
    data: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: MotionTrainConfig | None = None,
    *,
    resume: bool = True,
    progress: ProgressCallback | None = None,
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the LMDM on `data` (DATA_DIR or data_list.json) into `out_dir`.

    With `resume`, a run in `out_dir` continues from its latest saved state; without,
    an `out_dir` holding saved states is refused. `progress(step, total_steps, loss)` is
    called after every step on the main process; `echo(line)` gets the loss line every
    `log_every` steps (also in train_log.jsonl and TensorBoard).
    """
    from accelerate.utils import set_seed

    from talkinghead.models.lmdm import LMDM

    cfg = config or MotionTrainConfig()
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    states = _state_dirs(out_dir)
    if states and not resume:
        raise TalkingHeadError(f"{out_dir}: holds a training run; resume it or use another OUT_DIR")
    videos = load_data_list(data, cfg)
    data_list = find_data_list(data)
    # Held-out videos: sampled, never trained on; a resume keeps the ones it recorded.
    sample_every = resolve_sample_every(cfg.sample_every, cfg.preset)
    recorded = None
    if states and (out_dir / CONFIG_NAME).is_file():
        recorded = list(json.loads((out_dir / CONFIG_NAME).read_text()).get("holdout_videos", []))
    held = choose_holdout(
        [v.name for v in videos],
        cfg.holdout,
        sampling=sample_every > 0,
        seed=cfg.seed,
        recorded=recorded,
    )
    held_videos = [v for v in videos if v.name in held]
    train_videos = [v for v in videos if v.name not in held]
    cfg = replace(cfg, sample_every=sample_every, holdout=len(held))
    # The video samples' renderer and source, checked before anything is trained.
    renderer = source_video = None
    if cfg.sample_renderer and sample_every:
        renderer = check_sample_renderer(cfg.sample_renderer)
        source_video = sample_source_video(data_list, (held_videos or train_videos)[0].name)
    elif cfg.sample_renderer:
        log.warning("--sample-renderer is unused: sampling is off (--sample-every 0)")

    try:
        accelerator = build_accelerator(cfg.mixed_precision)
    except ValueError as exc:
        raise TalkingHeadError(str(exc)) from None
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    if cfg.data_preload:
        preload_path = (
            Path(cfg.data_preload_path)
            if cfg.data_preload_path
            else data_list.parent / PRELOAD_NAME
        )
        with accelerator.main_process_first():
            preload(videos, cfg, preload_path)
    dataset = MotionWindowDataset(train_videos, cfg)
    if cfg.use_cond_end and main:
        log.warning(
            "use_cond_end: every window also yields its clip-end frame, as the release's "
            "dataset does; its trainer feeds that frame to no network input, nor does this one"
        )
    audio_feat_dim = cfg.audio_feat_dim
    if audio_feat_dim is None:
        audio_feat_dim = dataset.cond_dim
    elif audio_feat_dim != dataset.cond_dim:
        raise TalkingHeadError(
            f"audio_feat_dim {audio_feat_dim} does not match the data's condition: "
            f"{dataset.describe_condition()}; pass --audio-feat-dim {dataset.cond_dim} "
            "(or 0: from the data)"
        )
    # Recorded as run: the precision accelerate chose (launch flag / config) when none was given.
    cfg = replace(
        cfg,
        audio_feat_dim=audio_feat_dim,
        mixed_precision=resolve_mixed_precision(accelerator.mixed_precision),
    )
    dim_ws = load_dim_weights(cfg.dim_ws_npy, cfg.motion_feat_dim)
    dim_weights = None if dim_ws is None else torch.from_numpy(dim_ws).to(accelerator.device)
    if states:
        _check_resume(out_dir, cfg)
    lmdm_kwargs = cfg.lmdm_overrides(audio_feat_dim)

    net = LMDM(**lmdm_kwargs)
    if cfg.init_checkpoint:
        from talkinghead.models import load_official

        init = load_official("lmdm", cfg.init_checkpoint, **lmdm_kwargs)
        net.model.load_state_dict(init.model.state_dict())
    decoder = net.model
    alphas_cumprod = net.alphas_cumprod.to(accelerator.device)
    ema = EMA(decoder, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema_decay > 0 else None
    optimizer = build_optimizer(decoder.parameters(), cfg)
    loader_generator = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=EpochShuffle(len(dataset), cfg.seed),
        num_workers=cfg.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        drop_last=len(dataset) >= cfg.batch_size * accelerator.num_processes,
        # Its own generator: creating an epoch's iterator then leaves the global RNG (noise,
        # dropout) alone, so a run resumed mid-epoch draws exactly what the original would.
        generator=loader_generator,
    )
    decoder, optimizer, loader = accelerator.prepare(decoder, optimizer, loader)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    step, epoch, skip = 0, 0, 0
    if states:
        accelerator.load_state(str(states[-1]))
        with contextlib.suppress(FileNotFoundError):  # states written before per-rank files
            load_rank_state(states[-1], accelerator.process_index, {"loader": loader_generator})
        saved = json.loads((states[-1] / TRAINER_STATE).read_text())
        step, epoch, skip = int(saved["step"]), int(saved["epoch"]), int(saved["batch"])
        if main:
            log.info("resuming %s from step %d (epoch %d, batch %d)", out_dir, step, epoch, skip)
    start_step = step
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        record = {**cfg.to_json(), "holdout_videos": held}
        (out_dir / CONFIG_NAME).write_text(json.dumps(record, indent=1))
    per_epoch = len(loader)
    total = cfg.epochs * per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    logger = LossLog(
        out_dir,
        every=cfg.log_every,
        enabled=main,
        tensorboard=cfg.tensorboard,
        echo=echo,
        total_steps=total,
    )
    result = TrainResult(
        out_dir, start_step, step, epoch, None, None, is_main_process=main, holdout=held
    )
    world = accelerator.num_processes

    sample_video = None
    if sample_every:
        sample_video = held_videos[0] if held_videos else train_videos[0]
        if not held_videos and main:
            log.warning("no video is held out: the validation samples show a training video")
    sample_values: dict[str, float] = {}
    render = None
    if sample_video is not None:
        unwrapped = accelerator.unwrap_model(decoder)

        def sample_weights() -> Mapping[str, torch.Tensor]:
            return ema.averaged_state_dict(unwrapped) if ema is not None else unwrapped.state_dict()

        def build_sample_net() -> nn.Module:
            return LMDM(**lmdm_kwargs)

        render = _motion_render(
            build_sample_net,
            sample_weights,
            dataset,
            sample_video,
            cfg,
            accelerator.device,
            sample_values,
        )
    samples = PeriodicSamples(out_dir, render, every=sample_every, suffix=SAMPLE_SUFFIX)
    if main and not states:
        samples.reset()  # a fresh run: the samples of the run it replaces go
    video_render = None
    if render is not None and renderer is not None and source_video is not None:
        video_render = _video_render(
            sample_weights,
            lmdm_kwargs,
            renderer,
            source_video,
            cfg,
            accelerator.device,
            out_dir,
        )
    video_samples = PeriodicSamples(
        out_dir, video_render, every=sample_every, suffix=SAMPLE_VIDEO_SUFFIX
    )

    def save(epoch_done: int, batch: int) -> None:
        accelerator.wait_for_everyone()
        state = out_dir / STATE_DIR / f"step_{step:08d}"
        accelerator.save_state(str(state), safe_serialization=False)
        # Every rank's own random streams (accelerate's cover the global RNGs only).
        save_rank_state(state, accelerator.process_index, {"loader": loader_generator})
        accelerator.wait_for_everyone()
        if main:
            (state / TRAINER_STATE).write_text(
                json.dumps({"step": step, "epoch": epoch_done, "batch": batch})
            )
            for old in _state_dirs(out_dir)[: -cfg.keep_states]:
                shutil.rmtree(old, ignore_errors=True)
            weights = accelerator.unwrap_model(decoder)
            if ema is not None:
                weights = ema.averaged(weights)
            state_dict = weights.state_dict()
            ckpt = export_checkpoint(
                state_dict,
                lmdm_kwargs,
                out_dir / "ckpts" / f"lmdm_e{epoch_done:04d}_s{step:08d}.pth",
            )
            export = out_dir / EXPORT_DIR
            export.mkdir(exist_ok=True)
            result.checkpoint = export_checkpoint(state_dict, lmdm_kwargs, export / LMDM_CHECKPOINT)
            result.sidecar = write_sidecar(export, lmdm_kwargs, cfg.condition_overrides())
            log.info("step %d: saved %s", step, ckpt)
        accelerator.wait_for_everyone()

    last_save = step if states else -1
    batch_index = skip
    stop = bool(cfg.max_steps) and step >= cfg.max_steps

    def position() -> tuple[int, int]:
        """(epochs completed, batches into the next one) after the current step."""
        return (epoch + 1, 0) if batch_index >= per_epoch else (epoch, batch_index)

    decoder.train()
    try:
        while epoch < cfg.epochs and not stop:
            loader.set_epoch(epoch)  # accelerate's loader passes it on to the sampler
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            batch_index = skip
            # With use_cond_end the items also carry the clip-end frame; as in the release,
            # the network has no input for it.
            for x0, cond_frame, cond, *_ in batches:
                b = x0.shape[0]
                t = torch.randint(0, alphas_cumprod.shape[0], (b,), device=x0.device)
                a = alphas_cumprod[t].view(b, 1, 1)
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn_like(x0)
                keep = torch.rand(b, device=x0.device) >= cfg.cond_drop_prob
                if world > 1 and not keep.any():
                    keep[0] = True  # DDP needs every parameter used; negligible bias
                with accelerator.autocast():
                    pred = decoder(x_t, cond_frame, cond, t, keep_mask=keep)
                loss, terms = motion_loss(pred.float(), x0, cond_frame, cfg, dim_weights)
                accelerator.backward(loss)
                grad_norm = None
                if cfg.grad_clip > 0 and accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(accelerator.unwrap_model(decoder))
                step += 1
                batch_index += 1
                value = float(loss.detach())
                result.losses.append(value)
                values = {"loss/total": value}
                values.update((f"loss/{k}", float(v.detach())) for k, v in terms.items())
                values["lr"] = optimizer.param_groups[0]["lr"]
                if grad_norm is not None:
                    values["grad_norm"] = float(grad_norm)
                values["epoch"] = epoch + batch_index / per_epoch
                logger.add(step, values, samples=b * world)
                if progress is not None and main:
                    progress(step, total, value)
                if samples.maybe_on_main(step, accelerator) is not None:
                    _log_sample(logger, step, sample_values)
                video_samples.maybe_on_main(step, accelerator)
                stop = bool(cfg.max_steps) and step >= cfg.max_steps
                if stop:
                    break
                if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                    save(*position())
                    last_save = step
            if stop:
                break
            skip = 0
            epoch += 1
            batch_index = 0
            if epoch % cfg.save_ckpt_freq == 0 or epoch == cfg.epochs:
                save(epoch, 0)
                last_save = step
        if last_save != step:
            epoch, batch_index = position()
            save(epoch, batch_index)
    finally:
        logger.close()
    result.step, result.epoch = step, epoch
    result.samples = sorted(samples.written + video_samples.written, key=lambda p: p.name)
    if result.checkpoint is None:  # nothing left to train: point at the earlier export
        export = out_dir / EXPORT_DIR / LMDM_CHECKPOINT
        result.checkpoint = export if export.is_file() else None
        sidecar = out_dir / EXPORT_DIR / SIDECAR_NAME
        result.sidecar = sidecar if sidecar.is_file() else None
    result.seconds = time.perf_counter() - t0
    decoder = optimizer = loader = None  # the DDP wrapper goes before the process group
    end_training(accelerator)
    return result
