"""Evaluation speed: seconds per metric over one 10 s, 25 fps pair (250 frames each side).

Run by hand, e.g.::

    python benchmarks/evaluate.py                  # 256x256 frames, CPU
    python benchmarks/evaluate.py --size 512 --skip lpips_vgg,fid_sqrtm
    python benchmarks/evaluate.py --device cuda

The pair is the example portrait (../shared/media) drifting a few pixels per frame,
so the face tracker has a face to follow, and a noisy copy of it; the audio is the
example speech. Weights do not change the speed, so the networks get generated
weights in the standard layouts (as the tests do). CSIM and FVD run on stand-ins
(a tiny ONNX embedder, a tiny TorchScript detector), so their figures are the cost
of the pipeline around the network only: the real ArcFace R50 and I3D cost more.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import _eval_fixtures as fx  # noqa: E402
from talkinghead.eval import face, fid, fvd, identity, networks, pixel, sync  # noqa: E402
from talkinghead.eval.api import _lpips  # noqa: E402
from talkinghead.eval.video import align_pair, read_video  # noqa: E402


def make_pair(directory: Path, size: int, seconds: float, fps: int = 25) -> tuple[Path, Path, Path]:
    import cv2

    from talkinghead.audio.io import load_audio
    from talkinghead.media.source import load_source

    media = Path(os.environ.get("TALKINGHEAD_MEDIA_DIR", REPO.parent / "shared" / "media"))
    portrait = load_source(media / "ditto_example_face.jpg").frames[0]
    base = cv2.resize(portrait, (size + 16, size + 16), interpolation=cv2.INTER_AREA)
    n = int(seconds * fps)
    rng = np.random.default_rng(0)
    offsets = np.round(8 + 6 * np.sin(np.arange(n) / 9.0)).astype(int)
    ref = np.stack([base[o : o + size, o : o + size] for o in offsets])
    pred = np.clip(ref + rng.normal(0, 6, ref.shape), 0, 255).astype(np.uint8)
    audio = load_audio(media / "ditto_example_speech.wav", 16000)[: int(seconds * 16000)]
    return (
        fx.write_video(directory / "pred.mp4", pred, fps, audio=(audio, 16000)),
        fx.write_video(directory / "ref.mp4", ref, fps, audio=(audio, 16000)),
        directory,
    )


def timed(label: str, fn: Callable[[], object], results: dict[str, float]) -> object:
    t = time.perf_counter()
    out = fn()
    results[label] = time.perf_counter() - t
    print(f"{label:<28s} {results[label]:8.2f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="frame side in pixels")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip", default="", help="comma-separated labels to skip")
    ap.add_argument(
        "--vgg-frames", type=int, default=25, help="LPIPS-VGG on this many frames (then scaled)"
    )
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    dev = args.device
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {dev}")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wdir = fx.all_weight_files(tmp / "weights")
        pred_path, ref_path, _ = make_pair(tmp, args.size, args.seconds)
        pv, rv = timed(
            "decode pair", lambda: (read_video(pred_path), read_video(ref_path)), results
        )
        p, r = align_pair(pv, rv)
        print(f"pair: {len(p)} frames of {p.shape[1]}x{p.shape[2]}")

        timed("psnr", lambda: pixel.psnr(p, r), results)
        timed("ssim", lambda: pixel.ssim(p, r), results)
        for net in ("alex", "vgg"):
            label = "lpips" if net == "alex" else "lpips_vgg"
            if label in skip:
                continue
            trunk, lin = fx.lpips_files(tmp / "weights", net)
            model = networks.load_lpips(net, trunk, lin).to(dev)
            n = len(p) if net == "alex" else min(args.vgg_frames, len(p))
            timed(
                f"{label} ({n} frames)",
                lambda m=model, n=n: _lpips(m, p[:n], r[:n], dev, 16),
                results,
            )
            if n < len(p):
                print(
                    f"{'':<28s} {results[f'{label} ({n} frames)'] * len(p) / n:8.2f} s for {len(p)} (scaled)"
                )
        if "fid" not in skip:
            inc = networks.load_inception(wdir / "pt_inception-2015-12-05-6726825d.pth").to(dev)
            fp, fr = timed(
                "fid features (2 x 250)",
                lambda: (
                    fid.inception_features(inc, p, device=dev),
                    fid.inception_features(inc, r, device=dev),
                ),
                results,
            )
            timed("fid distance (fast)", lambda: fid.fid_from_features(fp, fr, "fast"), results)
            # 250 < 2048 samples: rank-deficient covariances, as for any short test set.
            if "fid_sqrtm" not in skip:
                timed(
                    "fid distance (sqrtm)", lambda: fid.fid_from_features(fp, fr, "sqrtm"), results
                )
        tracker = face.MeshFaceTracker()
        track = timed("face tracking (mediapipe)", lambda: tracker(p, "pred"), results)
        if "lse" not in skip:
            from talkinghead.audio.io import load_audio

            audio = load_audio(pred_path, 16000)
            model = networks.load_syncnet(wdir / "syncnet_v2.model").to(dev)
            crops = timed("lse crops", lambda: face.syncnet_crops(p, track), results)
            timed(
                "lse syncnet + search", lambda: sync.lse(model, crops, audio, device=dev), results
            )
        if "csim" not in skip:
            emb = identity.ArcFaceEmbedder(wdir / "w600k_r50.onnx")

            def run_csim():
                faces = np.stack(
                    [face.arcface_align(f, q) for f, q in zip(p, track.points, strict=True)]
                )
                return identity.csim(emb(faces[:1])[0], emb(faces))

            timed("csim (stand-in embedder)", run_csim, results)
        if "fvd" not in skip:
            det = networks.load_i3d(wdir / "i3d_torchscript.pt")
            timed(
                "fvd (stand-in detector)",
                lambda: (fvd.i3d_features(det, p), fvd.i3d_features(det, r)),
                results,
            )

        from talkinghead.eval import evaluate

        if "evaluate" not in skip:
            timed(
                "evaluate() default metrics",
                lambda: evaluate(
                    pred_path,
                    ref_path,
                    weights_dir=wdir,
                    download=False,
                    fid_method="fast",
                    device=dev,
                ),
                results,
            )


if __name__ == "__main__":
    main()
