"""Shared batching across streams: each stream gets the frames it gets alone (tiny release, CPU).

Batched with other streams, the networks' float sums may run in another order (oneDNN/MKL
choose kernels by batch size): about 1e-6 in the motion model's output, so a few pixels of a
frame move by one grey level. A stream alone in the worker is bit-identical.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from _conformance import MEDIA_DIR, skip_missing
from _tiny_release import TINY_LMDM, build_tiny_release
from talkinghead.audio.io import resample
from talkinghead.diffusion import DDIMSampler
from talkinghead.errors import SettingsError
from talkinghead.methods.ditto import pipeline as ditto_pipeline
from talkinghead.methods.ditto.batching import BatchingConfig, SharedBatcher
from talkinghead.methods.ditto.pipeline import DittoPipeline
from talkinghead.models.lmdm import LMDM
from talkinghead.stages import PipelineStopped

PORTRAIT = MEDIA_DIR / "ditto_example_face.jpg"
SPEECH = MEDIA_DIR / "ditto_example_speech.wav"
SETTINGS = {"steps": 2, "seed": 0, "max_size": 256, "batch_size": 4}
# A long gather window makes the streams' requests meet in batches whatever the scheduling.
GATHER = {"gather_ms": 100, "max_batch": 8}
JOIN_S = 300  # a deadlock guard, not a timing assertion
CHUNK = 1600  # 0.1 s pushes


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> DittoPipeline:
    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA_DIR}")
    release = build_tiny_release(tmp_path_factory.mktemp("release"))
    return DittoPipeline.from_pretrained(release, download=False, cache=False, **SETTINGS)


@pytest.fixture(scope="module")
def avatars(pipe) -> list:
    """Three sources: the portrait, its mirror image and a tighter crop of it."""
    from PIL import Image

    image = np.asarray(Image.open(PORTRAIT).convert("RGB"))
    h, w = image.shape[:2]
    crop = image[h // 16 : h - h // 16, w // 16 : w - w // 16]
    sources = [image, np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(crop)]
    return [pipe.register(s, max_frames=1) for s in sources]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    data, sr = sf.read(SPEECH, dtype="float32")
    return resample(data, sr, 16000)


@pytest.fixture(scope="module")
def clips(speech) -> list[np.ndarray]:
    """Three pieces of the example speech at 16 kHz: 13, 15 and 11 frames."""
    return [speech[:8000], speech[32000:41600], speech[80000:86400]]


@pytest.fixture(scope="module")
def alone(pipe, avatars, clips) -> Callable[[int], list[np.ndarray]]:
    """Stream k's frames without shared batching (source k, clip k, seed k), computed once."""
    cache: dict[int, list[np.ndarray]] = {}

    def frames(k: int) -> list[np.ndarray]:
        if k not in cache:
            cache[k] = run_stream(pipe, avatars[k], clips[k], seed=k)
        return cache[k]

    return frames


def shared_pipeline(pipe: DittoPipeline, **batching) -> DittoPipeline:
    """The same networks, with shared batching."""
    return DittoPipeline(pipe.models, pipe.config, shared_batching={**GATHER, **batching})


def run_stream(pipe: DittoPipeline, avatar, pcm: np.ndarray, seed: int) -> list[np.ndarray]:
    session = pipe.stream(avatar, seed=seed)
    frames: list[np.ndarray] = []
    try:
        for i in range(0, len(pcm), CHUNK):
            frames += session.push(pcm[i : i + CHUNK])
        return frames + session.close()
    except BaseException:
        session.abort()
        raise


def in_threads(*jobs: Callable[[], object]) -> list[object]:
    """Run the jobs concurrently; their results (or exceptions) in order."""
    results: list[object] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "a stream did not finish"
    return results


