"""Ditto's online motion settings: speech needed before the first frame against smoothness.

For each online setting (the release's overlap 70 with a 10-frame cross-fade, the
low-latency ``online_fuse=5``, and overlap 75) this prints the feature frames (and
seconds of speech) a stream needs before its first frame, motion-model windows per
second of speech, and frame-to-frame keypoint jumps (mean, p99 and max of the largest
keypoint move per frame, in keypoint units) overall and at window seams, each also as a
ratio to the release setting, all from one run.

Two motion sources:

* ``--synthetic`` (default): a stand-in window sampler whose windows follow one smooth
  trajectory plus a per-window offset (the disagreement between independently sampled
  windows, which the cross-fade has to hide). It isolates what the schedule does.
* ``--checkpoints DIR`` (or ``--tiny``): the real pipeline's motion (HuBERT, LMDM, DDIM)
  on the example speech; with the release's trained LMDM this is the figure to quote.

    python benchmarks/online_latency.py
    python benchmarks/online_latency.py --checkpoints ./checkpoints --seconds 10 --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from talkinghead.methods.ditto.motion.clipwise import ClipwiseConfig, ClipwiseGenerator
from talkinghead.methods.ditto.motion.format import MOTION_DIM, motion_to_dict
from talkinghead.models.keypoints import transform_keypoints

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("TALKINGHEAD_MEDIA_DIR", REPO.parent / "shared" / "media"))
FPS = 25
SETTINGS = {  # name -> (online_overlap, online_fuse)
    "release (overlap 70, fade 10)": (70, None),
    "low latency (overlap 70, fade 5)": (70, 5),
    "overlap 75 (fade 5)": (75, None),
}


def keypoints(motion: np.ndarray, kp: np.ndarray) -> np.ndarray:
    """Motion [N, 265] and canonical keypoints [63] -> posed keypoints [N, 21, 3]."""
    d = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in motion_to_dict(motion).items()}
    n = motion.shape[0]
    canon = torch.as_tensor(kp, dtype=torch.float32).reshape(1, -1).expand(n, -1)
    out = transform_keypoints(canon, d["pitch"], d["yaw"], d["roll"], d["t"], d["exp"], d["scale"])
    return out.numpy()


def jumps(kps: np.ndarray) -> np.ndarray:
    """Per frame step: the largest keypoint move (L2) between consecutive frames."""
    return np.linalg.norm(np.diff(kps, axis=0), axis=-1).max(-1)


def summary(step: np.ndarray, seams: list[int]) -> dict[str, float]:
    seam_steps = step[[s for s in seams if 0 <= s < len(step)]]
    return {
        "mean": float(step.mean()),
        "p99": float(np.percentile(step, 99)),
        "max": float(step.max()),
        "seam_mean": float(seam_steps.mean()) if len(seam_steps) else float("nan"),
    }


class DriftingWindows:
    """Windows of one smooth trajectory (a function of the frame index in cond[..., 0]) plus
    a per-window constant offset drawn from the generator."""

    def __init__(self, source: torch.Tensor, drift: float) -> None:
        g = torch.Generator().manual_seed(0)
        self.source, self.drift = source, drift
        self.freq = 0.002 + 0.02 * torch.rand(MOTION_DIM, generator=g)  # cycles per frame
        self.phase = 2 * torch.pi * torch.rand(MOTION_DIM, generator=g)
        self.amp = 0.05 + 0.1 * torch.rand(MOTION_DIM, generator=g)

    def __call__(self, cond_frame, cond, generator):
        t = cond[..., :1]
        truth = self.source + self.amp * torch.sin(2 * torch.pi * self.freq * t + self.phase)
        offset = self.drift * torch.randn(cond.shape[0], 1, MOTION_DIM, generator=generator)
        return truth + offset


def synthetic_motion(overlap: int, fuse: int | None, frames: int, drift: float):
    g = torch.Generator().manual_seed(1)
    source = 0.1 * torch.randn(MOTION_DIM, generator=g)
    kp = 0.3 * torch.randn(63, generator=g)
    cfg = ClipwiseConfig.release_online(overlap=overlap, fuse_frames=fuse)
    prefix = torch.arange(-overlap, 0, dtype=torch.float32)[:, None]
    gen = ClipwiseGenerator(
        DriftingWindows(source, drift),
        source,
        cfg,
        prefix=prefix,
        generator=torch.Generator().manual_seed(2),
    )
    motion = gen.generate(torch.arange(frames, dtype=torch.float32)[:, None])
    return cfg, motion.numpy(), kp.numpy()


def pipeline_motion(args, overlap: int, fuse: int | None):
    from talkinghead.audio.io import load_audio
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    if not hasattr(args, "_pipe"):
        args._pipe = DittoPipeline.from_pretrained(
            args.checkpoints, download=False, steps=args.steps, seed=0, cache=False
        )
        args._avatar = args._pipe.register(MEDIA / "ditto_example_face.jpg", max_frames=1)
        pcm = load_audio(MEDIA / "ditto_example_speech.wav", 16000)
        args._pcm = np.tile(pcm, int(np.ceil(args.seconds * 16000 / len(pcm))))[
            : int(args.seconds * 16000)
        ]
    pipe, avatar = args._pipe, args._avatar
    cfg = pipe.config.replace(online=True, online_overlap=overlap, online_fuse=fuse)
    motion, _ = pipe.motion(avatar, args._pcm, config=cfg)
    kp = avatar.x_s_info_at(0)["kp"].reshape(-1)
    return cfg.clipwise(streaming=True), motion, kp


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", type=Path)
    parser.add_argument("--tiny", action="store_true", help="the pipeline on tiny random networks")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--drift", type=float, default=0.05, help="synthetic window offset std")
    args = parser.parse_args()
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from _tiny_release import build_tiny_release

        args.checkpoints = build_tiny_release(Path(tempfile.mkdtemp()))
    source = "synthetic" if args.checkpoints is None else f"pipeline ({args.checkpoints})"
    frames = int(args.seconds * FPS)
    rows, base = [], None
    for name, (overlap, fuse) in SETTINGS.items():
        if args.checkpoints is None:
            cfg, motion, kp = synthetic_motion(overlap, fuse, frames, args.drift)
        else:
            cfg, motion, kp = pipeline_motion(args, overlap, fuse)
        # Window k > 0 fades into frames [k*valid + S - overlap - fuse, ...) of the prefixed
        # stream; the steps at and after its last faded frame are the seams.
        seams = [
            k * cfg.valid + cfg.seq_frames - 2 * cfg.overlap - 1 + s
            for k in range(1, cfg.num_windows(frames + cfg.overlap))
            for s in range(-cfg.fuse_length, 1)
        ]
        stats = summary(jumps(keypoints(motion, kp)), seams)
        base = base or stats
        needed = cfg.first_frame_features()
        rows.append(
            {
                "setting": name,
                "first_frame_features": needed,
                "first_frame_speech_s": needed / FPS,
                "windows_per_s": round(FPS / cfg.valid, 2),
                **{k: round(v, 5) for k, v in stats.items()},
                **{f"{k}_vs_release": round(v / base[k], 2) for k, v in stats.items()},
            }
        )
    print(json.dumps({"motion": source, "seconds": args.seconds, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
