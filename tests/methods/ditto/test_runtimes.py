"""The renderer's runtimes and device paste-back give torch fp32's frames (tiny release, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from _conformance import MEDIA_DIR, portrait_face_analyzer, skip_missing
from _tiny_release import build_tiny_release
from talkinghead.errors import SettingsError
from talkinghead.export.runtime import OnnxRuntimeNetwork, available_providers, resolve_runtime
from talkinghead.methods.ditto.config import DittoConfig
from talkinghead.methods.ditto.pipeline import DittoPipeline
from talkinghead.models.warping_network import is_inference_form

PORTRAIT = MEDIA_DIR / "ditto_example_face.jpg"
SPEECH = MEDIA_DIR / "ditto_example_speech.wav"
SETTINGS = {"steps": 2, "seed": 0, "max_size": 256, "batch_size": 4}
# Grey levels: ONNX Runtime / inductor reorder float sums (~1e-6 relative), which can flip
# a rounding at .5 and move a few pixels by one level; the paste-back adds at most one.
MAX_LEVELS = 2


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA_DIR}")
    return build_tiny_release(tmp_path_factory.mktemp("release"))


def _pipeline(release: Path, **settings) -> DittoPipeline:
    return DittoPipeline.from_pretrained(
        release,
        download=False,
        cache=False,
        face_analyzer=portrait_face_analyzer(),  # a recording on GPU images without mediapipe
        **SETTINGS,
        **settings,
    )


@pytest.fixture(scope="module")
def pipe(release) -> DittoPipeline:
    return _pipeline(release)


@pytest.fixture(scope="module")
def audio() -> tuple[np.ndarray, int]:
    data, sr = sf.read(SPEECH, dtype="float32")
    return data[: int(sr * 0.3)], sr  # 8 frames: two renderer batches


@pytest.fixture(scope="module")
def reference(pipe, audio) -> np.ndarray:
    return pipe.generate(PORTRAIT, audio, runtime="torch", device_paste=False).frames


def _close_to(frames: np.ndarray, reference: np.ndarray, levels: int) -> None:
    assert frames.shape == reference.shape and frames.dtype == np.uint8
    diff = np.abs(frames.astype(int) - reference)
    assert diff.max() <= levels, diff.max()
    assert (diff > 0).mean() < 0.01  # a handful of rounding flips, not a different render


def test_device_paste_on_cpu_tensors_gives_the_same_frames(pipe, audio, reference) -> None:
    frames = pipe.generate(PORTRAIT, audio, runtime="torch", device_paste=True).frames
    _close_to(frames, reference, 1)


def test_streaming_with_device_paste(pipe, audio, reference) -> None:
    offline = pipe.generate(PORTRAIT, audio, online=True, device_paste=False).frames
    streamed = pipe.generate(PORTRAIT, audio, streaming=True, device_paste=True).frames
    _close_to(streamed, offline, 1)


@pytest.mark.skipif(not available_providers(), reason="onnxruntime not installed")
def test_onnx_runtime_gives_torch_frames(pipe, audio, reference, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TALKINGHEAD_CACHE", str(tmp_path))
    frames = pipe.generate(PORTRAIT, audio, runtime="onnx").frames
    _close_to(frames, reference, MAX_LEVELS)
    exported = sorted(p.name.split("-")[0] for p in (tmp_path / "runtimes").glob("*.onnx"))
    assert exported == ["decoder", "warp_network"]  # our own export, cached by weights hash


@pytest.mark.skipif(not available_providers(), reason="onnxruntime not installed")
def test_auto_runtime_is_the_default_and_runs_the_decoder_on_onnxruntime_on_cpu(
    pipe, audio, reference
) -> None:
    assert DittoConfig().runtime == "auto"
    assert resolve_runtime("auto", "decoder", "cpu") == "onnx"
    assert resolve_runtime("auto", "warp_network", "cpu") == "torch"
    assert resolve_runtime("auto", "decoder", "cuda") == "torch"  # GPU runtimes unmeasured
    frames = pipe.generate(PORTRAIT, audio, runtime="auto").frames
    _close_to(frames, reference, MAX_LEVELS)
    warp, decode = pipe._render_networks("auto", ())  # built by the run above
    assert isinstance(decode, OnnxRuntimeNetwork)
    assert is_inference_form(warp) and not is_inference_form(
        pipe.models.warp_network
    )  # inference form


def test_auto_runtime_without_onnxruntime_is_torch(monkeypatch) -> None:
    import talkinghead.export.runtime as runtime

    monkeypatch.setattr(runtime, "available_providers", lambda: [])
    assert runtime.resolve_runtime("auto", "decoder", "cpu") == "torch"
    # PyTorch, running the networks' inference forms: not the modules themselves.
    assert not runtime.runs_in_torch("auto", "cpu") and runtime.uses_inference_forms("auto")
    assert runtime.runs_in_torch("torch", "cpu")


def test_compile_runtime_gives_torch_frames(pipe, audio, reference) -> None:
    pytest.importorskip("torch._inductor")
    frames = pipe.generate(PORTRAIT, audio, runtime="compile").frames
    _close_to(frames, reference, MAX_LEVELS)


def test_bad_runtime_is_refused_before_work(pipe, audio) -> None:
    with pytest.raises(SettingsError, match="runtime must be one of"):
        pipe.generate(PORTRAIT, audio, runtime="jax")
    with pytest.raises(SettingsError, match="tensorrt"):
        pipe.generate(PORTRAIT, audio, runtime="tensorrt")


def test_broadcast_source_volume_matches_copies(pipe) -> None:
    # The warp's broadcast path (stride-0 batch) gives the per-frame copies' output.
    net = pipe.models.warp_network
    g = torch.Generator().manual_seed(0)
    num_kp = net.dense_motion_network.num_kp
    kp = torch.rand(3, num_kp, 3, generator=g) - 0.5
    with torch.inference_mode():
        f_s = pipe.models.appearance_extractor(torch.rand(1, 3, 256, 256, generator=g))
        shared = net(f_s.expand(3, -1, -1, -1, -1), kp, kp + 0.02)
        copied = net(f_s.repeat(3, 1, 1, 1, 1), kp, kp + 0.02)
    torch.testing.assert_close(shared, copied, rtol=1e-5, atol=1e-6)


CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the CUDA runtimes (CUDA graphs, CUDA provider), fp16 not run",
)
# On CUDA, cuDNN's convolutions run in TF32 (10-bit mantissa) by default and fp16 has 11
# bits: against the CPU's fp32 frames a tiny render may move by a few grey levels.
CUDA_MAX_LEVELS, CUDA_MAX_MEAN_LEVELS = 16, 1.0


@pytest.fixture(scope="module")
def cuda_pipe(release) -> DittoPipeline:
    return _pipeline(release, device="cuda")


@CUDA
@pytest.mark.parametrize(
    ("runtime", "fp16"),
    [("torch", False), ("auto", False), ("compile", False), ("onnx", False), ("torch", True)],
)
def test_cuda_gives_the_cpu_frames(cuda_pipe, audio, reference, runtime, fp16) -> None:
    if runtime == "onnx" and "CUDAExecutionProvider" not in available_providers():
        pytest.skip("onnxruntime without its CUDA provider (the `gpu` extra): onnx on CUDA not run")
    frames = cuda_pipe.generate(PORTRAIT, audio, runtime=runtime, fp16=fp16).frames
    assert frames.shape == reference.shape and frames.dtype == np.uint8
    diff = np.abs(frames.astype(int) - reference)
    stats = f"{runtime} fp16={fp16}: max {diff.max()} levels, mean {diff.mean():.3f}"
    assert diff.max() <= CUDA_MAX_LEVELS and diff.mean() <= CUDA_MAX_MEAN_LEVELS, stats


@CUDA
def test_cuda_streaming_gives_the_offline_frames(cuda_pipe, audio) -> None:
    offline = cuda_pipe.generate(PORTRAIT, audio, online=True).frames
    streamed = cuda_pipe.generate(PORTRAIT, audio, streaming=True).frames
    _close_to(streamed, offline, 1)


def test_device_path_writes_yuv_planes_made_on_the_device(
    pipe, audio, reference, tmp_path, monkeypatch
) -> None:
    import av

    from talkinghead.media.writer import VideoWriter

    calls = []
    original = VideoWriter._write_yuv420

    def spy(self, planes, size):
        calls.append(planes.shape)
        return original(self, planes, size)

    monkeypatch.setattr(VideoWriter, "_write_yuv420", spy)
    on_device = pipe.generate(PORTRAIT, audio, output=tmp_path / "device.mp4", device_paste=True)
    assert len(calls) == on_device.num_frames == 8  # every frame came as 4:2:0 planes
    host = pipe.generate(PORTRAIT, audio, output=tmp_path / "host.mp4", device_paste=False)
    assert len(calls) == 8  # the host path converts in the writer, from RGB

    def error(path: Path) -> float:
        with av.open(str(path)) as container:
            video = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        assert video.shape == reference.shape
        return float(np.abs(video.astype(int) - reference).mean())

    # Both are lossy (4:2:0, H.264): the device's conversion loses no more than libswscale's.
    e_device, e_host = error(on_device.output), error(host.output)
    print(f"mean error against the rendered frames: device {e_device:.3f}, host {e_host:.3f}")
    assert e_device <= e_host * 1.1 + 0.1