def assert_same_frames(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected) > 0
    diff = np.stack(
        [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(got, expected, strict=True)]
    )
    assert diff.max() <= 1, diff.max()  # batched float sums: a rounding flip at most
    assert (diff > 0).mean() < 1e-3  # measured: about 5e-5 of the pixels


def worker_gone(pipe: DittoPipeline) -> bool:
    """The worker thread ends once no stream is connected (bounded wait)."""
    for _ in range(200):
        if not pipe.batcher.running:
            return True
        threading.Event().wait(0.05)
    return False


def test_one_stream_through_the_worker_is_bit_identical(pipe, avatars, clips, alone) -> None:
    shared = shared_pipeline(pipe)
    frames = run_stream(shared, avatars[0], clips[0], seed=0)
    expected = alone(0)
    assert len(frames) == len(expected) == 13
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True))
    stats = shared.batcher.stats
    assert stats.window.requests > 0 and stats.render.requests == 4  # 13 frames, batches of 4
    assert shared.batcher.streams == 0 and worker_gone(shared)


def test_a_stream_dropped_without_close_leaves_the_worker(pipe, avatars) -> None:
    import gc

    shared = shared_pipeline(pipe)
    session = shared.stream(avatars[0], seed=0)
    assert shared.batcher.streams == 1
    del session
    gc.collect()
    assert shared.batcher.streams == 0


def test_concurrent_streams_get_the_frames_each_gets_alone(pipe, avatars, clips, alone) -> None:
    # Three streams: pairs and all three meet in batches (two alone would prove no more).
    n = 3
    expected = [alone(k) for k in range(n)]
    shared = shared_pipeline(pipe)
    jobs = [(lambda k=k: run_stream(shared, avatars[k], clips[k], seed=k)) for k in range(n)]
    results = in_threads(*jobs)
    for got, want in zip(results, expected, strict=True):
        assert not isinstance(got, BaseException), got
        assert_same_frames(got, want)
    stats = shared.batcher.stats
    # Requests of several streams really met in one call, for both kinds.
    assert stats.window.multi_stream > 0 and stats.render.multi_stream > 0
    assert stats.window.most_streams <= n and stats.render.most_streams <= n
    assert stats.window.retried == stats.render.retried == 0
    assert worker_gone(shared)


def test_a_stalled_consumer_does_not_stop_another_stream(
    pipe, avatars, clips, alone, monkeypatch
) -> None:
    """Stream 0's frames are never taken (its paste-back stage is stuck); stream 1 finishes."""
    expected = alone(1)
    shared = shared_pipeline(pipe, max_pending=2)
    stuck, entered, release = avatars[0], threading.Event(), threading.Event()
    paste = ditto_pipeline._Renderer.paste

    def stalled_paste(self, item):
        if self.avatar is stuck:
            entered.set()
            release.wait(JOIN_S)
        return paste(self, item)

    monkeypatch.setattr(ditto_pipeline._Renderer, "paste", stalled_paste)
    slow = shared.stream(stuck, seed=0)

    def feed() -> None:
        try:
            for i in range(0, len(clips[0]), CHUNK):
                slow.push(clips[0][i : i + CHUNK])
            slow.close()  # waits for frames that never come, until the abort below
        except PipelineStopped:
            pass

    feeding = threading.Thread(target=feed, daemon=True)
    try:
        feeding.start()
        # Its first frames are rendered and its consumer is stuck on them.
        assert entered.wait(JOIN_S)
        (frames,) = in_threads(lambda: run_stream(shared, avatars[1], clips[1], seed=1))
        assert not isinstance(frames, BaseException), frames
        assert_same_frames(frames, expected)
        assert feeding.is_alive()  # still stuck: the other stream finished regardless
    finally:
        release.set()
        slow.abort()
        feeding.join(JOIN_S)
    assert not feeding.is_alive()
    assert shared.batcher.streams == 0 and worker_gone(shared)


