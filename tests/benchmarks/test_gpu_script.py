"""benchmarks/gpu.sh, the prepared GPU run, checked on the CPU so that a lent GPU's few
minutes are not lost to a broken script: every step runs (tiny networks, --smoke), its
figures are tagged and saved, the budget and the step selection hold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _conformance import MEDIA_DIR, PORTRAIT, REPO_ROOT, skip_missing

SCRIPT = REPO_ROOT / "benchmarks" / "gpu.sh"
STEPS = [
    "env",
    "frames-b16",
    "e2e-fp16",
    "e2e-fp16-1080p",
    "frames-b16-fp16",
    "frames-b1",
    "e2e-fp16-low-latency",
    "e2e-fp32",
    "precision",
    "tests",
]


def run_script(results: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "RESULTS": str(results), "OMP_NUM_THREADS": "2", **env}
    environment.pop("OUT", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args, sys.executable],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )


def summary(out: str) -> dict[str, str]:
    lines = out.split("## summary", 1)[1].splitlines()[1:]
    return dict(line.strip().split(": ", 1) for line in lines if ": " in line)


def test_smoke_run_of_every_step_with_a_kit(tmp_path) -> None:
    pytest.importorskip("mediapipe")  # to record the kit's face, as gpu_kit.sh does
    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA_DIR}")
    from talkinghead.face.recorded import RecordedFaceAnalyzer
    from talkinghead.media.source import load_source

    kit = tmp_path / "kit"
    shutil.copytree(MEDIA_DIR, kit / "media")
    rgb = load_source(PORTRAIT).frames[0]
    RecordedFaceAnalyzer.record(rgb).save(kit / "media" / "ditto_example_face.face.npz")

    done = run_script(tmp_path / "results", "--smoke", GPU_KIT=str(kit))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert list(summary(done.stdout)) == STEPS
    assert all(v.startswith("ok") for v in summary(done.stdout).values()), done.stdout[-3000:]
    assert "--face" in done.stdout  # the pipeline steps replayed the kit's recorded face
    rows = [json.loads(line) for line in (tmp_path / "results" / "figures.jsonl").open()]
    assert {row["step"] for row in rows} >= set(STEPS) - {"tests"}
    e2e = next(r for r in rows if r["step"] == "e2e-fp16-1080p")
    assert e2e["source_hw"] == [1080, 1920] and e2e["end_to_end_fps"] > 0
    stages = {(r.get("stage"), r.get("runtime")) for r in rows if r["step"] == "frames-b16"}
    assert {("warp", "forms"), ("decode", "onnx"), ("paste", None), ("encode", None)} <= stages
    assert (tmp_path / "results" / "gpu.log").stat().st_size > 0


def test_budget_and_step_selection(tmp_path) -> None:
    # GPU mode on a CPU: the env step runs, says there is no CUDA, and the run stops
    # there (exit 2). A spent budget runs nothing and says so (exit 3: nothing failed,
    # something had no time).
    done = run_script(tmp_path, GPU_STEPS="env,precision")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no CUDA device: nothing to time here" in done.stdout
    env = json.loads((tmp_path / "figures.jsonl").read_text())
    assert env["step"] == "env" and env["cuda"] is False and env["talkinghead"] == "imports"
    spent = run_script(tmp_path, "--smoke", GPU_STEPS="env,precision", GPU_BUDGET_S="0")
    assert spent.returncode == 3
    assert summary(spent.stdout) == {
        "env": "not run, the budget was spent",
        "precision": "not run, the budget was spent",
    }
