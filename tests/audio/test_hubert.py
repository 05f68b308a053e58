"""Speech-feature chunking: which samples feed which 25 fps frame, offline and streamed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _conformance import MEDIA_DIR, skip_missing
from _tiny_release import tiny_hubert_onnx
from talkinghead.audio.hubert import (
    HubertFeatureExtractor,
    OnnxHubertEncoder,
    SpeechEncoder,
    TransformersHubertEncoder,
    num_frames,
)
from talkinghead.audio.io import load_audio
from talkinghead.errors import CheckpointError

WIN, HOP = 400, 320  # HuBERT's convolutional front end: 20 ms frames of a 25 ms window


class PositionEncoder:
    """Stand-in for HuBERT with its frame layout. With audio = sample index + 1 (0 = padding),
    row j says which samples frame j saw: [first sample, last sample, j]."""

    feat_dim = 3

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def encode(self, chunk: np.ndarray) -> np.ndarray:
        assert chunk.dtype == np.float32 and chunk.shape == (6480,)
        self.calls.append(chunk.copy())
        t = (chunk.shape[0] - WIN) // HOP + 1
        j = np.arange(t)
        return np.stack([chunk[j * HOP], chunk[j * HOP + WIN - 1], j.astype(np.float32)], 1)


def release_offline(audio: np.ndarray, encoder, chunksize=(3, 5, 2)) -> np.ndarray:
    """The release's offline algorithm, restated independently (with an exact N)."""
    n = math.ceil(len(audio) * 25 / 16000)
    split = sum(chunksize) * 640 + 80
    pad = np.concatenate(
        [np.zeros(split - sum(chunksize[1:]) * 640, np.float32), audio, np.zeros(split, np.float32)]
    )
    out = []
    for i in range(0, n, chunksize[1]):
        enc = encoder.encode(pad[i * 640 : i * 640 + split])
        valid = enc[-sum(chunksize[1:]) * 2 : -chunksize[2] * 2]
        out.append(valid.reshape(chunksize[1], 2, -1).mean(1))
    return np.concatenate(out)[:n] if out else np.zeros((0, encoder.feat_dim), np.float32)


def ramp(n: int) -> np.ndarray:
    return np.arange(1, n + 1, dtype=np.float32)


def expected_positions(n_samples: int) -> np.ndarray:
    """Frame k averages HuBERT frames whose windows start at 640k - 80 and 640k + 240."""
    n = num_frames(n_samples)

    def v(t: np.ndarray) -> np.ndarray:  # ramp value of original sample t, 0 outside
        return np.where((t >= 0) & (t < n_samples), t + 1, 0).astype(np.float64)

    k = np.arange(n)
    first = (v(640 * k - 80) + v(640 * k + 240)) / 2
    last = (v(640 * k - 80 + WIN - 1) + v(640 * k + 240 + WIN - 1)) / 2
    j = 6.5 + 2 * (k % 5)  # the kept HuBERT frames of a chunk are 6..15
    return np.stack([first, last, j], 1)


LENGTHS = [0, 1, 639, 640, 641, 3200, 4479, 4480, 6480, 16000, 16001, 3200 * 7, 12345]


