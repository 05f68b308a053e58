"""Ditto end to end: where the time goes, frame by frame.

Prints, per run, the ms per frame of each stage (HuBERT, LMDM, stitching, warp, decode,
paste-back, encode; registration once per source), end-to-end frames/s and real-time
factor, the streaming first-frame latency, the number of concurrent streaming sessions
held in real time, and peak memory. Run by hand, e.g.::

    # tiny networks of the release's architectures (built in a temp dir): pipeline
    # overheads, streaming latency and sessions, and whether memory grows with the audio
    python benchmarks/pipeline.py --tiny --seconds 4,20
    # full-size networks with random weights (the speed of the real ones) for a few
    # frames; on CPU each 512 px frame costs tens of seconds, so no streaming there
    python benchmarks/pipeline.py --full-random --seconds 0.12 --sessions 0
    # the real release, or a GPU; --frame 1920x1080: the portrait placed in a 1080p frame
    python benchmarks/pipeline.py --checkpoints ./checkpoints --device cuda --fp16
    python benchmarks/pipeline.py --full-random --device cuda --fp16 --frame 1920x1080

Stage times are each stage's own busy time (the renderer's stages run concurrently in
threads, so their sum exceeds the wall time); on CUDA they are taken in a separate run
with a device synchronise around each network call, while fps comes from a plain run
after a warm-up. "Sessions held in real time" is the largest count in 1, 2, 4, ... (up
to --sessions) at which every concurrent stream, fed 40 ms chunks at the speech's pace,
delivers each frame no later than its play time (first frame + k/25 s) plus --slack.
Each duration runs in its own process so that peak RSS (ru_maxrss) is per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("TALKINGHEAD_MEDIA_DIR", REPO.parent / "shared" / "media"))
FPS, RATE = 25, 16000
CHUNK = RATE // FPS  # 40 ms of speech per push: one frame's worth


def speech(seconds: float, path: Path) -> Path:
    import soundfile as sf

    data, sr = sf.read(MEDIA / "ditto_example_speech.wav", dtype="float32")
    reps = int(np.ceil(seconds * sr / len(data)))
    sf.write(path, np.tile(data, reps)[: int(seconds * sr)], sr)
    return path


def record_face(source: Path, out: Path) -> None:
    """The source's face analysed with mediapipe, for --face where mediapipe is missing."""
    from talkinghead.face.recorded import RecordedFaceAnalyzer
    from talkinghead.media.source import load_source

    rgb = load_source(source).frames[0]  # as the pipeline reads it
    RecordedFaceAnalyzer.record(rgb).save(out)


