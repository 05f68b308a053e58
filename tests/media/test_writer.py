"""Video, frames-folder and raw-stdout writers: what lands on disk, and nothing on failure."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from talkinghead.errors import MediaError
from talkinghead.media.writer import (
    FramesDirWriter,
    RawStdoutWriter,
    VideoWriter,
    open_writer,
)


def make_frames(n: int, h: int, w: int) -> np.ndarray:
    """Smooth frames (H.264 keeps them nearly intact) whose brightness encodes the index."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), np.full_like(x, 128.0)], -1)
    frames = [np.clip(base * 0.5 + i * 100 / max(n - 1, 1), 0, 255) for i in range(n)]
    return np.stack(frames).astype(np.uint8)


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {
            "codec": v.codec_context.name,
            "pix_fmt": v.codec_context.pix_fmt,
            "size": (v.height, v.width),
            "fps": v.average_rate,
            "audio": None,
        }
        if c.streams.audio:
            a = c.streams.audio[0]
            info["audio"] = {
                "codec": a.codec_context.name,
                "rate": a.rate,
                "channels": a.codec_context.channels,
                "duration": None if a.duration is None else float(a.duration * a.time_base),
            }
            if a.duration is None:  # Matroska keeps no per-stream duration: end of the last packet
                last = max((p for p in c.demux(a) if p.pts is not None), key=lambda p: p.pts)
                info["audio"]["duration"] = float((last.pts + last.duration) * a.time_base)
                c.seek(0)
        info["frames"] = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return info


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


@pytest.mark.parametrize(
    ("audio_seconds", "rate"),
    [(0.5, 24000), (2.0, 16000), (0.8, 22000)],
    ids=["short-padded", "long-trimmed", "resampled"],
)
def test_mp4_streams_and_audio_duration(tmp_path, audio_seconds, rate):
    n, h, w = 20, 48, 64
    frames = make_frames(n, h, w)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, fps=25, audio=(tone(audio_seconds, rate), rate)) as writer:
        for frame in frames[:5]:
            writer.write(frame)
        writer.write_batch(frames[5:])
    assert writer.close() == out  # closing again is harmless

    info = probe(out)
    assert info["codec"] == "h264"
    assert info["pix_fmt"] == "yuv420p"
    assert info["size"] == (h, w)
    assert info["fps"] == 25
    assert len(info["frames"]) == n
    # Frames come back in order and nearly as written.
    err = np.abs(np.stack(info["frames"]).astype(float) - frames).mean(axis=(1, 2, 3))
    assert err.max() < 3.0
    assert info["audio"]["codec"] == "aac"
    assert info["audio"]["channels"] == 1
    assert info["audio"]["rate"] == (rate if rate != 22000 else 48000)
    assert info["audio"]["duration"] == pytest.approx(n / 25, abs=0.05)
    assert leftovers(tmp_path, {"out.mp4"}) == []


def test_mp4_without_audio_and_other_fps(tmp_path):
    out = tmp_path / "sub" / "clip.mp4"  # missing parent folders are created
    with VideoWriter(out, fps=30) as writer:
        writer.write_batch(make_frames(12, 48, 64))
    info = probe(out)
    assert info["audio"] is None
    assert info["fps"] == Fraction(30)
    assert len(info["frames"]) == 12


@pytest.mark.parametrize("suffix", [".mov", ".mkv"])
def test_other_containers(tmp_path, suffix):
    out = tmp_path / f"clip{suffix}"
    with VideoWriter(out, audio=(tone(0.4, 16000), 16000)) as writer:
        writer.write_batch(make_frames(10, 48, 64))
    info = probe(out)
    assert info["codec"] == "h264" and len(info["frames"]) == 10
    # Matroska cannot mark the padding in the last AAC frame (1024 samples at 16 kHz).
    tolerance = 0.05 if suffix == ".mov" else 1024 / 16000 + 0.01
    assert info["audio"]["codec"] == "aac"
    assert info["audio"]["duration"] == pytest.approx(0.4, abs=tolerance)


