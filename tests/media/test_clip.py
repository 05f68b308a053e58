"""VideoClip: the frames a pipeline gives back, and saving them like any output."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from talkinghead.errors import MediaError
from talkinghead.media.clip import VideoClip


def _clip(frames: int = 6, fps: float = 25) -> VideoClip:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (frames, 32, 48, 3), dtype=np.uint8)
    audio = (0.1 * np.sin(np.arange(int(16000 * frames / fps)) / 9)).astype(np.float32)
    return VideoClip(pixels, fps, audio, 16000)


def test_sizes():
    clip = _clip(6, 50)
    assert (clip.num_frames, clip.size, clip.seconds) == (6, (32, 48), 0.12)


def test_save_writes_a_video_with_its_audio(tmp_path):
    path = _clip().save(tmp_path / "clip.mp4")
    assert path == tmp_path / "clip.mp4"
    with av.open(str(path)) as c:
        assert len(list(c.decode(video=0))) == 6
        assert float(c.streams.video[0].average_rate) == 25 and len(c.streams.audio) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary file left


def test_save_to_a_frames_folder_is_lossless(tmp_path):
    clip = _clip(3)
    clip.save(f"{tmp_path}/frames/")
    saved = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "frames").iterdir())])
    np.testing.assert_array_equal(saved, clip.frames)


def test_an_unknown_output_is_refused(tmp_path):
    with pytest.raises(MediaError, match="cannot tell what to write"):
        _clip().save(tmp_path / "clip.gif")
    assert not list(tmp_path.iterdir())


def test_write_or_return_collects_or_writes_frames_as_they_come(tmp_path):
    from talkinghead.media.clip import write_or_return

    clip = _clip(4)
    made = write_or_return(iter(clip.frames), None, fps=25, audio=clip.audio, sample_rate=16000)
    assert isinstance(made, VideoClip) and np.array_equal(made.frames, clip.frames)
    path = write_or_return(
        (f for f in clip.frames), tmp_path / "out.mp4", fps=25, audio=clip.audio, sample_rate=16000
    )
    assert path == tmp_path / "out.mp4" and path.stat().st_size > 0


def test_a_failing_frame_source_leaves_no_output(tmp_path):
    from talkinghead.media.clip import write_or_return

    def frames():
        yield _clip(1).frames[0]
        raise RuntimeError("the network failed")

    with pytest.raises(RuntimeError, match="the network failed"):
        write_or_return(
            frames(), tmp_path / "out.mp4", fps=25, audio=_clip().audio, sample_rate=16000
        )
    assert not list(tmp_path.iterdir())
