"""How the renderer networks (warp and decoder) run: PyTorch, torch.compile, ONNX Runtime.

``auto`` (the default): each network on the fastest runtime measured on its device that
stays within 1e-3 of torch fp32 (`resolve_runtime`). ``torch``: the modules as they are,
the release's arithmetic exactly. Every other runtime (``auto`` on CPU only) runs, traces
or exports the networks' `inference_form` instead: the same functions within about 1e-6,
with fewer multiply-adds.
``compile``: ``torch.compile`` of each (on CUDA in "reduce-overhead" mode, i.e. CUDA
graphs; on CPU inductor's C++ kernels, weights frozen).
``onnx``: our own export (`talkinghead.export.onnx.export_onnx`, cached on disk by the
weights' hash) run by onnxruntime, with its CUDA provider when it is installed and the
networks are on CUDA. ``tensorrt``: onnxruntime's TensorRT provider over the same
export, with an engine cache next to it (needs an onnxruntime-gpu build with TensorRT).

Every runtime takes and returns torch tensors on the networks' device, so the
renderer does not care which one runs. Each is tested to give the frames of torch fp32
within a stated tolerance (tests/methods/ditto/test_runtimes.py).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from talkinghead.errors import TalkingHeadError


def _install_cuda_guard_without_gpu() -> None:
    """A CUDA build of PyTorch on a machine without a GPU: torch.compile's FakeTensorMode
    installs a no-op CUDA device guard on first use, and in 2.11 a later compile in
    another thread then segfaults once the installing thread has ended (the renderer's
    worker threads end with each video). Installed once at import, from the importing
    (normally the main) thread, later compiles find it in place."""
    guard = getattr(torch._C, "_ensureCUDADeviceGuardSet", None)
    if torch.version.cuda and guard is not None and not torch.cuda.is_available():
        guard()


_install_cuda_guard_without_gpu()

RUNTIMES = ("auto", "torch", "compile", "onnx", "tensorrt")
RENDER_NETWORKS = ("warp_network", "decoder")
CACHE_DIR_ENV = "TALKINGHEAD_CACHE"

log = logging.getLogger(__name__)
_run_cache: Path | None = None  # this process's stand-in for a cache it cannot write


def _temporary_cache() -> Path:
    """A folder for this process's exports, removed at exit."""
    global _run_cache
    if _run_cache is None:
        _run_cache = Path(tempfile.mkdtemp(prefix="talkinghead-runtimes-"))
        atexit.register(shutil.rmtree, _run_cache, ignore_errors=True)
    return _run_cache


def default_cache_dir() -> Path:
    """Where exported graphs and engines live: `$TALKINGHEAD_CACHE/runtimes`, else
    `$XDG_CACHE_HOME/talkinghead/runtimes`, else `~/.cache/talkinghead/runtimes`."""
    root = os.environ.get(CACHE_DIR_ENV)
    if root:
        return Path(root).expanduser() / "runtimes"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    cache_home = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return cache_home / "talkinghead" / "runtimes"


