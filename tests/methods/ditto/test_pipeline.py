"""The Ditto pipeline end to end, on a tiny release (same architectures, small sizes)."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from _conformance import MEDIA_DIR, skip_missing
from _tiny_release import build_tiny_release
from talkinghead.errors import CheckpointError, MediaError, NoFaceError
from talkinghead.methods.ditto.pipeline import DittoPipeline, fade_alphas

MEDIA = MEDIA_DIR
PORTRAIT = MEDIA / "ditto_example_face.jpg"
SPEECH = MEDIA / "ditto_example_speech.wav"
SETTINGS = {"steps": 2, "seed": 0, "max_size": 256, "batch_size": 4}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return build_tiny_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def pipe(release, tmp_path_factory) -> DittoPipeline:
    if not PORTRAIT.is_file():
        skip_missing(f"{MEDIA}")
    p = DittoPipeline.from_pretrained(release, download=False, cache=False, **SETTINGS)
    return p


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """0.5 s of the example speech (24 kHz wav): 13 frames."""
    data, sr = sf.read(SPEECH, dtype="float32")
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, data[: sr // 2], sr)
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], float, float]:
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        audio_s = sum(f.samples for f in c.decode(audio=0)) / a.rate
        rate = float(c.streams.video[0].average_rate)
    return frames, rate, audio_s


def read_frames(directory: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted(directory.glob("*.png"))]


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("stage-")]


def test_mp4_has_the_right_frames_size_and_audio(pipe, speech, tmp_path) -> None:
    out = tmp_path / "talking.mp4"
    result = pipe.generate(PORTRAIT, speech, out)
    duration = sf.info(speech).duration
    expected = math.ceil(duration * 25)
    frames, fps, audio_s = read_video(out)
    assert result.num_frames == expected == len(frames) == 13
    assert fps == 25
    source_size = Image.open(PORTRAIT).size  # 1432 x 1432, resized to max_size 256
    assert frames[0].shape == (256, 256, 3) and source_size[0] == source_size[1]
    assert abs(audio_s - expected / 25) < 0.05
    assert result.face_backend == "mediapipe"
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_same_seed_same_frames_and_other_seed_differs(pipe, speech, tmp_path) -> None:
    runs = {}
    for name in ("a", "b"):
        pipe.generate(PORTRAIT, speech, str(tmp_path / name) + "/", seed=0)
        runs[name] = read_frames(tmp_path / name)
    assert len(runs["a"]) == 13
    assert all(np.array_equal(x, y) for x, y in zip(runs["a"], runs["b"], strict=True))
    # Another seed gives other motion (rendering is a deterministic function of it).
    from talkinghead.audio.io import load_audio

    avatar, pcm = pipe.register(PORTRAIT, max_frames=1), load_audio(speech, 16000)
    m0 = pipe.motion(avatar, pcm, config=pipe.config.replace(seed=0))[0]
    m0_again = pipe.motion(avatar, pcm, config=pipe.config.replace(seed=0))[0]
    m1 = pipe.motion(avatar, pcm, config=pipe.config.replace(seed=1))[0]
    assert np.array_equal(m0, m0_again) and not np.allclose(m0, m1)


def test_streaming_equals_offline_with_online_settings(pipe, speech, tmp_path) -> None:
    pipe.generate(PORTRAIT, speech, str(tmp_path / "offline") + "/", online=True)
    offline = read_frames(tmp_path / "offline")

    from talkinghead.audio.io import load_audio

    pcm = load_audio(speech, 16000)
    session = pipe.stream(PORTRAIT, seed=0)
    streamed = []
    for i in range(0, len(pcm), 1000):  # odd chunk size
        streamed += session.push(pcm[i : i + 1000])
    streamed += session.close()
    assert len(streamed) == len(offline) == 13
    for x, y in zip(streamed, offline, strict=True):
        assert np.array_equal(x, y)
    assert not stage_threads()


def test_stream_accepts_pcm16_and_renders_before_the_end(pipe) -> None:
    # 1.6 s of speech as PCM16 in 0.2 s chunks, as a live client sends it.
    from talkinghead.audio.io import resample

    data, sr = sf.read(SPEECH, dtype="float32")
    pcm = resample(data[: sr * 8 // 5], sr, 16000)
    session = pipe.stream(PORTRAIT, seed=0)
    got = []
    for i in range(0, len(pcm), 3200):
        got += session.push((np.clip(pcm[i : i + 3200], -1, 1) * 32767).astype("<i2").tobytes())
        if i >= 16000:
            # After 1.2 s of audio (30 feature frames; the online windows need 20, then
            # emit 10 at a time), motion is already on its way to the renderer.
            assert session.frames_out >= 8
    got += session.close()
    assert len(got) == 40
    assert all(f.shape == (256, 256, 3) and f.dtype == np.uint8 for f in got)


def test_stream_takes_int16_and_multichannel_arrays_as_the_same_audio(pipe) -> None:
    """An int16 array, PCM16 bytes, a [n, 2] array and the float samples are one audio:
    int16 arrays once reached HuBERT unscaled and [n, 2] arrays as interleaved samples
    of twice the length; NaN is refused instead of rendered."""
    from talkinghead.audio.io import resample
    from talkinghead.errors import MediaError

    data, sr = sf.read(SPEECH, dtype="float32")
    pcm16 = np.round(np.clip(resample(data[: sr // 2], sr, 16000), -1, 1) * 32767).astype("<i2")
    kinds = {
        "float": lambda c: c.astype(np.float32) / 32768,
        "int16": lambda c: c,
        "bytes": lambda c: c.tobytes(),
        "stereo": lambda c: np.stack([c, c], axis=1),
    }
    frames = {}
    for name, convert in kinds.items():
        session = pipe.stream(PORTRAIT, seed=0)
        got = []
        for i in range(0, len(pcm16), 3200):
            got += session.push(convert(pcm16[i : i + 3200]))
        frames[name] = np.stack(got + session.close())
    for name in kinds:
        np.testing.assert_array_equal(frames[name], frames["float"], err_msg=name)
    session = pipe.stream(PORTRAIT, seed=0)
    with pytest.raises(MediaError, match="NaN or infinite"):
        session.push(np.full(3200, np.nan, np.float32))
    session.close()


def test_offline_and_online_motion_settings_differ_as_documented(pipe, speech) -> None:
    from talkinghead.audio.io import load_audio

    avatar = pipe.register(PORTRAIT, max_frames=1)
    pcm = load_audio(speech, 16000)
    offline, d0_off = pipe.motion(avatar, pcm)
    online, d0_on = pipe.motion(avatar, pcm, config=pipe.config.replace(online=True))
    assert offline.shape == online.shape == (13, 265)
    assert d0_off is None and d0_on.shape == (265,)  # online: d0 is the first prefix frame


@pytest.mark.parametrize("stage", ["warp_network", "decoder", "paste", "writer"])
def test_failure_in_any_stage_raises_and_leaves_nothing(
    pipe, speech, tmp_path, monkeypatch, stage
) -> None:
    calls = {"n": 0}

    def fail_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError(f"injected failure in {stage}")
        return original(*args, **kwargs)

    if stage in ("warp_network", "decoder"):
        net = getattr(pipe.models, stage)
        original = net.forward
        monkeypatch.setattr(net, "forward", fail_on_second)
    elif stage == "paste":
        from talkinghead.face.paste import PasteBack

        original = PasteBack.__call__
        monkeypatch.setattr(PasteBack, "__call__", lambda self, *a: fail_on_second(self, *a))
    else:
        from talkinghead.media.writer import VideoWriter

        original = VideoWriter.write
        monkeypatch.setattr(VideoWriter, "write", lambda self, f: fail_on_second(self, f))
    out = tmp_path / "talking.mp4"
    with pytest.raises(RuntimeError, match="injected failure"):
        # torch: the failure is injected into the modules, which "auto" bypasses for ORT's decoder
        pipe.generate(PORTRAIT, speech, out, runtime="torch")
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no temporary file either
    assert not stage_threads()


def test_failure_keeps_an_existing_output(pipe, speech, tmp_path, monkeypatch) -> None:
    out = tmp_path / "talking.mp4"
    out.write_bytes(b"previous video")

    def boom(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(pipe.models.decoder, "forward", boom)
    with pytest.raises(RuntimeError, match="decoder exploded"):
        pipe.generate(PORTRAIT, speech, out, runtime="torch")  # the module runs, not ORT's copy
    assert out.read_bytes() == b"previous video"


def test_bad_inputs(pipe, speech, tmp_path) -> None:
    with pytest.raises(MediaError, match="not found"):
        pipe.generate(tmp_path / "nope.jpg", speech, tmp_path / "o.mp4")
    flat = tmp_path / "flat.png"
    Image.new("RGB", (200, 200), (120, 130, 140)).save(flat)
    with pytest.raises(NoFaceError):
        pipe.generate(flat, speech, tmp_path / "o.mp4")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF....not audio at all")
    with pytest.raises(MediaError):
        pipe.generate(PORTRAIT, junk, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()


def test_missing_checkpoints_are_named(tmp_path) -> None:
    (tmp_path / "ditto_pytorch" / "models").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"decoder\.pth"):
        DittoPipeline.from_pretrained(tmp_path, download=False)


def test_fade_alphas_follow_the_release() -> None:
    a = fade_alphas(10, fade_in=3, fade_out=3)
    np.testing.assert_allclose(a[:3], [0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(a[6:], [1, 2 / 3, 1 / 3, 0])  # ss = N - fade_out - 1 = 6
    assert fade_alphas(10, 0, 0) is None


def test_fade_in_starts_from_the_source_motion(pipe, speech, tmp_path) -> None:
    pipe.generate(PORTRAIT, speech, str(tmp_path / "plain") + "/")
    pipe.generate(PORTRAIT, speech, str(tmp_path / "fade") + "/", fade_in=5)
    plain, faded = read_frames(tmp_path / "plain"), read_frames(tmp_path / "fade")
    # Frame 0 is the source's own motion either way (relative driving starts there);
    # during the fade the expression is pulled towards the source's, then it is released.
    assert np.array_equal(plain[0], faded[0])
    assert not np.array_equal(plain[2], faded[2])
    assert np.array_equal(plain[-1], faded[-1])


def test_the_registry_entry_point_loads_and_generates(pipe, release, speech, tmp_path) -> None:
    from talkinghead.methods import get_method

    generate_video = get_method("ditto").entry_point("generate")
    loaded: list[DittoPipeline] = []
    result = generate_video(
        PORTRAIT,
        speech,
        str(tmp_path / "entry") + "/",
        checkpoints=release,
        device="cpu",
        download=False,
        cache=False,
        on_load=loaded.append,
        **SETTINGS,
    )
    assert len(loaded) == 1 and loaded[0].config.steps == SETTINGS["steps"]
    assert result.output == tmp_path / "entry" and result.num_frames == 13
    pipe.generate(PORTRAIT, speech, str(tmp_path / "pipe") + "/", **SETTINGS)
    frames, expected = read_frames(tmp_path / "entry"), read_frames(tmp_path / "pipe")
    assert len(frames) == len(expected) == 13
    for x, y in zip(frames, expected, strict=True):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1


def test_model_outputs_are_deterministic_across_batches(pipe, speech, tmp_path) -> None:
    pipe.generate(PORTRAIT, speech, str(tmp_path / "b4") + "/")
    pipe.generate(PORTRAIT, speech, str(tmp_path / "b1") + "/", batch_size=1)
    for x, y in zip(read_frames(tmp_path / "b4"), read_frames(tmp_path / "b1"), strict=True):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1  # batched float math, then uint8


def test_each_network_checkpoint_is_read_once(release, monkeypatch) -> None:
    from talkinghead.methods.ditto.avatar import AvatarRegistrar
    from talkinghead.methods.ditto.checkpoints import resolve_checkpoints
    from talkinghead.models import OFFICIAL_NETWORKS, loading

    reads: list[Path] = []
    read_checkpoint = loading.read_checkpoint

    def counting_read(path):
        reads.append(Path(path).resolve())
        return read_checkpoint(path)

    monkeypatch.setattr(loading, "read_checkpoint", counting_read)
    models = DittoPipeline.from_pretrained(release, download=False, cache=False, **SETTINGS).models
    ckpt = resolve_checkpoints(release, download=False, strict=False)
    assert sorted(reads) == sorted(ckpt.models[k].resolve() for k in OFFICIAL_NETWORKS)
    # The registrar runs the pipeline's own extractors, named as `from_checkpoints` names them
    # (the avatar cache keys stay the same).
    assert models.registrar.motion_extractor is models.motion_extractor
    assert models.registrar.appearance_extractor is models.appearance_extractor
    assert models.registrar.model_identity == AvatarRegistrar.checkpoints_identity(
        ckpt.models["motion_extractor"], ckpt.models["appearance_extractor"]
    )


def _audio_until_first_motion_frame(pipe, pcm: np.ndarray, **settings) -> float:
    """Seconds of audio pushed (40 ms at a time) when the stream hands its first frame on."""
    session = pipe.stream(PORTRAIT, seed=0, batch_size=1, **settings)
    try:
        for i in range(0, len(pcm), 640):
            session.push(pcm[i : i + 640])
            if session.frames_out:
                return min(i + 640, len(pcm)) / 16000
        raise AssertionError("no frame before the end of the audio")
    finally:
        session.abort()


def test_low_latency_stream_first_frame_after_0_4_s_of_speech(pipe) -> None:
    from talkinghead.audio.io import resample

    data, sr = sf.read(SPEECH, dtype="float32")
    pcm = resample(data[: sr * 3 // 2], sr, 16000)
    # HuBERT emits 5 feature frames per 0.2 s once it has 80 ms of look-ahead.
    low = _audio_until_first_motion_frame(pipe, pcm, online_fuse=5)
    release = _audio_until_first_motion_frame(pipe, pcm)
    assert low == pytest.approx(0.4 + 0.08) and release == pytest.approx(0.8 + 0.08)
    assert not stage_threads()


def test_low_latency_streaming_equals_offline(pipe, speech, tmp_path) -> None:
    from talkinghead.audio.io import load_audio

    pipe.generate(PORTRAIT, speech, str(tmp_path / "off") + "/", online=True, online_fuse=5)
    offline = read_frames(tmp_path / "off")
    pcm = load_audio(speech, 16000)
    session = pipe.stream(PORTRAIT, seed=0, online_fuse=5)
    streamed = []
    for i in range(0, len(pcm), 1000):
        streamed += session.push(pcm[i : i + 1000])
    streamed += session.close()
    assert len(streamed) == len(offline) == 13
    for x, y in zip(streamed, offline, strict=True):
        assert np.array_equal(x, y)
    # And the setting changes the motion (a shorter cross-fade), so the check means something.
    avatar = pipe.register(PORTRAIT, max_frames=1)
    a, _ = pipe.motion(avatar, pcm, config=pipe.config.replace(online=True))
    b, _ = pipe.motion(avatar, pcm, config=pipe.config.replace(online=True, online_fuse=5))
    assert not np.array_equal(a, b)


def test_bad_online_fuse_is_refused_before_any_work(pipe) -> None:
    from talkinghead.errors import TalkingHeadError

    with pytest.raises(TalkingHeadError, match="online_fuse"):
        pipe.stream(PORTRAIT, online_fuse=71)