def test_aborting_one_stream_leaves_the_other_correct(pipe, avatars, clips, speech, alone) -> None:
    expected = alone(1)
    shared = shared_pipeline(pipe)
    long = speech[: 16000 * 2]

    def aborted() -> int:
        session = shared.stream(avatars[2], seed=2)
        pushed = 0
        for i in range(0, len(long), CHUNK):
            session.push(long[i : i + CHUNK])
            pushed += 1
            if session.frames_out:  # mid-way: windows sampled, renders in flight
                break
        session.abort()
        with pytest.raises(Exception, match="closed"):
            session.push(long[:CHUNK])
        return pushed

    pushed, frames = in_threads(aborted, lambda: run_stream(shared, avatars[1], clips[1], seed=1))
    assert isinstance(pushed, int) and pushed * CHUNK < len(long), pushed
    assert not isinstance(frames, BaseException), frames
    assert_same_frames(frames, expected)
    assert shared.batcher.streams == 0 and worker_gone(shared)


class _RejectsNonFinite(torch.nn.Module):
    """The pipeline's LMDM, refusing non-finite conditions (an error in one request)."""

    def __init__(self, lmdm: torch.nn.Module) -> None:
        super().__init__()
        self.lmdm = lmdm
        self.seq_frames, self.motion_feat_dim = lmdm.seq_frames, lmdm.motion_feat_dim
        self.config = lmdm.config

    def forward(self, x, cond_frame, cond, t):
        if not torch.isfinite(cond).all():
            raise ValueError("non-finite condition")
        return self.lmdm(x, cond_frame, cond, t)


def test_an_error_in_one_request_fails_only_that_stream(pipe, avatars, clips, alone) -> None:
    expected = alone(1)
    shared = DittoPipeline(
        pipe.models,
        pipe.config,
        motion_denoiser=_RejectsNonFinite(pipe.models.lmdm),
        shared_batching=GATHER,
    )

    def broken_stream() -> list[np.ndarray]:
        # The audio features after the first 0.25 s are NaN, so every window after the
        # first has a non-finite condition (push() itself refuses NaN audio).
        session = shared.stream(avatars[0], seed=0)
        features, seen = session.features.push, [0]

        def poisoned(pcm: np.ndarray) -> np.ndarray:
            out = np.array(features(pcm), dtype=np.float32)
            out[max(0, 6 - seen[0]) :] = np.nan
            seen[0] += len(out)
            return out

        session.features.push = poisoned
        frames: list[np.ndarray] = []
        try:
            for i in range(0, len(clips[0]), CHUNK):
                frames += session.push(clips[0][i : i + CHUNK])
            return frames + session.close()
        except BaseException:
            session.abort()
            raise

    failed, frames = in_threads(
        broken_stream,
        lambda: run_stream(shared, avatars[1], clips[1], seed=1),
    )
    assert isinstance(failed, ValueError) and "non-finite condition" in str(failed)
    # A batched call that failed was run again request by request (only its window failed).
    stats = shared.batcher.stats.window
    assert stats.retried >= 1 or stats.multi_stream == 0
    assert not isinstance(frames, BaseException), frames
    assert_same_frames(frames, expected)
    assert shared.batcher.streams == 0 and worker_gone(shared)


