"""DeepSpeech-style character probabilities (a tiny random wav2vec2 CTC model) and
DiffTalk's per-frame windows of them."""

from __future__ import annotations

import numpy as np
import pytest

from _dithead_helpers import save_tiny_wav2vec2
from talkinghead.audio.ctc import (
    CharProbabilityEncoder,
    Wav2Vec2CTCEncoder,
    frame_windows,
    neighbour_indices,
    neighbour_windows,
)
from talkinghead.errors import CheckpointError


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Wav2Vec2CTCEncoder:
    return Wav2Vec2CTCEncoder(save_tiny_wav2vec2(tmp_path_factory.mktemp("w2v")))


def test_character_probabilities_at_50_hz(encoder):
    assert isinstance(encoder, CharProbabilityEncoder)
    assert (encoder.feature_dim, encoder.rate) == (32, 50.0)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, 16000 + 100).astype(np.float32)
    probs = encoder.probabilities(audio)
    assert probs.shape == (51, 32)  # ceil(16100 / 320)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert encoder.probabilities(audio[:0]).shape == (0, 32)


def test_long_audio_runs_in_chunks_with_context(encoder, monkeypatch):
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, 3 * 16000).astype(np.float32)
    whole = encoder.probabilities(audio)
    lengths = []
    run = encoder._run
    monkeypatch.setattr(encoder, "_run", lambda x: lengths.append(len(x)) or run(x))
    monkeypatch.setattr(encoder, "chunk_steps", 50)
    monkeypatch.setattr(encoder, "context_steps", 10)
    chunked = encoder.probabilities(audio)
    assert chunked.shape == whole.shape == (150, 32)
    assert lengths == [60 * 320 + 80, 70 * 320 + 80, 60 * 320 + 80]
    # The convolutional front end sees the same samples; only attention's reach differs.
    assert np.abs(chunked - whole).max() < 0.2


def test_missing_model_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Wav2Vec2CTCEncoder(tmp_path / "nope")


def test_a_hub_model_out_of_reach_is_one_line_saying_what_to_do(tmp_path, monkeypatch):
    """transformers' offline message spans two lines; it is joined, and the hint names
    where a local copy goes."""
    from talkinghead.audio.ctc import ctc_vocab_size

    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as info:
        ctc_vocab_size("someone/wav2vec2-not-cached-here")
    message = str(info.value)
    assert "\n" not in message and "cannot read the wav2vec2 config" in message
    assert "put a copy of someone/wav2vec2-not-cached-here in <checkpoints>/wav2vec2/" in message


def test_frame_windows_are_centred_and_clamped():
    feats = np.arange(100, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    win = frame_windows(feats, num_frames=50, fps=25)
    assert win.shape == (50, 16, 3)
    # frame i sits at row 2i; its window is rows 2i - 8 .. 2i + 7
    np.testing.assert_array_equal(win[10, :, 0], np.arange(12, 28))
    np.testing.assert_array_equal(win[0, :, 0], [0] * 9 + list(range(1, 8)))
    np.testing.assert_array_equal(win[49, -1, 0], 99)
    # 30 fps: row round(i * 50 / 30)
    assert frame_windows(feats, 3, fps=30)[2, 8, 0] == 3


def test_neighbour_windows_for_the_temporal_filter():
    windows = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((1, 16, 2), np.float32)
    nb = neighbour_windows(windows, radius=8)
    assert nb.shape == (5, 17, 16, 2)
    np.testing.assert_array_equal(nb[2, :, 0, 0], np.clip(np.arange(-6, 11), 0, 4))
    np.testing.assert_array_equal(
        neighbour_indices(10, 1, np.array([0, 9])), [[0, 0, 1], [8, 9, 9]]
    )


def test_one_wrapper_serves_both_methods(encoder):
    """DiffTalk's probabilities and DiT-Head's per-frame logits come from the same logits."""
    audio = np.random.default_rng(2).uniform(-0.5, 0.5, 6400).astype(np.float32)  # 0.4 s
    logits = encoder.logits(audio)
    assert logits.shape == (20, 32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = encoder.probabilities(audio)
    np.testing.assert_allclose(probs, e / e.sum(-1, keepdims=True), atol=1e-6)
    frames = encoder.frame_logits(audio)
    assert frames.shape == (10, 32)
    np.testing.assert_allclose(frames, logits.reshape(10, 2, 32).mean(1), atol=1e-6)
    assert encoder.logits(audio, 30)[20:].shape == (10, 32)  # padded with silence


def test_a_local_model_loads_without_transformers_weight_bar(tmp_path, capsys):
    """transformers 5 drew "Loading weights: 100%|...|" between prepare-data's own lines."""
    from transformers.utils import logging as hf_logging

    directory = save_tiny_wav2vec2(tmp_path / "w2v")
    capsys.readouterr()
    assert hf_logging.is_progress_bar_enabled()
    Wav2Vec2CTCEncoder(directory)
    captured = capsys.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert hf_logging.is_progress_bar_enabled()  # hub downloads keep their bars
