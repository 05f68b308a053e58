"""Emotion labels for Ditto's training data: a classifier protocol and the HSEmotion adapter.

The release labels its training frames with HSEmotion's ``enet_b2_8`` (an EfficientNet-B2
trained on AffectNet's 8 expressions) on face boxes at 5 fps. `HSEmotionClassifier` runs
that network's ONNX file (the one the ``hsemotion-onnx`` package downloads to
``~/.hsemotion/enet_b2_8.onnx``, or any local copy) with onnxruntime, preprocessing as
that package does, and returns probabilities in Ditto's emotion order
(`talkinghead.methods.ditto.motion.conditions.EMOTIONS`).

HSEmotion's 8 classes come in another order (Anger, Contempt, Disgust, Fear, Happiness,
Neutral, Sadness, Surprise: alphabetical) than Ditto's (Angry, Disgust, Fear, Happy,
Neutral, Sad, Surprise, Contempt: AffectNet's label ids), so the columns are permuted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from talkinghead.errors import CheckpointError, TalkingHeadError

HSEMOTION_CLASSES: tuple[str, ...] = (
    "Anger",
    "Contempt",
    "Disgust",
    "Fear",
    "Happiness",
    "Neutral",
    "Sadness",
    "Surprise",
)
# Ditto's column i is HSEmotion's column HSEMOTION_TO_DITTO[i] (Angry, Disgust, Fear, Happy,
# Neutral, Sad, Surprise, Contempt).
HSEMOTION_TO_DITTO: tuple[int, ...] = (0, 2, 3, 4, 5, 6, 7, 1)
# The hsemotion-onnx package's preprocessing: RGB, resized, /255, ImageNet mean and std.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
HSEMOTION_CACHE = Path("~/.hsemotion")  # where the hsemotion-onnx package keeps its models
SPEC_PREFIX = "hsemotion:"


class EmotionClassifier(Protocol):
    """Face crops [N, H, W, 3] uint8 RGB -> emotion probabilities [N, 8].

    Columns in `talkinghead.methods.ditto.motion.conditions.EMOTIONS` order (Angry, Disgust,
    Fear, Happy, Neutral, Sad, Surprise, Contempt). Data preparation hands it square face-box
    crops of ``input_size`` pixels (an optional attribute; 260, enet_b2_8's, without it);
    with ``workers > 1`` it must be picklable. An optional ``name`` is recorded in the manifest.
    """

    def __call__(self, crops: np.ndarray) -> np.ndarray: ...


def resolve_hsemotion_path(path: str | Path) -> Path:
    """An ONNX file, or a model name of the hsemotion-onnx package's cache (``enet_b2_8``)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    cached = (HSEMOTION_CACHE / f"{path}.onnx").expanduser()
    if p.suffix != ".onnx" and cached.is_file():
        return cached
    raise CheckpointError(
        f"{path}: HSEmotion ONNX model not found; pass the path of enet_b2_8.onnx "
        "(the hsemotion-onnx package saves it in ~/.hsemotion/)"
    )


class HSEmotionClassifier:
    """HSEmotion's 8-class ONNX model (``enet_b2_8``) as an `EmotionClassifier`.

    The model takes ``input`` [N, 3, S, S] float32 (S = 260 for B2, 224 for B0 models) and
    gives 8 logits per face; they are soft-maxed and reordered to Ditto's order. The
    onnxruntime session is built lazily and dropped on pickling, so spawned workers
    each open their own.
    """

    def __init__(self, model_path: str | Path, *, providers: list[str] | None = None) -> None:
        self.model_path = resolve_hsemotion_path(model_path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.name = f"hsemotion:{self.model_path.name}"
        self._session: Any = None
        self.input_size = self._open_session_input_size()

    def _open_session_input_size(self) -> int:
        session = self._get_session()
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or len(shape) != 4 or shape[1] not in (3, "3"):
            raise CheckpointError(
                f"{self.model_path}: not an HSEmotion model (expected one input [N, 3, S, S], "
                f"got {[(i.name, i.shape) for i in inputs]})"
            )
        classes = outputs[0].shape[-1]
        if isinstance(classes, int) and classes != 8:
            raise CheckpointError(
                f"{self.model_path}: {classes} classes; an 8-class model "
                "(enet_b2_8, enet_b0_8_*) is needed"
            )
        return int(shape[2]) if isinstance(shape[2], int) else 260

    def _get_session(self) -> Any:
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError:
                raise TalkingHeadError(
                    "the HSEmotion classifier needs onnxruntime: pip install 'talkinghead[onnx]'"
                ) from None
            try:
                self._session = ort.InferenceSession(str(self.model_path), providers=self.providers)
            except Exception as exc:  # onnxruntime raises its own error types for bad files
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CheckpointError(
                    f"{self.model_path}: cannot load the ONNX model ({first})"
                ) from None
            self._input_name = self._session.get_inputs()[0].name
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # native sessions do not pickle
        return state

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] uint8 RGB -> [N, 3, S, S] float32, as hsemotion-onnx prepares a face."""
        import cv2

        size = self.input_size
        out = np.empty((len(crops), 3, size, size), np.float32)
        for i, crop in enumerate(crops):
            if crop.shape[:2] != (size, size):
                crop = cv2.resize(crop, (size, size))  # bilinear, the package's resize
            x = (crop.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
            out[i] = x.transpose(2, 0, 1)
        return out

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 face crops [N, H, W, 3], got {crops.dtype} {crops.shape}"
            )
        session = self._get_session()
        logits = np.asarray(
            session.run(None, {self._input_name: self.preprocess(crops)})[0], np.float64
        )
        if logits.shape != (len(crops), 8):
            raise ValueError(
                f"{self.model_path}: output {logits.shape}, expected {(len(crops), 8)}"
            )
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs = e / e.sum(1, keepdims=True)
        return probs[:, list(HSEMOTION_TO_DITTO)].astype(np.float32)


__all__ = [
    "HSEMOTION_CLASSES",
    "HSEMOTION_TO_DITTO",
    "SPEC_PREFIX",
    "EmotionClassifier",
    "HSEmotionClassifier",
    "resolve_hsemotion_path",
]
