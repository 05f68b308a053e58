"""`talkinghead export-onnx` on a checkpoints folder that `generate` loads."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny_release import SIZES, build_tiny_release

pytest.importorskip("onnxruntime")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """Networks of other sizes than the release's, described by the talkinghead.json sidecar
    (as a trained motion model installed with `train-motion --install-to` is)."""
    return build_tiny_release(tmp_path_factory.mktemp("release"))


@pytest.fixture
def cli(monkeypatch, capsys):
    from talkinghead.cli import main

    def run_cli(*args: str | Path) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["talkinghead", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        out, err = capsys.readouterr()
        return exit_info.value.code, out, ANSI.sub("", err)

    return run_cli


def _one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_export_builds_the_networks_the_sidecar_describes(release, tmp_path, cli) -> None:
    from talkinghead.export import ONNX_IO_NAMES, OnnxNetwork

    out = tmp_path / "onnx"
    code, stdout, err = cli("export-onnx", "--checkpoints", release, "-o", out, "--kind", "lmdm")
    assert code in (0, None), err
    path = out / "lmdm_v0.4_hubert.onnx"
    assert f"lmdm: {path}" in stdout
    runner = OnnxNetwork(path, providers=["CPUExecutionProvider"])
    assert (tuple(runner.input_names), tuple(runner.output_names)) == ONNX_IO_NAMES["lmdm"]
    dim, cond_dim = 265, SIZES["lmdm"]["audio_feat_dim"]  # the sidecar's, not the release's 1103
    g = np.random.default_rng(0)
    x = g.standard_normal((2, 80, dim), dtype=np.float32)
    pred_noise, x_start = runner(
        x,
        g.standard_normal((2, dim), dtype=np.float32),
        g.standard_normal((2, 80, cond_dim), dtype=np.float32),
        np.full((2,), 500, dtype=np.int64),
    )
    assert pred_noise.shape == x_start.shape == (2, 80, dim)
    assert np.isfinite(x_start).all()
    assert sorted(p.name for p in out.iterdir()) == [path.name]  # no temporary file left


def test_an_existing_output_file_is_refused(release, tmp_path, cli) -> None:
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's notes")
    code, out, err = cli("export-onnx", "--checkpoints", release, "-o", mine, "--kind", "lmdm")
    line = _one_error_line(code, err)
    assert "notes.txt: is a file; give a folder for the .onnx files" in line
    assert mine.read_text() == "the user's notes" and out == ""


def test_existing_onnx_files_are_replaced_only_with_overwrite(
    release, tmp_path, cli, monkeypatch
) -> None:
    import talkinghead.models

    out = tmp_path / "ditto_onnx"
    out.mkdir()
    theirs = out / "stitch_network.onnx"
    theirs.write_bytes(b"the release's own onnx file")
    args = ["export-onnx", "--checkpoints", release, "-o", out, "--kind", "stitch_network"]

    def no_model(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before the output was checked")

    with monkeypatch.context() as patch:
        patch.setattr(talkinghead.models, "load_official", no_model)
        code, _, err = cli(*args)
    line = _one_error_line(code, err)
    assert "stitch_network.onnx exists" in line and "--overwrite" in line
    assert theirs.read_bytes() == b"the release's own onnx file"

    code, _, err = cli(*args, "--overwrite")
    assert code in (0, None), err
    from talkinghead.export import OnnxNetwork

    runner = OnnxNetwork(theirs, providers=["CPUExecutionProvider"])
    kp = torch.rand(1, 21, 3).numpy()
    assert runner(kp, kp).shape[0] == 1
