"""Audio decoding: every common container/codec/bit depth -> float32 mono 16 kHz."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile

from _audio_files import encode_with_pyav, tone
from _conformance import MEDIA_DIR, skip_missing
from talkinghead.audio.io import chunk_to_mono, load_audio, pcm16_to_float32, resample
from talkinghead.errors import MediaError


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def check_tone(
    y: np.ndarray, freq: float, seconds: float, amp: float, tol_samples: int = 0, rel: float = 0.02
):
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - round(16000 * seconds)) <= tol_samples
    assert np.abs(y).max() <= 1.0
    assert abs(peak_hz(y, 16000) - freq) < 16000 / len(y) + 1e-6
    # Amplitude survives (RMS of a sine = amp / sqrt 2), away from codec edges.
    mid = y[len(y) // 4 : 3 * len(y) // 4]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(amp / np.sqrt(2), rel=rel)


def test_stereo_44k_wav(tmp_path):
    x = tone(440, 44100, 1.0)
    stereo = np.stack([x, 0.5 * x], 1)  # mono = average = 0.75 x
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, 44100, subtype="PCM_16")
    check_tone(load_audio(path), 440, 1.0, 0.375)


@pytest.mark.parametrize(
    ("name", "sr", "kwargs"),
    [
        ("u8.wav", 8000, {"subtype": "PCM_U8"}),
        ("s16.wav", 16000, {"subtype": "PCM_16"}),
        ("s24.flac", 48000, {"subtype": "PCM_24"}),
        ("s32.wav", 32000, {"subtype": "PCM_32"}),
        ("float.wav", 22050, {"subtype": "FLOAT"}),
        ("vorbis.ogg", 24000, {"format": "OGG", "subtype": "VORBIS"}),
    ],
)
def test_soundfile_formats(tmp_path, name, sr, kwargs):
    path = tmp_path / name
    soundfile.write(path, tone(300, sr, 0.5), sr, **kwargs)
    y = load_audio(path)
    lossy = "OGG" in kwargs.values()
    check_tone(y, 300, 0.5, 0.5, tol_samples=100 if lossy else 0, rel=0.1 if lossy else 0.02)


@pytest.mark.parametrize(
    ("name", "codec", "fmt"), [("speech.mp3", "libmp3lame", "mp3"), ("speech.m4a", "aac", "ipod")]
)
def test_ffmpeg_formats(tmp_path, name, codec, fmt):
    path = tmp_path / name
    encode_with_pyav(path, tone(500, 44100, 1.0), 44100, codec, fmt)
    # Codec priming/padding may shift the length by a few frames of 1152/1024 samples;
    # lossy encoders (LAME at its defaults) also lower the level by a few percent.
    check_tone(load_audio(path), 500, 1.0, 0.5, tol_samples=1600, rel=0.1)


def test_an_mp4_s_audio_is_as_long_as_its_track_says(tmp_path):
    """AAC decodes in whole 1024-sample frames: what passes the track's declared length is
    padding and is cut (2.048 s for 2 s before), so a video of our own gets no extra frame."""
    from talkinghead.audio.io import probe_audio
    from talkinghead.media.clip import VideoClip

    sr = 16000
    x = np.zeros(2 * sr, np.float32)
    x[sr // 2 : sr // 2 + 40] = 0.9
    path = VideoClip(np.zeros((50, 32, 32, 3), np.uint8), 25, x, sr).save(tmp_path / "click.mp4")
    with av.open(str(path)) as container:
        decoded = sum(f.samples for f in container.decode(audio=0))
    assert decoded > 2 * sr  # the padding is there in the file
    y = load_audio(path)
    assert len(y) == 2 * sr and probe_audio(path) == 2.0
    assert int(np.argmax(np.abs(y) > 0.3)) == sr // 2  # nothing cut at the start


def test_stereo_aac_channels_are_averaged(tmp_path):
    path = tmp_path / "stereo.m4a"
    x = tone(600, 48000, 1.0)
    encode_with_pyav(path, np.stack([x, np.zeros_like(x)]), 48000, "aac", "ipod")
    check_tone(load_audio(path), 600, 1.0, 0.25, tol_samples=1600, rel=0.1)


def test_other_rates_and_the_original_rate(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, tone(1000, 48000, 0.3), 48000, subtype="PCM_16")
    y48 = load_audio(path, sample_rate=48000)
    assert len(y48) == 14400 and abs(peak_hz(y48, 48000) - 1000) < 4
    y8 = load_audio(path, sample_rate=8000)
    assert len(y8) == 2400 and abs(peak_hz(y8, 8000) - 1000) < 4


def test_short_clip_and_silence(tmp_path):
    short = tmp_path / "short.wav"
    soundfile.write(short, tone(440, 44100, 0.1), 44100)
    assert load_audio(short).shape == (1600,)
    silent = tmp_path / "silence.flac"
    soundfile.write(silent, np.zeros(24000, np.float32), 24000)
    y = load_audio(silent)
    assert y.shape == (16000,) and not y.any()


def test_float_wav_beyond_full_scale_is_clipped(tmp_path):
    path = tmp_path / "loud.wav"
    soundfile.write(path, tone(200, 16000, 0.2, amp=2.0), 16000, subtype="FLOAT")
    y = load_audio(path)
    assert y.max() == 1.0 and y.min() == -1.0


def test_resample_keeps_frequency_and_length():
    for sr_in, sr_out in [(48000, 16000), (8000, 16000), (44100, 16000), (22050, 16000)]:
        x = tone(700, sr_in, 0.5)
        y = resample(x, sr_in, sr_out)
        assert y.dtype == np.float32 and len(y) == -(-len(x) * sr_out // sr_in)
        assert abs(peak_hz(y, sr_out) - 700) < 2.1
    same = resample(np.ones(10), 16000, 16000)
    assert same.dtype == np.float32 and same.shape == (10,)
    assert resample(np.zeros(0, np.float32), 44100, 16000).shape == (0,)


def test_pcm16_bytes():
    pcm = np.array([0, 16384, -32768, 32767], "<i2")
    np.testing.assert_array_equal(pcm16_to_float32(pcm.tobytes()), [0, 0.5, -1, 32767 / 32768])
    stereo = np.array([16384, 0, -16384, -16384], "<i2").tobytes()
    np.testing.assert_array_equal(pcm16_to_float32(stereo, channels=2), [0.25, -0.5])
    with pytest.raises(MediaError, match=r"3 bytes"):
        pcm16_to_float32(b"abc")


def test_stream_chunks_are_read_as_whole_files_are():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    want = pcm.astype(np.float32) / 32768
    for chunk in (pcm, pcm.tobytes(), want, want.astype(np.float64), np.stack([pcm, pcm], 1)):
        got = chunk_to_mono(chunk)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(chunk_to_mono(np.array([1.5, -2.0])), [1.0, -1.0])
    for bad, message in (
        (np.array([0.0, np.inf]), "NaN or infinite"),
        (np.array(["a"]), "samples must be float, int16 or int32"),
        (np.zeros((4, 4, 4)), "expected mono samples"),
        (b"abc", "not a whole number"),
    ):
        with pytest.raises(MediaError, match=message):
            chunk_to_mono(bad)


def test_missing_empty_and_corrupt_files(tmp_path):
    with pytest.raises(MediaError, match=r"nothing\.wav.*not found"):
        load_audio(tmp_path / "nothing.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty\.wav.*empty"):
        load_audio(empty)
    no_samples = tmp_path / "no_samples.wav"
    soundfile.write(no_samples, np.zeros(0, np.float32), 16000)
    with pytest.raises(MediaError, match=r"no_samples\.wav.*no audio samples"):
        load_audio(no_samples)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    with pytest.raises(MediaError, match=r"corrupt\.wav"):
        load_audio(corrupt)
    text = tmp_path / "notes.mp3"
    text.write_text("not audio at all\n" * 20)
    with pytest.raises(MediaError, match=r"notes\.mp3"):
        load_audio(text)
    with pytest.raises(MediaError, match=r"a folder, not an audio file; give a speech file"):
        load_audio(tmp_path)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(MediaError) as info:  # FFmpeg's words, not its errno number
        load_audio(junk)
    assert "not a readable audio file (Invalid data" in str(info.value)
    assert "Errno" not in str(info.value)


def test_video_file_without_audio(tmp_path):
    path = tmp_path / "silent_video.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for packet in stream.encode(av.VideoFrame(32, 32, "yuv420p")):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(MediaError, match=r"silent_video\.mp4.*no audio stream"):
        load_audio(path)


def test_real_speech():
    path = MEDIA_DIR / "ditto_example_speech.wav"
    if not path.exists():
        skip_missing(f"{MEDIA_DIR}")
    y = load_audio(path)
    info = soundfile.info(str(path))
    assert info.samplerate == 24000
    assert len(y) == -(-info.frames * 16000 // 24000)  # as librosa.load(sr=16000)
    assert len(y) / 16000 == pytest.approx(15.755, abs=1e-3)
    assert y.dtype == np.float32 and 0.05 < np.abs(y).max() <= 1.0