@pytest.mark.parametrize("n", LENGTHS)
def test_offline_matches_release_and_positions(n):
    ex = HubertFeatureExtractor(PositionEncoder())
    feats = ex.features(ramp(n))
    assert feats.shape == (-(-n // 640), 3)
    assert feats.dtype == np.float32
    np.testing.assert_array_equal(feats, release_offline(ramp(n), PositionEncoder()))
    np.testing.assert_array_equal(feats, expected_positions(n).astype(np.float32))


def test_one_encoder_call_per_five_frames():
    enc = PositionEncoder()
    HubertFeatureExtractor(enc).features(ramp(16000))  # 25 frames
    assert len(enc.calls) == 5
    # The first chunk starts 2000 zero samples before the audio.
    assert np.all(enc.calls[0][:2000] == 0) and enc.calls[0][2000] == 1


def test_num_frames_is_exact_ceil():
    assert num_frames(0) == 0 and num_frames(1) == 1 and num_frames(640) == 1
    assert num_frames(641) == 2 and num_frames(16000) == 25 and num_frames(252080) == 394
    # The release's float formula adds a frame here; the exact count is 7.
    assert math.ceil(4480 / 16000 * 25) == 8 and num_frames(4480) == 7


def run_stream(ex: HubertFeatureExtractor, audio: np.ndarray, sizes) -> tuple[np.ndarray, list]:
    stream = ex.stream()
    parts, counts, i, s = [], [], 0, 0
    while i < len(audio):
        size = sizes[s % len(sizes)]
        out = stream.push(audio[i : i + size])
        parts.append(out)
        counts.append((i + size, out.shape[0]))
        i += size
        s += 1
    parts.append(stream.flush())
    return np.concatenate(parts), counts


PUSH_SIZES = {
    "1": [1],
    "160": [160],
    "3200": [3200],
    "6480": [6480],
    "random": list(np.random.default_rng(0).integers(1, 5000, 50)),
}


STREAM_CASES = [
    (n, pushes)
    for pushes in PUSH_SIZES
    for n in LENGTHS
    if not (pushes == "1" and n > 7000)  # keep 1-sample pushes to the short lengths
]


@pytest.mark.parametrize(("n", "pushes"), STREAM_CASES)
def test_stream_equals_offline(n, pushes):
    ex = HubertFeatureExtractor(PositionEncoder())
    audio = ramp(n)
    streamed, _ = run_stream(ex, audio, PUSH_SIZES[pushes])
    np.testing.assert_array_equal(streamed, ex.features(audio))


def test_stream_emits_as_soon_as_a_chunk_is_complete():
    ex = HubertFeatureExtractor(PositionEncoder())
    stream = ex.stream()
    assert stream.push(ramp(4479)).shape == (0, 3)
    assert stream.push(np.ones(1, np.float32)).shape == (5, 3)  # 4480 samples = 280 ms
    assert stream.push(np.ones(3199, np.float32)).shape == (0, 3)
    assert stream.push(np.ones(1, np.float32)).shape == (5, 3)
    # 7680 samples = 12 frames; 10 are out, the last 2 need the look-ahead padding.
    assert stream.flush().shape == (2, 3)
    with pytest.raises(RuntimeError):
        stream.push(np.ones(10, np.float32))


def test_stream_with_real_random_audio_and_other_chunksize():
    rng = np.random.default_rng(1)
    audio = rng.uniform(-1, 1, 20000).astype(np.float32)

    class MeanEncoder:
        feat_dim = 2

        def encode(self, chunk):
            t = (chunk.shape[0] - WIN) // HOP + 1
            return np.stack(
                [[chunk[j * HOP : j * HOP + WIN].mean(), chunk[j * HOP]] for j in range(t)]
            )

    for chunksize in [(3, 5, 2), (2, 4, 1), (0, 3, 0)]:
        ex = HubertFeatureExtractor(MeanEncoder(), chunksize=chunksize)
        assert ex.chunk_len == sum(chunksize) * 640 + 80
        offline = ex.features(audio)
        assert offline.shape == (num_frames(20000), 2)
        if chunksize[2]:  # the release's slice [-14:-0] would be empty without look-ahead
            np.testing.assert_array_equal(offline, release_offline(audio, MeanEncoder(), chunksize))
        streamed, _ = run_stream(ex, audio, [777, 5, 4000])
        np.testing.assert_array_equal(streamed, offline)


def test_real_speech_frame_count():
    path = MEDIA_DIR / "ditto_example_speech.wav"
    if not path.exists():
        skip_missing(f"{MEDIA_DIR}")
    audio = load_audio(path)  # 15.755 s -> 252080 samples at 16 kHz
    ex = HubertFeatureExtractor(PositionEncoder())
    feats = ex.features(audio)
    assert feats.shape == (math.ceil(15.755 * 25), 3) == (394, 3)
    streamed, _ = run_stream(ex, audio, [3200])
    np.testing.assert_array_equal(streamed, feats)


def test_encoder_must_return_enough_frames():
    class Short:
        def encode(self, chunk):
            return np.zeros((10, 4), np.float32)

    with pytest.raises(ValueError, match=r"10 frames"):
        HubertFeatureExtractor(Short()).features(np.zeros(1000, np.float32))


# --- the release's ONNX interface, with a tiny model built here ---------------------------


def test_onnx_encoder(tmp_path):
    path = tmp_path / "hubert_streaming_fix_kv.onnx"
    w = tiny_hubert_onnx(path)
    enc = OnnxHubertEncoder(path)
    assert isinstance(enc, SpeechEncoder) and enc.feat_dim == 16
    chunk = np.random.default_rng(2).uniform(-1, 1, 6480).astype(np.float32)
    out = enc.encode(chunk)
    windows = np.stack([chunk[j * HOP : j * HOP + WIN] for j in range(20)])
    np.testing.assert_allclose(out, windows @ w[:, 0].T, atol=1e-5)

    audio = np.random.default_rng(3).uniform(-0.5, 0.5, 9000).astype(np.float32)
    ex = HubertFeatureExtractor(enc)
    feats = ex.features(audio)
    assert feats.shape == (15, 16) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, release_offline(audio, enc))
    np.testing.assert_array_equal(run_stream(ex, audio, [1000])[0], feats)


def test_onnx_encoder_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.onnx"):
        OnnxHubertEncoder(tmp_path / "missing.onnx")
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"garbage\.onnx"):
        OnnxHubertEncoder(bad)


# --- transformers' HubertModel, tiny random configuration ---------------------------------


@pytest.mark.slow  # importing transformers alone takes several seconds
def test_transformers_encoder(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    config = transformers.HubertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(8,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    torch.manual_seed(0)
    transformers.HubertModel(config).save_pretrained(tmp_path)
    enc = TransformersHubertEncoder(tmp_path)
    assert enc.feat_dim == 32 and enc.normalize is False and enc.where == "transformers, cpu"
    chunk = np.random.default_rng(4).uniform(-1, 1, 6480).astype(np.float32)
    out = enc.encode(chunk)
    assert out.shape == (20, 32) and out.dtype == np.float32
    with torch.no_grad():
        ref = enc.model(torch.from_numpy(chunk)[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-6)

    audio = np.random.default_rng(5).uniform(-0.5, 0.5, 7000).astype(np.float32)
    ex = HubertFeatureExtractor(enc)
    feats = ex.features(audio)
    assert feats.shape == (11, 32)
    np.testing.assert_allclose(feats, release_offline(audio, enc), atol=1e-6)

    with pytest.raises(CheckpointError, match=r"nowhere"):
        TransformersHubertEncoder(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("device", "available", "expected"),
    [
        ("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
        ("cuda", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),  # CPU onnxruntime
        (
            "cuda:0",
            ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
    ],
)
def test_onnx_providers_follow_the_device_and_the_install(monkeypatch, device, available, expected):
    import onnxruntime

    from talkinghead.audio.hubert import onnx_providers

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    assert onnx_providers(device) == expected
