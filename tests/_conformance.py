"""Access to ../shared/conformance: generated official weights, inputs and expected outputs."""

from __future__ import annotations

import importlib.util
import json
import os
from functools import cached_property
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT.parent / "shared" / "conformance"


MEDIA_DIR = Path(os.environ.get("TALKINGHEAD_MEDIA_DIR", REPO_ROOT.parent / "shared" / "media"))
PORTRAIT = MEDIA_DIR / "ditto_example_face.jpg"
SPEECH = MEDIA_DIR / "ditto_example_speech.wav"
# Every skip for absent fixtures or media says this, so the run's summary can count them.
MISSING_FIXTURES = "shared test data not found"


def skip_missing(what: str) -> None:
    """Skip the calling test because `what` (a folder or file of ../shared) is absent."""
    import pytest

    pytest.skip(
        f"{MISSING_FIXTURES}: {what} (set TALKINGHEAD_CONFORMANCE_DIR/TALKINGHEAD_MEDIA_DIR)"
    )


def conformance_path() -> Path:
    """Where the conformance fixtures are looked for (they may be absent)."""
    return Path(os.environ.get("TALKINGHEAD_CONFORMANCE_DIR", DEFAULT_DIR))


def conformance_dir() -> Path | None:
    path = conformance_path()
    return path if (path / "weights.py").is_file() else None


class Conformance:
    """The fixture set: `W` is the generator module, `checkpoint(kind)` a generated file."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        spec = importlib.util.spec_from_file_location(
            "_th_conformance_weights", root / "weights.py"
        )
        assert spec and spec.loader
        self.W: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.W)
        self.expected = root / "expected_seed0"
        self._state_dicts: dict[str, dict] = {}

    @cached_property
    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())

    @cached_property
    def cases(self) -> dict:
        return json.loads((self.expected / "cases.json").read_text())["cases"]

    def case(self, name: str) -> tuple[dict, np.lib.npyio.NpzFile]:
        meta = self.cases[name]
        return meta, np.load(self.expected / meta["npz"])

    def state_dict(self, network: str) -> dict:
        if network not in self._state_dicts:
            self._state_dicts[network] = self.W.build_state_dict(
                network, seed=0, manifest=self.manifest, base_dir=str(self.root)
            )
        return self._state_dicts[network]

    @property
    def release_dir(self) -> Path:
        """A checkpoints directory in the release's layout (ditto_pytorch/models/*.pth)."""
        return self.workdir / "checkpoints"

    def checkpoint(self, network: str) -> Path:
        """Path of the generated seed-0 checkpoint, written in the release's container."""
        net = self.manifest["networks"][network]
        path = self.release_dir / "ditto_pytorch" / "models" / net["checkpoint_name"]
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            self.W.save_checkpoint(self.state_dict(network), str(path), net["container"]["format"])
        return path

    def input(self, case: str, name: str) -> np.ndarray:
        """A case's input: the stored array when there is one, else rebuilt from its recipe."""
        meta, z = self.case(case)
        spec = meta["inputs"][name]
        if spec.get("stored"):
            return z[spec["stored"]]
        return self.W.input_from_spec(spec["make_input"])

    def check(
        self, case: str, name: str, actual, *, intermediate: bool = False, atol_scale: float = 1.0
    ) -> None:
        """Assert `actual` matches the stored output within the README's tolerances."""
        meta, z = self.case(case)
        out = meta["intermediates" if intermediate else "outputs"][name]
        if isinstance(actual, torch.Tensor):
            actual = actual.detach().cpu().numpy()
        actual = np.asarray(actual, dtype=np.float64)
        assert list(actual.shape) == list(out["shape"]), (
            f"{case}.{name}: shape {actual.shape} != {out['shape']}"
        )
        tol = out["tolerance"]
        rtol, atol = tol["rtol"], tol["atol"] * atol_scale
        if out["storage"] == "full":
            expected = z[out["key"]].astype(np.float64)
            got = actual
        else:
            expected = z[out["val_key"]].astype(np.float64)
            got = actual.reshape(-1)[z[out["idx_key"]]]
        err = np.abs(got - expected)
        bound = atol + rtol * np.abs(expected)
        worst = int(np.argmax(err - bound))
        assert np.all(err <= bound), (
            f"{case}.{name}: max abs err {err.max():.3g} (atol {atol:g}); "
            f"worst at {worst}: {got.reshape(-1)[worst]!r} vs {expected.reshape(-1)[worst]!r}"
        )
        if out["storage"] != "full":
            stats, want = self.W.tensor_stats(actual), out["stats"]
            for key in ("l2", "abs_sum", "std"):
                assert abs(stats[key] - want[key]) <= 1e-5 * abs(want[key]), (
                    case,
                    name,
                    key,
                    stats[key],
                    want[key],
                )
            assert abs(stats["sum"] - want["sum"]) <= 1e-5 * want["abs_sum"], (case, name, "sum")
            for key in ("min", "max"):
                assert abs(stats[key] - want[key]) <= atol + rtol * abs(want[key]), (
                    case,
                    name,
                    key,
                )


def portrait_face_analyzer():
    """The face analyser for tests that register the example portrait: None (the
    pipeline's own default, mediapipe) where mediapipe is installed, else the portrait's
    recorded analysis beside it (``ditto_example_face.face.npz``, as benchmarks/gpu_kit.sh
    records it for GPU images without mediapipe); the test is skipped with neither."""
    if importlib.util.find_spec("mediapipe") is not None:
        return None
    recorded = PORTRAIT.with_suffix(".face.npz")
    if not recorded.is_file():
        import pytest

        pytest.skip(f"no mediapipe and no recorded face ({recorded}) to register the portrait")
    from talkinghead.face.recorded import RecordedFaceAnalyzer

    return RecordedFaceAnalyzer.load(recorded)


def portrait_rgb() -> np.ndarray:
    """The example portrait as RGB uint8; the calling test is skipped when it is absent."""
    import cv2

    if not PORTRAIT.is_file():
        skip_missing(f"{PORTRAIT}")
    return cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)
