"""LSE: the MFCC front end, the offset search (with a stand-in SyncNet whose answer is known),
and the syncnet_v2 architecture loaded from a file in the standard layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _eval_fixtures import syncnet_file
from talkinghead.eval.mfcc import frame_signal, mel_filterbank, mfcc, syncnet_mfcc, to_pcm16
from talkinghead.eval.sync import lse, score_from_embeddings, sync_windows


def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(16000 + 357) * 3000).astype(np.int16)
    np.testing.assert_allclose(mfcc(x), psf.mfcc(x, 16000), rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(mel_filterbank(), psf.get_filterbanks(26, 512, 16000))


def test_mfcc_framing_and_scale():
    # 1 + ceil((n - 400) / 160) frames; a short signal is one zero-padded frame.
    assert frame_signal(np.ones(1000), 400, 160).shape == (5, 400)
    assert frame_signal(np.ones(100), 400, 160).shape == (1, 400)
    assert mfcc(np.ones(16000)).shape == (99, 13)
    # The int16 scale matters: coefficient 0 is the log energy, other ones are scale-free.
    x = np.random.default_rng(1).uniform(-0.5, 0.5, 4000)
    a, b = syncnet_mfcc(x), mfcc(x).T
    assert a.shape == b.shape == (13, 24)
    np.testing.assert_allclose(a[0] - b[0], 2 * np.log(32768), atol=0.01)
    np.testing.assert_allclose(a[1:], b[1:], atol=0.02)
    assert to_pcm16(np.array([1.0, -1.0, 0.5]))[0] == 32767


class BrightnessEnergySync:
    """Stand-in SyncNet: the video embedding is the 5 frames' brightness and the audio one the
    log energy of the 4 MFCC frames per video frame, both standardised, so a window's two
    embeddings coincide exactly when the audio's loudness follows the video's brightness."""

    @staticmethod
    def _standardise(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:  # [N, 3, 5, H, W]
        return self._standardise(frames.mean(dim=(1, 3, 4)))

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:  # [N, 1, 13, 20]
        return self._standardise(mfcc[:, 0, 0].reshape(-1, 5, 4).mean(-1))


def _loudness_track(levels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """640 samples of noise per video frame at the given log amplitudes."""
    noise = rng.standard_normal((len(levels), 640))
    return (noise * np.exp(levels)[:, None] * 0.01).reshape(-1)


@pytest.mark.parametrize("shift", [-4, -1, 0, 2, 6])
def test_offset_search_finds_the_shift(shift):
    rng = np.random.default_rng(0)
    n = 40
    levels = rng.uniform(-1.5, 1.5, n + 20)  # per 25 fps frame
    brightness = 128 + 60 * levels[10 : 10 + n]
    crops = np.broadcast_to(brightness[:, None, None, None], (n, 8, 8, 3)).astype(np.uint8)
    # Audio delayed by `shift` frames: frame t's loudness plays at t + shift.
    audio = _loudness_track(levels[10 - shift : 10 - shift + n], rng)
    score = lse(BrightnessEnergySync(), crops, audio)
    assert score.offset == -shift  # positive offset: the audio comes early
    assert len(score.mean_dists) == 31
    assert score.lse_d == pytest.approx(score.mean_dists.min())
    assert score.lse_c == pytest.approx(np.median(score.mean_dists) - score.mean_dists.min())
    assert score.lse_c > 0.5


def test_score_from_designed_embeddings():
    # Audio window j carries video window j - 3's embedding: the best shift is +3 (offset -3).
    rng = np.random.default_rng(2)
    v = torch.from_numpy(rng.standard_normal((30, 8))).float()
    a = torch.roll(v, 3, dims=0)
    s = score_from_embeddings(v, a)
    assert s.offset == -3
    # At shift +3 the last 3 video windows meet the zero padding: distance |v + eps|.
    tail = torch.linalg.vector_norm(v[-3:] + 1e-6, dim=1).sum() / 30
    assert s.lse_d == pytest.approx(float(tail), rel=1e-4)
    assert s.lse_d == pytest.approx(float(s.mean_dists[15 + 3]))


def test_window_count_follows_the_reference():
    assert sync_windows(100, 16000 * 4) == 95
    assert sync_windows(100, 640 * 50) == 45
    with pytest.raises(ValueError, match="at least 6 frames"):
        lse(BrightnessEnergySync(), np.zeros((5, 8, 8, 3), np.uint8), np.zeros(16000))


@pytest.fixture(scope="module")
def syncnet(tmp_path_factory):
    from talkinghead.eval.networks import load_syncnet

    path = syncnet_file(tmp_path_factory.mktemp("syncnet"))
    return path, load_syncnet(path)


def test_syncnet_layout(syncnet):
    path, _ = syncnet
    sd = torch.load(path, weights_only=True)
    assert sd["netcnnaud.0.weight"].shape == (64, 1, 3, 3)
    assert sd["netcnnaud.18.weight"].shape == (512, 256, 5, 4)
    assert sd["netcnnlip.0.weight"].shape == (96, 3, 5, 7, 7)
    assert sd["netcnnlip.18.weight"].shape == (512, 256, 1, 6, 6)
    assert sd["netfclip.3.weight"].shape == sd["netfcaud.3.weight"].shape == (1024, 512)
    assert len(sd) == 102
    # Files saved from syncnet_python's SyncNetInstance carry a "__S__." prefix.
    from talkinghead.eval.networks import load_syncnet

    prefixed = path.with_name("prefixed.model")
    torch.save({f"__S__.{k}": v for k, v in sd.items()}, prefixed)
    load_syncnet(prefixed)
    # The 2017 file predates BatchNorm's num_batches_tracked and uses the legacy format.
    old = path.with_name("old.model")
    sd_old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd_old, old, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(
        load_syncnet(old).state_dict()["netfclip.3.weight"], sd["netfclip.3.weight"]
    )


@pytest.mark.slow
def test_syncnet_scores_are_deterministic(syncnet):
    _, model = syncnet
    rng = np.random.default_rng(3)
    crops = rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    audio = rng.uniform(-0.3, 0.3, 640 * 8).astype(np.float32)
    a = lse(model, crops, audio)
    b = lse(model, crops, audio, batch_size=2)
    assert np.isfinite(a.lse_d) and a.lse_c >= 0 and -15 <= a.offset <= 15
    np.testing.assert_allclose(a.mean_dists, b.mean_dists, rtol=1e-5)
