"""The Python API in the diffusers manner: in-memory sources and audio, frames returned,
`pipe.to`, `generator=`, streaming to a file through the pipeline, the blink setting."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from _conformance import MEDIA_DIR, skip_missing
from _tiny_release import build_tiny_release
from talkinghead.audio.io import load_audio, read_audio
from talkinghead.errors import MediaError, TalkingHeadError
from talkinghead.media.source import load_source, source_media
from talkinghead.methods.ditto.avatar import AvatarCache
from talkinghead.methods.ditto.config import DittoConfig
from talkinghead.methods.ditto.motion.stitch import StitchConfig
from talkinghead.methods.ditto.pipeline import DittoPipeline

MEDIA = MEDIA_DIR
PORTRAIT = MEDIA / "ditto_example_face.jpg"
SPEECH = MEDIA / "ditto_example_speech.wav"
SETTINGS = {"steps": 2, "seed": 0, "max_size": 256, "batch_size": 4}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> DittoPipeline:
    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA}")
    release = build_tiny_release(tmp_path_factory.mktemp("release"))
    return DittoPipeline.from_pretrained(release, download=False, cache=False, **SETTINGS)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """0.5 s of the example speech (24 kHz wav): 13 frames."""
    data, sr = sf.read(SPEECH, dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, data[: sr // 2], sr)
    return path


def read_frames(directory: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(directory.glob("*.png"))])


@pytest.fixture(scope="module")
def written(pipe, speech, tmp_path_factory) -> np.ndarray:
    """The frames `generate` writes (lossless PNGs) for the portrait file and the wav, seed 0."""
    out = tmp_path_factory.mktemp("written")
    pipe.generate(PORTRAIT, speech, str(out) + "/")
    return read_frames(out)


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("stage-")]


# ---------------------------------------------------------------- generate(output=None)


def _portrait_rgb() -> np.ndarray:
    return np.asarray(Image.open(PORTRAIT).convert("RGB"))


@pytest.mark.parametrize("form", ["pil", "uint8 + (array, rate)", "float + bare 16 kHz"])
def test_output_none_returns_the_frames_a_file_gets(pipe, speech, written, form) -> None:
    wav, rate = sf.read(speech, dtype="float32")
    if form == "pil":
        source, audio = Image.open(PORTRAIT), speech
    elif form == "uint8 + (array, rate)":
        source, audio = _portrait_rgb(), (wav, rate)
    else:
        source, audio = _portrait_rgb() / 255.0, load_audio(speech, 16000)
    result = pipe.generate(source, audio)
    expected = math.ceil(len(wav) / rate * 25)
    assert result.output is None and result.fps == 25
    assert result.num_frames == expected == len(result.frames) == 13
    assert result.frames.dtype == np.uint8 and result.frames.shape == (13, 256, 256, 3)
    # The same pixels and the same 16 kHz samples give exactly the frames written to disk.
    assert np.array_equal(result.frames, written)
    # The audio comes back as given: float32 mono at its own rate.
    assert result.audio.dtype == np.float32
    if form == "float + bare 16 kHz":
        assert result.sample_rate == 16000 and np.array_equal(result.audio, audio)
    else:
        assert result.sample_rate == rate and np.array_equal(result.audio, wav)


def test_frames_as_an_iterator_or_pil_images(pipe, speech, written) -> None:
    frames = pipe.generate(PORTRAIT, speech, output_type="iterator").frames
    assert not isinstance(frames, np.ndarray)
    assert np.array_equal(np.stack(list(frames)), written)
    assert not stage_threads()
    # One-frame batches: the reader holds the renderer back; stopping early stops it.
    partial = pipe.generate(PORTRAIT, speech, output_type="iterator", batch_size=1).frames
    first = np.stack([next(partial) for _ in range(6)])
    partial.close()
    assert np.abs(first.astype(int) - written[:6]).max() <= 1  # batched float math, then uint8
    assert not stage_threads()
    images = pipe.generate(PORTRAIT, speech, output_type="pil").frames
    assert len(images) == 13 and all(isinstance(im, Image.Image) for im in images)
    assert np.array_equal(np.asarray(images[-1]), written[-1])
    with pytest.raises(TalkingHeadError, match="output_type"):
        pipe.generate(PORTRAIT, speech, output_type="tensor")


def test_generator_gives_the_frames_of_the_same_seed(pipe, speech, written) -> None:
    result = pipe.generate(PORTRAIT, speech, generator=torch.Generator().manual_seed(0), seed=None)
    assert np.array_equal(result.frames, written)
    # The generator, not the config's seed, drives the sampler.
    avatar, pcm = pipe.register(PORTRAIT, max_frames=1), load_audio(speech, 16000)
    m_seed = pipe.motion(avatar, pcm)[0]
    m_gen = pipe.motion(avatar, pcm, generator=torch.Generator().manual_seed(0))[0]
    m_other = pipe.motion(avatar, pcm, generator=torch.Generator().manual_seed(1))[0]
    assert np.array_equal(m_seed, m_gen) and not np.allclose(m_seed, m_other)


def test_streaming_to_a_file_is_a_pipeline_method(pipe, speech, tmp_path) -> None:
    out = tmp_path / "streamed"
    result = pipe.generate(PORTRAIT, speech, str(out) + "/", streaming=True)
    streamed = read_frames(out)
    assert result.output is not None and result.num_frames == len(streamed) == 13
    # The streaming pipeline gives the offline frames under the online motion settings.
    offline = pipe.generate(PORTRAIT, speech, online=True).frames
    assert np.array_equal(streamed, offline)
    assert not stage_threads()


# ---------------------------------------------------------------- to(), blink


def test_to_moves_the_networks_and_returns_the_pipeline(pipe) -> None:
    assert pipe.to("cpu", torch.float32) is pipe
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    assert pipe.config.device == "cpu" and not pipe.config.fp16
    m = pipe.models
    for net in (m.warp_network, m.decoder, m.stitch_network, m.lmdm, m.registrar.motion_extractor):
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in net.parameters())
    assert pipe.to(torch.float32) is pipe
    with pytest.raises(TalkingHeadError, match="CUDA"):
        pipe.to(torch.float16)
    with pytest.raises(TalkingHeadError, match="dtype"):
        pipe.to("cpu", torch.bfloat16)
    assert pipe.config.device == "cpu" and not pipe.config.fp16  # unchanged by the failures


def test_repr_says_what_runs_where(pipe) -> None:
    text = repr(pipe)
    assert text.startswith("DittoPipeline(checkpoints=") and "device=cpu" in text
    assert "dtype=float32" in text and "runtime='auto'" in text
    assert "motion='LMDM, 2 DDIM steps'" in text
    assert "hubert='onnxruntime, CPUExecutionProvider'" in text
    assert f"face_backend={pipe.face_backend!r}" in text and "shared_batching=False" in text


def test_blink_is_a_config_field(pipe, speech, tmp_path) -> None:
    with pytest.raises(TalkingHeadError, match="blink clip"):
        DittoConfig(blink=True).stitch_config()
    clip = StitchConfig(delta_eye_arr=np.zeros((15, 63), np.float32), delta_eye_open_n=5)
    assert DittoConfig(stitch=clip, blink=True).stitch_config().delta_eye_open_n == 0
    assert DittoConfig(stitch=clip, blink=False).stitch_config().delta_eye_open_n == -1
    assert DittoConfig(stitch=clip).stitch_config().delta_eye_open_n == 5  # None: as stitch
    # The tiny release has no blink clip: the call fails before any work, leaving nothing.
    with pytest.raises(TalkingHeadError, match="blink clip"):
        pipe.generate(PORTRAIT, speech, tmp_path / "o.mp4", blink=True)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- in-memory sources


def test_in_memory_sources_are_cached_by_their_pixels(pipe, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pipe, "cache", AvatarCache(tmp_path))
    cfg = pipe.config.replace(cache=True)
    rgb = _portrait_rgb()
    first = pipe.register(rgb, config=cfg)
    assert pipe.cache.last_hit is False and first.is_image and first.source_path is None
    again = pipe.register(Image.open(PORTRAIT), config=cfg)  # same pixels, another form
    assert pipe.cache.last_hit is True and np.array_equal(again.f_s, first.f_s)
    changed = rgb.copy()
    changed[:64, :64] = 0  # another picture (a 1-level change could vanish in the resize)
    pipe.register(changed, config=cfg)
    assert pipe.cache.last_hit is False


def test_source_media_takes_in_memory_pictures_and_videos() -> None:
    odd = np.random.default_rng(0).integers(0, 256, (301, 451, 3), dtype=np.uint8)
    image = source_media(odd, max_side=200)  # the release's size rule, as for files
    assert image.is_image and image.path is None and image.frames[0].shape == (132, 200, 3)
    assert source_media(odd).frames[0].shape == (300, 450, 3)  # sides made even
    rgb = odd[:300, :450]
    assert np.array_equal(source_media(Image.fromarray(rgb)).frames[0], rgb)
    assert np.array_equal(source_media(rgb / 255.0).frames[0], rgb)
    grey = source_media(rgb[..., 0]).frames[0]
    assert grey.shape == (300, 450, 3) and np.array_equal(grey[..., 2], rgb[..., 0])
    video = source_media(np.stack([rgb] * 5), max_frames=3, fps=30.0)
    assert not video.is_image and len(video.frames) == 3 and video.fps == 30.0
    assert not source_media([rgb, rgb]).is_image
    for bad in (rgb * 2.0, rgb.astype(np.int64), rgb[..., :2], np.zeros((0, 4, 4, 3), np.uint8)):
        with pytest.raises(MediaError):
            source_media(bad)
    with pytest.raises(MediaError, match="same size"):
        source_media([rgb, rgb[:100]])


def test_a_pil_image_is_read_like_its_file() -> None:
    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA}")
    from_file = load_source(PORTRAIT, max_side=256).frames[0]
    assert np.array_equal(source_media(Image.open(PORTRAIT), max_side=256).frames[0], from_file)


# ---------------------------------------------------------------- in-memory audio


def test_audio_arrays_with_their_rate() -> None:
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, (4800, 2)).astype(np.float32)
    mono, rate = read_audio((stereo, 48000))
    assert rate == 48000 and np.allclose(mono, stereo.mean(axis=1))
    assert np.array_equal(read_audio((stereo.T, 48000))[0], mono)  # channels first
    assert load_audio((stereo, 48000), 16000).shape == (1600,)
    pcm16 = (stereo[:, 0] * 32767).astype(np.int16)
    assert np.allclose(read_audio((pcm16, 8000))[0], pcm16 / 32768.0)
    bare = rng.uniform(-1, 1, 1000).astype(np.float32)
    assert read_audio(bare)[1] == 16000 and np.array_equal(load_audio(bare, 16000), bare)
    for bad in ((bare, 0), (bare, 16000.5), np.zeros(0, np.float32), np.full(4, np.nan)):
        with pytest.raises(MediaError):
            read_audio(bad)