def framed_source(
    source: Path, size: str, folder: Path, face: Path | None
) -> tuple[Path, Path | None]:
    """`source` scaled to the height of a WxH frame and centred in it, its edge columns
    (or rows) repeated to fill the rest: a full-frame source of that size; and the
    recorded `face` moved into that frame."""
    import cv2

    w, h = (int(v) for v in size.lower().split("x"))
    image = cv2.imread(str(source))
    scale = min(w / image.shape[1], h / image.shape[0])
    image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
    dx, dy = w - image.shape[1], h - image.shape[0]
    image = cv2.copyMakeBorder(
        image, dy // 2, dy - dy // 2, dx // 2, dx - dx // 2, cv2.BORDER_REPLICATE
    )
    out = folder / f"source_{w}x{h}.png"
    cv2.imwrite(str(out), image)
    if face is not None:
        from talkinghead.face.recorded import RecordedFaceAnalyzer

        moved = RecordedFaceAnalyzer.load(face).transformed(scale, (dx // 2, dy // 2))
        face = folder / f"face_{w}x{h}.npz"
        moved.save(face)
    return out, face


def build_full_random_release(root: Path) -> tuple[Path, Path]:
    """The release's layout with full-size networks of random weights, and a random
    HuBERT-large (transformers, 1024-d features as the release's) in its own folder.
    Returns (checkpoints root, HuBERT directory)."""
    from transformers import HubertConfig, HubertModel

    from talkinghead.models import OFFICIAL_NETWORKS, save_official

    models = root / "ditto_pytorch" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (root / "ditto_pytorch" / "aux_models").mkdir(parents=True, exist_ok=True)
    for i, (kind, spec) in enumerate(OFFICIAL_NETWORKS.items()):
        torch.manual_seed(i)
        save_official(spec.factory()(), kind, models / spec.checkpoint_name)
    hubert = root / "hubert_large_random"
    config = HubertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    )
    torch.manual_seed(0)
    HubertModel(config).save_pretrained(hubert)
    return root, hubert


class StageClock:
    """Busy seconds per stage, from wrappers around the pipeline's networks and helpers."""

    def __init__(self, sync: bool) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.sync = sync
        self.lock = threading.Lock()

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.sync:
                    torch.cuda.synchronize()
                with self.lock:
                    self.seconds[stage] += time.perf_counter() - start
                    self.calls[stage] += 1

        return timed

    def instrument(self, pipe: Any) -> Callable[[], None]:
        """Wrap the pipeline's networks (instance `forward`s), the speech encoder, and the
        paste-back and video writer classes; returns the function that undoes it."""
        from talkinghead.face import PasteBack
        from talkinghead.face.device_paste import DevicePasteBack
        from talkinghead.media.writer import VideoWriter

        m = pipe.models
        undo: list[Callable[[], None]] = []
        for stage, net in (
            ("register", m.appearance_extractor),
            ("register", m.motion_extractor),
            ("lmdm", m.lmdm),
            ("stitch", m.stitch_network),
            ("warp", m.warp_network),
            ("decode", m.decoder),
        ):
            net.forward = self.wrap(stage, net.forward)
            undo.append(lambda net=net: net.__dict__.pop("forward", None))
        encoder = m.speech_encoder
        encoder.encode = self.wrap("hubert", encoder.encode)
        undo.append(lambda: encoder.__dict__.pop("encode", None))
        for stage, cls, name in (
            ("paste", PasteBack, "__call__"),
            ("paste", DevicePasteBack, "__call__"),
            ("encode", VideoWriter, "_write"),
        ):
            original = getattr(cls, name)
            setattr(cls, name, self.wrap(stage, original))
            undo.append(lambda cls=cls, name=name, original=original: setattr(cls, name, original))
        return lambda: [u() for u in undo]

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        out = {}
        for stage in ("register", "hubert", "lmdm", "stitch", "warp", "decode", "paste", "encode"):
            if stage in self.seconds:
                total = self.seconds[stage]
                # Registration is once per source: its total, not per frame.
                out[stage if stage != "register" else "register_total"] = round(
                    total * 1e3 / (1 if stage == "register" else frames), 2
                )
        return out


def pipe_source_hw(source: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(source) as image:
        return image.height, image.width


def stream_session(
    pipe: Any, source: Path, pcm: np.ndarray, barrier: threading.Barrier | None
) -> dict[str, Any]:
    """One stream fed 40 ms chunks at the speech's pace; arrival time of every frame."""
    session = pipe.stream(source, seed=0)
    arrivals: list[float] = []
    pushed_at_first = None
    if barrier is not None:
        barrier.wait()
    t0 = time.perf_counter()
    for i in range(0, len(pcm), CHUNK):
        time.sleep(max(0.0, t0 + i / RATE - time.perf_counter()))
        got = session.push(pcm[i : i + CHUNK])
        now = time.perf_counter() - t0
        if got and pushed_at_first is None:
            pushed_at_first = min(len(pcm), i + CHUNK) / RATE
        arrivals += [now] * len(got)
    for _ in session.finish():
        arrivals.append(time.perf_counter() - t0)
        if pushed_at_first is None:
            pushed_at_first = len(pcm) / RATE
    return {"arrivals": arrivals, "speech_pushed_at_first_s": pushed_at_first}


def late_by(arrivals: list[float]) -> float:
    """How far the latest frame came after its play time (first frame + k/25 s)."""
    if not arrivals:
        return float("inf")
    return max(t - (arrivals[0] + k / FPS) for k, t in enumerate(arrivals))


def sessions_held(pipe: Any, source: Path, pcm: np.ndarray, limit: int, slack: float) -> dict:
    held, tried = 0, {}
    n = 1
    while n <= limit:
        barrier = threading.Barrier(n)
        results: list[dict] = [{}] * n

        def one(k: int, barrier: threading.Barrier = barrier, results: list = results) -> None:
            results[k] = stream_session(pipe, source, pcm, barrier)

        threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        worst = max(late_by(r.get("arrivals", [])) for r in results)
        tried[n] = round(worst, 3)
        if worst > slack:
            break
        held, n = n, n * 2
    return {"sessions_real_time": held, "worst_late_s_by_sessions": tried}


def run_once(args: argparse.Namespace, seconds: float) -> dict:
    from talkinghead.audio.io import load_audio
    from talkinghead.face.recorded import RecordedFaceAnalyzer
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    tmp = Path(tempfile.mkdtemp())
    audio = speech(seconds, tmp / "speech.wav")
    settings = {"steps": args.steps, "seed": 0, "device": args.device, "cache": False}
    settings |= {"batch_size": args.batch_size, "runtime": args.runtime, "fp16": args.fp16}
    if args.max_size:
        settings["max_size"] = args.max_size
    if args.online_fuse:
        settings["online_fuse"] = args.online_fuse
    pipe = DittoPipeline.from_pretrained(
        args.checkpoints,
        download=False,
        hubert=args.hubert,
        face_analyzer=RecordedFaceAnalyzer.load(args.face) if args.face else None,
        **settings,
    )
    cuda = pipe.device.type == "cuda"
    if cuda:  # warm-up: kernels, compile, cuDNN autotuning
        pipe.generate(args.source, audio, tmp / "warm.mp4")
        torch.cuda.synchronize()
    clock = StageClock(sync=cuda)
    undo = clock.instrument(pipe)
    start = time.perf_counter()
    result = pipe.generate(args.source, audio, tmp / "out.mp4")
    total_s = time.perf_counter() - start
    undo()
    if cuda:  # the stage clock's synchronising slows CUDA: fps from a plain run
        start = time.perf_counter()
        pipe.generate(args.source, audio, tmp / "out.mp4")
        total_s = time.perf_counter() - start
    frames = result.num_frames
    row: dict[str, Any] = {
        "networks": args.networks,
        "device": str(pipe.device),
        "runtime": args.runtime,
        "fp16": args.fp16,
        "seconds": seconds,
        "source_hw": list(pipe_source_hw(args.source)),
        "frames": frames,
        "stage_ms_per_frame": clock.per_frame_ms(frames),
        "end_to_end_fps": round(frames / total_s, 2),
        "real_time_factor": round(total_s / seconds, 3),
    }
    if args.sessions > 0:
        pcm = load_audio(audio, RATE)[: int(args.stream_seconds * RATE)]
        one = stream_session(pipe, args.source, pcm, None)
        pushed = one["speech_pushed_at_first_s"]
        first = one["arrivals"][0] if one["arrivals"] else None
        row["stream_first_frame_s"] = None if first is None else round(first, 3)
        row["stream_speech_before_first_frame_s"] = pushed
        # Compute after the audio the first frame needed (pushed in 40 ms chunks).
        row["stream_first_frame_compute_s"] = (
            None if first is None or pushed is None else round(first - pushed, 3)
        )
        row |= sessions_held(pipe, args.source, pcm, args.sessions, args.slack)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--checkpoints", type=Path)
    which.add_argument("--tiny", action="store_true", help="build and use tiny networks")
    which.add_argument(
        "--full-random", action="store_true", help="build full-size random-weight networks"
    )
    parser.add_argument("--hubert", help="a HuBERT id/path when the release's ONNX is absent")
    parser.add_argument("--source", type=Path, default=MEDIA / "ditto_example_face.jpg")
    parser.add_argument("--frame", help="WxH: the source placed in a frame of this size")
    parser.add_argument("--face", type=Path, help="the source's recorded face (no mediapipe)")
    parser.add_argument("--record-face", type=Path, help="record --source's face to this file")
    parser.add_argument("--work", type=Path, help="--full-random: build in (and reuse) DIR")
    parser.add_argument("--seconds", default="4", help="speech lengths, comma-separated")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-size", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", default="torch")
    parser.add_argument("--fp16", action="store_true", help="autocast the renderer (CUDA)")
    parser.add_argument("--online-fuse", type=int, default=0, help="low-latency online setting")
    parser.add_argument("--sessions", type=int, default=8, help="most sessions to try; 0: none")
    parser.add_argument("--stream-seconds", type=float, default=4.0)
    parser.add_argument("--slack", type=float, default=0.5, help="jitter buffer, seconds")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--networks", default="release", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_once(args, args.one)))
        return
    if args.record_face:
        record_face(args.source, args.record_face)
        return
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from _tiny_release import build_tiny_release

        args.checkpoints, args.networks = build_tiny_release(Path(tempfile.mkdtemp())), "tiny"
    elif args.full_random:
        work = args.work or Path(tempfile.mkdtemp())
        if (work / "built").is_file():  # an earlier run's, same seeds
            args.checkpoints, args.hubert = work, work / "hubert_large_random"
        else:
            args.checkpoints, args.hubert = build_full_random_release(work)
            (work / "built").touch()
        args.networks = "full-size random"
    if args.checkpoints is None:
        parser.error("give --checkpoints DIR, --tiny or --full-random")
    if args.frame:
        args.source, args.face = framed_source(
            args.source, args.frame, Path(tempfile.mkdtemp()), args.face
        )
    for seconds in (float(s) for s in args.seconds.split(",")):
        cmd = [sys.executable, __file__, "--one", str(seconds), "--networks", args.networks]
        cmd += ["--checkpoints", str(args.checkpoints), "--source", str(args.source)]
        cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        cmd += ["--max-size", str(args.max_size), "--device", args.device]
        cmd += ["--runtime", args.runtime, "--online-fuse", str(args.online_fuse)]
        cmd += ["--sessions", str(args.sessions), "--stream-seconds", str(args.stream_seconds)]
        cmd += ["--slack", str(args.slack)] + (["--fp16"] if args.fp16 else [])
        cmd += ["--hubert", str(args.hubert)] if args.hubert else []
        cmd += ["--face", str(args.face)] if args.face else []
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if out.returncode:
            sys.exit(out.stderr)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
