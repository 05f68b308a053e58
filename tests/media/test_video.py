"""The one video reader: frame rate, display rotation, resampling by time, limits, sizes."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from talkinghead.errors import MediaError
from talkinghead.media.video import VideoReader, iter_video_frames


def write_video(
    path: Path, levels: list[int], fps: int = 25, h: int = 48, w: int = 64, rotation=None
) -> Path:
    """Frame i is grey level levels[i], its left half white (to see rotations)."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for level in levels:
            a = np.full((h, w, 3), level, np.uint8)
            a[:, : w // 2] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def grey(frames) -> list[int]:
    """Each frame's level, from its right half, in steps of 20."""
    return [round(float(f[:, f.shape[1] // 2 :].mean()) / 20) for f in frames]


def test_frames_and_fps(tmp_path):
    path = write_video(tmp_path / "clip.mp4", [20 * i for i in range(8)], fps=30)
    reader = VideoReader(path)
    assert reader.fps == 30.0 and not reader.is_still
    frames = list(reader.frames())
    assert len(frames) == 8 and grey(frames) == list(range(8))
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert grey(iter_video_frames(path, max_frames=3)) == [0, 1, 2]


def test_resampling_picks_the_nearest_frame_in_time(tmp_path):
    path = write_video(tmp_path / "ten.mp4", [20 * i for i in range(5)], fps=10)  # 0.5 s
    up = grey(iter_video_frames(path, fps=25))
    assert up == [min(round(k * 10 / 25), 4) for k in range(13)]  # 13 frames: 0.5 s at 25 fps
    path = write_video(tmp_path / "fifty.mp4", [20 * (i // 2) for i in range(10)], fps=50)
    assert grey(iter_video_frames(path, fps=25)) == [0, 1, 2, 3, 4]
    # the limit counts output frames
    assert len(list(iter_video_frames(path, fps=25, max_frames=2))) == 2


def test_display_rotation_is_applied(tmp_path):
    path = write_video(tmp_path / "phone.mp4", [40, 60], rotation=90)
    frame = next(iter_video_frames(path))
    assert frame.shape == (64, 48, 3)
    assert frame[40:].mean() > 230 and frame[:24].mean() < 80  # the white half at the bottom


def test_fit_shrinks_by_the_release_rule(tmp_path):
    path = write_video(tmp_path / "clip.mp4", [100], h=48, w=64)
    assert next(iter_video_frames(path, fit=True, max_side=32)).shape == (24, 32, 3)
    assert next(iter_video_frames(path)).shape == (48, 64, 3)  # without fit: as decoded


def test_a_still_image_is_one_frame_without_a_rate(tmp_path):
    path = tmp_path / "face.png"
    Image.fromarray(np.full((20, 30, 3), 77, np.uint8)).save(path)
    reader = VideoReader(path)
    assert reader.is_still and reader.fps is None
    frames = list(reader.frames(fps=25))
    assert len(frames) == 1 and frames[0].shape == (20, 30, 3)


def test_unreadable_files_are_media_errors(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("hello, this is text\n" * 10)
    with pytest.raises(MediaError, match=r"notes\.mp4"):
        list(iter_video_frames(text))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video" * 10)
    with pytest.raises(MediaError, match=r"junk\.mp4"):
        list(iter_video_frames(junk))
    with pytest.raises(ValueError, match="max_frames"):
        VideoReader(write_video(tmp_path / "ok.mp4", [0])).frames(max_frames=0)
