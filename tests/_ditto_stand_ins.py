"""Stand-ins for the Ditto data-preparation tests, importable by name (MODULE:NAME options)."""

from __future__ import annotations

import numpy as np


class StandInEmotion:
    """Emotion 'classifier': a fixed function of each face box's mean colour."""

    name = "stand-in"
    input_size = 64  # the face-box crops data preparation hands it

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        assert crops.dtype == np.uint8 and crops.shape[1:] == (64, 64, 3)
        logits = np.zeros((crops.shape[0], 8), np.float32)
        logits[:, 3] = crops.reshape(crops.shape[0], -1).mean(1) / 32.0
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


recorded_calls: list[dict] = []


def fake_prepare(videos_dir, out_dir, *, checkpoints=None, workers=1, progress=None, **options):
    """Stands in for another method's prepare_dataset in the dispatch test."""
    recorded_calls.append(
        {"videos_dir": videos_dir, "checkpoints": checkpoints, "workers": workers, **options}
    )
    progress(1, 1)
    return "fake report"
