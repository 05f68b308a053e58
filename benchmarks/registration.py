"""Avatar registration speed, and how long a cache hit takes.

Run by hand, e.g.::

    python benchmarks/registration.py                          # example portrait, tiny networks
    python benchmarks/registration.py --networks full          # full-size networks, random weights
    python benchmarks/registration.py --checkpoints ./checkpoints --device cuda

Registration runs the real face backend (`create_face_analyzer(--backend)`) and the two
extractor networks; a cache hit hashes the source file and reads the entry back. The cache
lives in a temporary directory unless --cache-dir is given. Figures are medians over
--repeats runs (the first registration, with its warm-up, is shown on its own).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from talkinghead.methods.ditto.avatar import AvatarCache, AvatarRegistrar
from talkinghead.models import OFFICIAL_NETWORKS
from talkinghead.models.appearance_extractor import AppearanceFeatureExtractor
from talkinghead.models.convnextv2 import ConvNeXtV2Config
from talkinghead.models.motion_extractor import MotionExtractor

REPO_ROOT = Path(__file__).resolve().parents[1]
MEDIA = Path(os.environ.get("TALKINGHEAD_MEDIA_DIR", REPO_ROOT.parent / "shared" / "media"))
DEFAULT_SOURCE = MEDIA / "ditto_example_face.jpg"


def ms(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


def build_registrar(args: argparse.Namespace, analyzer) -> AvatarRegistrar:
    if args.checkpoints is not None:
        models = args.checkpoints / "ditto_pytorch" / "models"
        return AvatarRegistrar.from_checkpoints(
            analyzer,
            models / OFFICIAL_NETWORKS["motion_extractor"].checkpoint_name,
            models / OFFICIAL_NETWORKS["appearance_extractor"].checkpoint_name,
            device=args.device,
            batch_size=args.batch_size,
        )
    torch.manual_seed(0)
    if args.networks == "full":
        motion, appearance = MotionExtractor(), AppearanceFeatureExtractor()
    else:
        tiny = ConvNeXtV2Config(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16))
        motion = MotionExtractor(backbone=tiny)
        appearance = AppearanceFeatureExtractor(block_expansion=8, num_resblocks=0)
    # A fixed name, as from_checkpoints would give: the weights digest is timed separately.
    return AvatarRegistrar(
        analyzer,
        motion,
        appearance,
        device=args.device,
        batch_size=args.batch_size,
        model_identity=f"random-{args.networks}-seed0",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--backend", default="auto", help="face backend for create_face_analyzer")
    parser.add_argument("--networks", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--checkpoints", type=Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-side", type=int, default=1920)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()

    from talkinghead.face import create_face_analyzer
    from talkinghead.media.source import load_source

    analyzer = create_face_analyzer(backend=args.backend)
    registrar = build_registrar(args, analyzer)
    load_ms, media = ms(lambda: load_source(args.source, max_side=args.max_side))
    h, w = media.frames[0].shape[:2]
    print(
        f"source={args.source.name} ({len(media.frames)} frame(s), {w}x{h}) "
        f"face={getattr(analyzer, 'name', '?')} networks="
        f"{'checkpoints' if args.checkpoints else args.networks} device={args.device} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"load source            {load_ms:9.1f} ms")
    first, _ = ms(lambda: registrar.register(media))
    print(f"register (first)       {first:9.1f} ms")
    times = [ms(lambda: registrar.register(media))[0] for _ in range(args.repeats)]
    print(f"register (median)      {statistics.median(times):9.1f} ms")
    digest_ms, _ = ms(
        lambda: (
            AvatarRegistrar(
                analyzer, registrar.motion_extractor, registrar.appearance_extractor
            ).model_identity
        )
    )
    print(f"weights digest         {digest_ms:9.1f} ms  (only without a model identity)")

    with tempfile.TemporaryDirectory() as tmp:
        cache = AvatarCache(args.cache_dir or tmp)
        key = cache.key(args.source, registrar, max_side=args.max_side)
        cache.entry_path(key).unlink(missing_ok=True)
        miss, avatar = ms(
            lambda: cache.get_or_register(args.source, registrar, max_side=args.max_side)
        )
        assert cache.last_hit is False
        size = cache.entry_path(key).stat().st_size / 2**20
        print(f"cache miss (load+register+write) {miss:9.1f} ms  entry {size:.1f} MiB")
        hits = []
        for _ in range(max(args.repeats, 1)):
            t, again = ms(
                lambda: cache.get_or_register(args.source, registrar, max_side=args.max_side)
            )
            assert cache.last_hit is True
            hits.append(t)
        print(f"cache hit (first)      {hits[0]:9.1f} ms")
        print(f"cache hit (median)     {statistics.median(hits):9.1f} ms")
        assert again.num_frames == avatar.num_frames


if __name__ == "__main__":
    main()
