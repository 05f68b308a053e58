"""ONNX export: release I/O names, onnxruntime agrees with PyTorch (dynamic batch), CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from talkinghead.cli import app
from talkinghead.export import ONNX_IO_NAMES, OnnxNetwork, export_onnx
from talkinghead.models import load_official

pytest.importorskip("onnxruntime")

# Small spatial sizes keep the full-size networks cheap; every one of them is size-agnostic.
# (The warp's hourglass halves its 32 x 32 five times: no smaller.)
SMALL_INPUTS = {
    "appearance_extractor": lambda b: (torch.rand(b, 3, 64, 64),),
    "motion_extractor": lambda b: (torch.rand(b, 3, 128, 128),),
    "warp_network": lambda b: (
        torch.randn(b, 32, 16, 32, 32) * 0.4,
        torch.rand(b, 21, 3) - 0.5,
        torch.rand(b, 21, 3) - 0.5,
    ),
    "decoder": lambda b: (torch.randn(b, 256, 8, 8) * 0.3,),
    "stitch_network": lambda b: (torch.rand(b, 21, 3) - 0.5, torch.rand(b, 21, 3) - 0.5),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SMALL_INPUTS))
def test_onnxruntime_matches_pytorch(conformance, tmp_path, kind: str) -> None:
    net = load_official(kind, conformance.checkpoint(kind))
    path = export_onnx(net, kind, tmp_path / f"{kind}.onnx", inputs=SMALL_INPUTS[kind](1))
    runner = OnnxNetwork(path, providers=["CPUExecutionProvider"])
    assert (tuple(runner.input_names), tuple(runner.output_names)) == ONNX_IO_NAMES[kind]
    x = SMALL_INPUTS[kind](2)  # another batch size than the traced one
    with torch.no_grad():
        expected = net(*x)
    got = runner(*x)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "case"),
    [
        ("appearance_extractor", "appearance_extractor"),
        ("motion_extractor", "motion_extractor"),
        ("stitch_network", "stitch_network"),
        ("lmdm", "lmdm_t500"),
    ],
)
def test_onnxruntime_reproduces_release_numbers(
    conformance, tmp_path, kind: str, case: str
) -> None:
    net = load_official(kind, conformance.checkpoint(kind))
    meta, _ = conformance.case(case)
    inputs = [torch.from_numpy(conformance.input(case, name)) for name in meta["inputs"]]
    runner = OnnxNetwork(export_onnx(net, kind, tmp_path / f"{kind}.onnx", inputs=inputs))
    got = runner(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    for name, value in zip(meta["outputs"], got, strict=True):
        conformance.check(case, name, value.reshape(meta["outputs"][name]["shape"]), atol_scale=2.0)


def test_export_onnx_cli(conformance, tmp_path) -> None:
    conformance.checkpoint("stitch_network")
    out = tmp_path / "onnx"
    result = CliRunner().invoke(
        app,
        [
            "export-onnx",
            "--checkpoints",
            str(conformance.release_dir),
            "--output",
            str(out),
            "--kind",
            "stitch_network",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "stitch_network.onnx").is_file()
    assert not list(out.glob("*.tmp"))


def test_export_onnx_cli_reports_missing_checkpoints(tmp_path, monkeypatch, capsys) -> None:
    from _cli_in_process import run_cli

    args = ["export-onnx", "--checkpoints", str(tmp_path), "--output", str(tmp_path / "o")]
    proc = run_cli(args, monkeypatch, capsys)
    assert proc.returncode == 1
    assert "no release checkpoints found" in proc.stderr and "Traceback" not in proc.stderr


def test_onnx_network_rejects_missing_file(tmp_path) -> None:
    from talkinghead.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        OnnxNetwork(tmp_path / "none.onnx")


def test_two_exports_of_one_file_at_once_both_succeed(tmp_path, monkeypatch) -> None:
    """Batch workers export the same cached graph at the same time: the one that finishes
    second must not find its temporary file taken (they once shared one name)."""
    from talkinghead.models.spade_decoder import SPADEDecoder

    net = SPADEDecoder(block_expansion=4, max_features=16, out_channels=8, spade_hidden=8)
    target = tmp_path / "decoder.onnx"
    real_export = torch.onnx.export
    raced = []

    def export_while_another_finishes(*args, **kwargs):
        real_export(*args, **kwargs)
        if not raced:  # the other worker writes and renames the same file meanwhile
            raced.append(True)
            export_onnx(net, "decoder", target, inputs=(torch.randn(1, 16, 4, 4),))

    monkeypatch.setattr(torch.onnx, "export", export_while_another_finishes)
    assert export_onnx(net, "decoder", target, inputs=(torch.randn(1, 16, 4, 4),)) == target
    assert raced and [p.name for p in tmp_path.iterdir()] == ["decoder.onnx"]
    assert OnnxNetwork(target)(torch.randn(2, 16, 4, 4)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("kind", ["warp_network", "decoder", "stitch_network", "lmdm"])
def test_example_inputs_fit_networks_of_any_size(kind: str) -> None:
    """The export's (and the benchmarks') example inputs follow a network's configured
    sizes: the tiny warp's feature volume has 16 channels of depth 2, not the release's
    32 x 16 (they once fell back to the release's shapes)."""
    from _tiny_release import SIZES, TINY_LMDM
    from talkinghead.export.onnx import example_inputs
    from talkinghead.models import OFFICIAL_NETWORKS

    sizes = TINY_LMDM if kind == "lmdm" else SIZES.get(kind, {})
    net = OFFICIAL_NETWORKS[kind].factory()(**sizes).eval()
    inputs = example_inputs(kind, 2, net)
    if kind == "warp_network":
        assert inputs[0].shape == (2, 16, 2, 64, 64)
    with torch.inference_mode():
        net(*inputs)


@pytest.mark.parametrize("kind", list(ONNX_IO_NAMES))
def test_export_prints_no_warnings(kind: str, tmp_path) -> None:
    """`--runtime auto` exports the decoder on a user's first run: the exporter's warnings
    (the decoder's instance norm "set to train=True") are known and harmless, and were
    printed above the progress bars."""
    import warnings

    from _tiny_release import SIZES, TINY_LMDM
    from talkinghead.export.onnx import example_inputs
    from talkinghead.models import OFFICIAL_NETWORKS

    sizes = TINY_LMDM if kind == "lmdm" else SIZES.get(kind, {})
    net = OFFICIAL_NETWORKS[kind].factory()(**sizes).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_onnx(net, kind, tmp_path / f"{kind}.onnx", inputs=example_inputs(kind, 1, net))
