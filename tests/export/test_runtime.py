"""Which runtimes run the networks' inference forms, and the polyphase decoder through ONNX."""

from __future__ import annotations

import pytest
import torch

from talkinghead.export.runtime import (
    OnnxRuntimeNetwork,
    available_providers,
    inference_form,
    runs_in_torch,
    runtime_network,
    uses_inference_forms,
    weights_digest,
)
from talkinghead.models import load_official
from talkinghead.models.spade_decoder import PolyphaseSPADEDecoder, SPADEDecoder
from talkinghead.models.warping_network import is_inference_form


def test_every_runtime_but_torch_runs_the_inference_forms() -> None:
    assert not uses_inference_forms("torch", "cpu") and not uses_inference_forms("torch", "cuda")
    assert uses_inference_forms("auto", "cpu") and not uses_inference_forms("auto", "cuda")
    assert all(uses_inference_forms(r, "cpu") for r in ("compile", "onnx"))
    assert runs_in_torch("torch", "cpu") and not runs_in_torch("auto", "cpu")
    assert runs_in_torch("auto", "cuda")  # on the GPU auto is plain torch: nothing measured


def test_auto_warp_on_cpu_is_its_inference_form_and_torch_the_module_itself(tmp_path) -> None:
    from talkinghead.models import OFFICIAL_NETWORKS

    warp = OFFICIAL_NETWORKS["warp_network"].factory()().eval()
    assert runtime_network(warp, "warp_network", "torch", ()) is warp
    fast = runtime_network(warp, "warp_network", "auto", (), cache_dir=tmp_path)
    assert is_inference_form(fast) and not is_inference_form(warp)
    assert not list(tmp_path.iterdir())  # PyTorch: nothing exported
    decoder = SPADEDecoder(block_expansion=4, max_features=16, out_channels=8, spade_hidden=8)
    assert inference_form(decoder).fc.weight is decoder.fc.weight


@pytest.mark.slow
@pytest.mark.skipif(not available_providers(), reason="onnxruntime not installed")
def test_onnx_decoder_is_the_polyphase_export_of_the_release_decoder(conformance, tmp_path) -> None:
    net = load_official("decoder", conformance.checkpoint("decoder"))
    form = inference_form(net)
    assert isinstance(form, PolyphaseSPADEDecoder) and inference_form(form) is form
    example = (torch.randn(1, 256, 8, 8) * 0.3,)
    run = runtime_network(net, "decoder", "onnx", example, cache_dir=tmp_path)
    assert isinstance(run, OnnxRuntimeNetwork)
    [cached] = tmp_path.glob("*.onnx")
    assert cached.name == f"decoder-{weights_digest(form)}.onnx"  # not the plain graph's key
    feature = torch.randn(2, 256, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.3
    with torch.no_grad():
        torch.testing.assert_close(run(feature), net(feature), atol=1e-5, rtol=0)
    assert type(net).__name__ == "SPADEDecoder"  # the torch module itself is unchanged


def test_a_cache_that_cannot_be_written_costs_the_cache_not_the_run(tmp_path, caplog) -> None:
    """$TALKINGHEAD_CACHE naming a file (or a read-only home) was a NotADirectoryError
    traceback on the first --runtime auto run; the export now goes to a folder of the
    process's own, removed at exit."""
    import logging

    import talkinghead.export.runtime as runtime

    net = SPADEDecoder(block_expansion=4, max_features=16, out_channels=8, spade_hidden=8).eval()
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file")
    example = (torch.randn(1, 16, 4, 4),)
    with caplog.at_level(logging.WARNING, logger="talkinghead.export.runtime"):
        run = runtime_network(net, "decoder", "onnx", example, cache_dir=not_a_folder)
    assert "cannot write the runtime cache" in caplog.text and "for this run only" in caplog.text
    assert not_a_folder.read_text() == "a file"
    assert runtime._run_cache is not None and any(runtime._run_cache.glob("decoder-*.onnx"))
    feature = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(run(feature), net(feature), atol=1e-5, rtol=0)