def available_providers() -> list[str]:
    """onnxruntime's execution providers here ([] without onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def check_runtime(runtime: str, device: str | torch.device = "cpu") -> str:
    """The runtime name, or a `TalkingHeadError` saying why it cannot run here and what to do."""
    if runtime not in RUNTIMES:
        raise TalkingHeadError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    providers = available_providers()
    if runtime == "onnx" and not providers:
        raise TalkingHeadError(
            "runtime 'onnx' needs onnxruntime: pip install 'talkinghead[onnx]', or use --runtime torch"
        )
    if runtime == "tensorrt":
        if torch.device(device).type != "cuda":
            raise TalkingHeadError("runtime 'tensorrt' needs a CUDA device (--device cuda)")
        if "TensorrtExecutionProvider" not in providers:
            raise TalkingHeadError(
                "runtime 'tensorrt' needs onnxruntime-gpu with TensorRT (TensorrtExecutionProvider "
                f"not among {providers or 'no providers'}); use --runtime compile or onnx"
            )
    return runtime


def resolve_runtime(runtime: str, kind: str, device: str | torch.device = "cpu") -> str:
    """The runtime network `kind` ("warp_network" or "decoder") runs on under `runtime`.

    Only "auto" is resolved: on CPU the decoder on ONNX Runtime (1.5-1.8x faster than PyTorch, at
    8e-7 error) and the warp in PyTorch (oneDNN's 3-D convolutions run near the CPU's peak;
    onnxruntime's take 1.5x longer), measured by benchmarks/cpu_runtimes.py; without
    onnxruntime, PyTorch. On CUDA PyTorch: the GPU runtimes are unmeasured, so none is
    chosen for the user.
    """
    if runtime != "auto":
        return runtime
    if torch.device(device).type == "cpu" and kind == "decoder" and available_providers():
        return "onnx"
    return "torch"


def runs_in_torch(runtime: str, device: str | torch.device = "cpu") -> bool:
    """True when `runtime` leaves both renderer networks as the PyTorch modules themselves."""
    return not uses_inference_forms(runtime, device) and all(
        resolve_runtime(runtime, kind, device) == "torch" for kind in RENDER_NETWORKS
    )


def weights_digest(net: nn.Module) -> str:
    """A short hash of a network's class and weights: the export cache's key."""
    h = hashlib.sha256(type(net).__qualname__.encode())
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class OnnxRuntimeNetwork:
    """An ONNX export run by onnxruntime, called with and returning torch tensors."""

    def __init__(self, path: Path, device: torch.device, providers: list[str]) -> None:
        import onnxruntime as ort

        self.device = device
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        # On CUDA, inputs and outputs stay on the device through IO binding.
        self.bind = device.type == "cuda" and self.providers[0] != "CPUExecutionProvider"

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.bind:
            return self._run_bound(inputs)
        feed = {
            name: x.detach().float().cpu().contiguous().numpy()
            for name, x in zip(self.input_names, inputs, strict=True)
        }
        out = self.session.run(None, feed)[0]
        return torch.from_numpy(out).to(self.device)

    def _run_bound(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        binding = self.session.io_binding()
        kept = []  # the contiguous copies must outlive the run
        for name, x in zip(self.input_names, inputs, strict=True):
            x = x.detach().float().contiguous()
            kept.append(x)
            binding.bind_input(
                name, "cuda", x.device.index or 0, np.float32, tuple(x.shape), x.data_ptr()
            )
        output = self.session.get_outputs()[0].name
        binding.bind_output(output, "cuda", self.device.index or 0)
        self.session.run_with_iobinding(binding)
        value = binding.get_outputs()[0]
        return (
            torch.from_dlpack(value.to_dlpack())
            if hasattr(value, "to_dlpack")
            else (torch.from_numpy(value.numpy()).to(self.device))
        )


def inference_form(net: nn.Module) -> nn.Module:
    """`net` as the runtimes other than ``torch`` run it: the same function within float
    rounding (about 1e-6), with fewer multiply-adds, sharing `net`'s weights.

    Convolutions rewritten (`talkinghead.models.conv_forms`): in the decoder, the label-map
    convs of the upsampled blocks at the map's own resolution (12% fewer multiply-adds; 8%
    faster in PyTorch and onnxruntime on CPU); in the warp, the last hourglass up blocks
    likewise and the occlusion head as a 1x1 conv then a shifted sum (together 10% faster
    on CPU). Other networks as they are.
    """
    from talkinghead.models.spade_decoder import SPADEDecoder, polyphase_decoder
    from talkinghead.models.warping_network import WarpingNetwork, warp_inference_form

    if isinstance(net, SPADEDecoder):
        return polyphase_decoder(net)
    if isinstance(net, WarpingNetwork):
        return warp_inference_form(net)
    return net


def uses_inference_forms(runtime: str, device: str | torch.device = "cpu") -> bool:
    """Whether `runtime` runs the networks' `inference_form`: every runtime but ``torch``
    (the release's arithmetic exactly), and ``auto`` only on CPU, where it was measured."""
    if runtime == "torch":
        return False
    return runtime != "auto" or torch.device(device).type == "cpu"


def _onnx_network(
    net: nn.Module,
    kind: str,
    runtime: str,
    example: tuple[torch.Tensor, ...],
    cache_dir: Path,
) -> OnnxRuntimeNetwork:
    from talkinghead.export.onnx import export_onnx

    device = next(net.parameters()).device
    name = f"{kind}-{weights_digest(net)}.onnx"
    path = cache_dir / name
    if not path.is_file():  # exported once per set of weights (export_onnx writes atomically)
        cpu_net = net.to("cpu")
        inputs = tuple(x.cpu() for x in example)
        try:
            try:
                export_onnx(cpu_net, kind, path, inputs=inputs)
            except OSError as exc:
                # A read-only home or a cache path that is a file costs the cache, not the run.
                cache_dir = _temporary_cache()
                log.warning(
                    "cannot write the runtime cache %s (%s); exporting %s for this run only",
                    path.parent, exc.strerror or exc, kind,
                )  # fmt: skip
                path = export_onnx(cpu_net, kind, cache_dir / name, inputs=inputs)
        finally:
            net.to(device)
    providers = available_providers()
    chosen: list = []
    if device.type == "cuda" and runtime == "tensorrt":
        engines = cache_dir / "trt_engines"
        try:
            engines.mkdir(parents=True, exist_ok=True)
        except OSError:
            engines = _temporary_cache() / "trt_engines"
            engines.mkdir(parents=True, exist_ok=True)
        chosen.append(
            (
                "TensorrtExecutionProvider",
                {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(engines),
                    "trt_fp16_enable": False,
                },
            )
        )
    if device.type == "cuda" and "CUDAExecutionProvider" in providers:
        chosen.append(("CUDAExecutionProvider", {"device_id": device.index or 0}))
    chosen.append("CPUExecutionProvider")
    return OnnxRuntimeNetwork(path, device, chosen)


def runtime_network(
    net: nn.Module,
    kind: str,
    runtime: str,
    example: tuple[torch.Tensor, ...],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Callable[..., torch.Tensor]:
    """`net` (a ``warp_network`` or ``decoder``) as `runtime` runs it.

    `example`: inputs of the shape it will see (the ONNX export traces them; the batch
    axis stays dynamic).
    """
    device = next(net.parameters()).device
    check_runtime(runtime, device)
    form = inference_form(net) if uses_inference_forms(runtime, device) else net
    runtime = resolve_runtime(runtime, kind, device)
    if runtime == "torch":
        return form
    net = form  # compile traces it; the ONNX runtimes export it
    if runtime == "compile":
        # CUDA graphs on the GPU remove the per-kernel launch cost that dominates at batch 4-16.
        if device.type != "cuda":
            # Freezing folds the (fixed) weights into the graph, prepacked for oneDNN with the
            # following add/activation fused: the decoder 1.4x faster than eager; unfrozen, ~1x.
            return torch.compile(net, dynamic=False, options={"freezing": True})
        compiled = torch.compile(net, mode="reduce-overhead", dynamic=False)

        def run_graph(*inputs: torch.Tensor) -> torch.Tensor:
            # A CUDA graph reuses its output buffer on the next replay, and the renderer's
            # next stage still reads this one: hand out a copy (device to device).
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(*inputs).clone()

        return run_graph
    return _onnx_network(net, kind, runtime, example, Path(cache_dir or default_cache_dir()))


__all__ = [
    "RENDER_NETWORKS",
    "RUNTIMES",
    "OnnxRuntimeNetwork",
    "available_providers",
    "check_runtime",
    "default_cache_dir",
    "inference_form",
    "resolve_runtime",
    "runs_in_torch",
    "runtime_network",
    "uses_inference_forms",
    "weights_digest",
]