def test_odd_size_is_padded_by_repeating_the_edge(tmp_path):
    frames = make_frames(10, 47, 63)
    out = tmp_path / "odd.mp4"
    with VideoWriter(out) as writer:
        writer.write_batch(frames)
    info = probe(out)
    assert info["size"] == (48, 64) and info["pix_fmt"] == "yuv420p"
    decoded = np.stack(info["frames"]).astype(float)
    assert np.abs(decoded[:, :47, :63] - frames).mean() < 3.0
    # The added row/column repeat the last ones.
    assert np.abs(decoded[:, 47, :63] - frames[:, 46]).mean() < 4.0
    assert np.abs(decoded[:, :47, 63] - frames[:, :, 62]).mean() < 4.0


def test_odd_size_kept_without_chroma_subsampling(tmp_path):
    out = tmp_path / "odd444.mp4"
    with VideoWriter(out, pix_fmt="yuv444p") as writer:
        writer.write_batch(make_frames(5, 47, 63))
    info = probe(out)
    assert info["size"] == (47, 63) and info["pix_fmt"] == "yuv444p"
    assert len(info["frames"]) == 5


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("existing", [False, True])
def test_failure_leaves_no_output_and_keeps_existing(tmp_path, existing):
    out = tmp_path / "out.mp4"
    if existing:
        out.write_bytes(b"previous result")
    with pytest.raises(Boom), VideoWriter(out, audio=(tone(1.0, 16000), 16000)) as writer:
        writer.write_batch(make_frames(8, 48, 64))
        raise Boom
    if existing:
        assert out.read_bytes() == b"previous result"
    else:
        assert not out.exists()
    assert leftovers(tmp_path, {"out.mp4"}) == []
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(make_frames(1, 48, 64)[0])


def test_abort_and_bad_frames(tmp_path):
    out = tmp_path / "out.mp4"
    writer = VideoWriter(out)
    writer.write_batch(make_frames(3, 48, 64))
    writer.abort()
    assert writer.close() is None
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(ValueError, match="RGB uint8"), VideoWriter(out) as w:
        w.write(np.zeros((48, 64, 3), np.float32))
    with pytest.raises(ValueError, match="size changed"), VideoWriter(out) as w:
        w.write(np.zeros((48, 64, 3), np.uint8))
        w.write(np.zeros((48, 66, 3), np.uint8))
    with pytest.raises(MediaError, match="no frames"), VideoWriter(out):
        pass
    assert list(tmp_path.iterdir()) == []


