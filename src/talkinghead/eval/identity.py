"""CSIM: cosine similarity of ArcFace embeddings between the source identity and generated frames.

The embedder is an InsightFace ArcFace ONNX model (``w600k_r50.onnx`` of the
buffalo_l pack: input [N, 3, 112, 112], output [N, 512]). Faces are aligned to
its 5-point template (`talkinghead.eval.face.arcface_align`) and normalised as
InsightFace's ``ArcFaceONNX`` does: ``(rgb - 127.5) / 127.5``, except for the old
MXNet exports whose graph starts with its own Sub/Mul nodes (then raw 0..255).

CSIM of a video = the mean over the sampled frames of ``cos(e(frame), e(source))``,
where the source is the given identity image, else the reference video's first
frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from talkinghead.errors import CheckpointError


class ArcFaceEmbedder:
    """Aligned 112x112 RGB uint8 faces [N, 112, 112, 3] -> embeddings [N, D] (float64)."""

    def __init__(self, path: str | os.PathLike[str], providers: list[str] | None = None) -> None:
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        try:
            graph = onnx.load(str(self.path), load_external_data=False).graph
            self.session = ort.InferenceSession(
                str(self.path), providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # onnx/onnxruntime raise several unrelated types
            raise CheckpointError(f"{self.path}: not a loadable ONNX model ({e})") from None
        first = [n.name for n in graph.node[:8]]
        mxnet = any(n.startswith(("Sub", "_minus")) for n in first) and any(
            n.startswith(("Mul", "_mul")) for n in first
        )
        self.mean, self.std = (0.0, 1.0) if mxnet else (127.5, 127.5)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        shape = inp.shape
        self.size = (int(shape[2]), int(shape[3])) if len(shape) == 4 else (112, 112)
        # A fixed batch dimension of 1 means one face per run.
        self.max_batch = 1 if shape[0] == 1 else 32

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        faces = np.asarray(faces)
        if faces.ndim != 4 or faces.shape[1:3] != self.size:
            raise ValueError(
                f"expected faces [N, {self.size[0]}, {self.size[1]}, 3], got {faces.shape}"
            )
        blob = ((faces.astype(np.float32) - self.mean) / self.std).transpose(0, 3, 1, 2)
        out = [
            self.session.run([self.output_name], {self.input_name: blob[i : i + self.max_batch]})[0]
            for i in range(0, len(blob), self.max_batch)
        ]
        return np.concatenate(out).reshape(len(blob), -1).astype(np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of a [N, D] with b [D] (or row-wise with b [N, D])."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    num = (a * b).sum(-1)
    return num / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def csim(source_embedding: np.ndarray, frame_embeddings: np.ndarray) -> float:
    """Mean cosine similarity of the frames' embeddings to the source's."""
    return float(np.mean(cosine(frame_embeddings, source_embedding.reshape(-1))))