def test_windows_from_the_worker_equal_the_sampler_alone() -> None:
    """The worker's windows: each stream's own noise, whoever shares the call; on CPU the
    CUDA-graph request is skipped with its reason."""
    torch.manual_seed(0)
    model = LMDM(**TINY_LMDM).eval()
    sampler = DDIMSampler(num_steps=5)
    batcher = SharedBatcher(BatchingConfig(gather_ms=500, max_batch=3), lambda *a: (None, None))
    inputs = [
        (torch.randn(1, 6), torch.randn(1, 8, 16), torch.Generator().manual_seed(s))
        for s in range(3)
    ]
    expected = [
        sampler(model, cf, c, generator=torch.Generator().manual_seed(s))
        for s, (cf, c, _) in enumerate(inputs)
    ]
    clients = [batcher.connect() for _ in inputs]

    def window(k: int) -> torch.Tensor:
        cf, c, g = inputs[k]
        return clients[k].sample_window(
            model, sampler, cf, c, g, device=torch.device("cpu"), graphs=True
        )

    got = in_threads(*[(lambda k=k: window(k)) for k in range(3)])
    for w, e in zip(got, expected, strict=True):
        assert isinstance(w, torch.Tensor), w
        torch.testing.assert_close(w, e, rtol=0, atol=1e-5)
    assert batcher.stats.window.most_streams == 3  # all three in one call
    assert batcher.cuda_graphs.startswith("skipped") and "CUDA" in batcher.cuda_graphs
    # Alone in the worker: bit for bit.
    g = torch.Generator().manual_seed(7)
    alone = sampler(model, *inputs[0][:2], generator=torch.Generator().manual_seed(7))
    one = clients[0].sample_window(model, sampler, *inputs[0][:2], g, device=torch.device("cpu"))
    assert torch.equal(one, alone)
    for client in clients:
        client.close()
    with pytest.raises(PipelineStopped):
        clients[0].sample_window(model, sampler, *inputs[0][:2], g, device=torch.device("cpu"))


def test_bad_batching_settings_are_refused_before_loading(tmp_path: Path) -> None:
    for bad in ({"max_batch": 0}, {"gather_ms": -1}, {"max_pending": 1.5}, {"window": 3}, "yes"):
        with pytest.raises(SettingsError, match="shared"):
            DittoPipeline.from_pretrained(tmp_path / "missing", shared_batching=bad)
    assert BatchingConfig.coerce(True) == BatchingConfig()
    assert BatchingConfig.coerce(False) is None


def test_the_cuda_graph_path_pads_and_falls_back(monkeypatch) -> None:
    """The CUDA-graph branch's own logic on the CPU: batches padded to a power of two give
    each stream its window, and a graphed model that fails falls back to eager."""
    torch.manual_seed(0)
    model = LMDM(**TINY_LMDM).eval()
    sampler = DDIMSampler(num_steps=3)
    calls: list[int] = []

    def padded_eager(x, cond_frame, cond, t):  # stands in for the captured graph
        calls.append(x.shape[0])
        return model(x, cond_frame, cond, t)

    padded_eager.seq_frames, padded_eager.motion_feat_dim = model.seq_frames, model.motion_feat_dim
    batcher = SharedBatcher(BatchingConfig(gather_ms=500), lambda *a: (None, None))
    monkeypatch.setattr(batcher, "_graphed_model", lambda model, device: padded_eager)
    inputs = [(torch.randn(1, 6), torch.randn(1, 8, 16)) for _ in range(3)]
    clients = [batcher.connect() for _ in inputs]

    def window(k: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(k)
        return clients[k].sample_window(
            model, sampler, *inputs[k], g, device=torch.device("cpu"), graphs=True
        )

    got = in_threads(*[(lambda k=k: window(k)) for k in range(3)])
    assert set(calls) == {4}  # three windows, padded to four rows
    for k, w in enumerate(got):
        expected = sampler(model, *inputs[k], generator=torch.Generator().manual_seed(k))
        torch.testing.assert_close(w, expected, rtol=0, atol=1e-5)

    def broken(*args):
        raise RuntimeError("capture failed")

    broken.seq_frames, broken.motion_feat_dim = model.seq_frames, model.motion_feat_dim
    monkeypatch.setattr(batcher, "_graphed_model", lambda model, device: broken)
    for client in clients[1:]:
        client.close()
    w = window(0)
    assert torch.equal(w, sampler(model, *inputs[0], generator=torch.Generator().manual_seed(0)))
    assert batcher.cuda_graphs.startswith("failed") and "capture failed" in batcher.cuda_graphs
    clients[0].close()