def test_frames_dir_writer(tmp_path):
    frames = make_frames(5, 47, 63)
    target = tmp_path / "frames"
    with FramesDirWriter(target) as writer:
        writer.write_batch(frames)
    names = sorted(p.name for p in target.iterdir())
    assert names == [f"{i:06d}.png" for i in range(5)]
    for i, name in enumerate(names):
        png = cv2.imread(str(target / name), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(png[..., ::-1], frames[i])  # lossless, RGB order
    assert leftovers(tmp_path, {"frames"}) == []

    # A rerun replaces earlier frames wholesale: no stale ones remain.
    with FramesDirWriter(target) as writer:
        writer.write_batch(frames[:2])
    assert sorted(p.name for p in target.iterdir()) == ["000000.png", "000001.png"]
    assert leftovers(tmp_path, {"frames"}) == []

    # Failure: the previous frames stay, no temporary folder is left.
    with pytest.raises(Boom), FramesDirWriter(target) as writer:
        writer.write_batch(frames)
        raise Boom
    assert sorted(p.name for p in target.iterdir()) == ["000000.png", "000001.png"]
    assert leftovers(tmp_path, {"frames"}) == []


def test_frames_dir_refuses_folder_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(MediaError, match="other than frames"):
        FramesDirWriter(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_raw_stdout_writer_in_process(capsysbinary):
    frames = make_frames(4, 48, 64)
    with RawStdoutWriter(fps=25) as writer:
        writer.write_batch(frames)
    captured = capsysbinary.readouterr()
    assert captured.out == frames.tobytes()
    assert b"-s 64x48" in captured.err and captured.err.count(b"rawvideo") == 1


def test_raw_stdout_through_open_writer_subprocess():
    code = textwrap.dedent(
        """
        import numpy as np
        from talkinghead.media.writer import open_writer
        with open_writer("-", fps=25, audio=(np.zeros(100, np.float32), 16000)) as w:
            for i in range(6):
                w.write(np.full((48, 64, 3), i, np.uint8))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    raw = np.frombuffer(proc.stdout, np.uint8).reshape(6, 48, 64, 3)
    assert [int(f.max()) for f in raw] == list(range(6))
    assert b"rgb24 -s 64x48 -r 25" in proc.stderr


def test_open_writer_dispatch(tmp_path):
    assert isinstance(open_writer("-"), RawStdoutWriter)
    assert isinstance(open_writer(tmp_path / "a.mp4"), VideoWriter)
    assert isinstance(open_writer(str(tmp_path / "a.MOV"), crf=23), VideoWriter)
    assert isinstance(open_writer(tmp_path), FramesDirWriter)  # existing directory
    assert isinstance(open_writer(f"{tmp_path}/new_frames/"), FramesDirWriter)
    with pytest.raises(MediaError, match="cannot tell"):
        open_writer(tmp_path / "a.txt")
    assert list(tmp_path.iterdir()) == []  # choosing a writer creates nothing


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request) -> int:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_modes_of_a_plain_open(tmp_path, umask):
    # The temp file / folder they are built in is private (0600 / 0700) until published.
    plain_file, plain_dir = tmp_path / "plain.txt", tmp_path / "plain"
    plain_file.write_text("x")
    plain_dir.mkdir()
    assert mode(plain_file) == 0o666 & ~umask and mode(plain_dir) == 0o777 & ~umask

    video = tmp_path / "talking.mp4"
    with VideoWriter(video, audio=(tone(0.2, 16000), 16000)) as writer:
        writer.write_batch(make_frames(3, 32, 32))
    assert mode(video) == mode(plain_file)

    frames = tmp_path / "frames"
    for _ in range(2):  # a new folder, then replacing an earlier run's
        with FramesDirWriter(frames) as writer:
            writer.write_batch(make_frames(2, 16, 16))
        assert mode(frames) == mode(plain_dir)
        assert {mode(p) for p in frames.iterdir()} == {mode(plain_file)}


def test_x264_is_chosen_when_nvenc_is_absent(tmp_path, monkeypatch) -> None:
    import talkinghead.media.writer as writer_module

    # No NVIDIA device here (or a build without NVENC): the probe fails and x264 encodes.
    monkeypatch.setattr(writer_module, "hardware_encoder_works", lambda name: False)
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    w = writer_module.VideoWriter(tmp_path / "a.mp4", fps=25)
    w.write_batch(frames)
    w.close()
    assert w.encoder == "libx264"
    assert w.encode_seconds > 0
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    # hardware=False never probes.
    monkeypatch.setattr(writer_module, "hardware_encoder_works", lambda name: 1 / 0)
    assert writer_module._pick_h264_encoder(hardware=False) == "libx264"


def test_nvenc_probe_fails_cleanly_without_a_gpu() -> None:
    import torch

    from talkinghead.media.writer import _pick_h264_encoder, hardware_encoder_works

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: NVENC may work here")
    hardware_encoder_works.cache_clear()
    assert hardware_encoder_works("h264_nvenc") is False
    assert hardware_encoder_works("no_such_encoder") is False
    assert _pick_h264_encoder() == "libx264"
