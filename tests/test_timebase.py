"""The toolkit's time base: frames for N samples, exactly, at 25 fps and at a video's rate."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from talkinghead.timebase import (
    FPS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    frame_time,
    frames_for_duration,
    num_frames,
)


def test_constants():
    assert (FPS, SAMPLE_RATE, SAMPLES_PER_FRAME) == (25, 16000, 640)


def test_25_fps_is_the_integer_ceil():
    for n in [*range(0, 5000), 252080, 16000 * 3600 + 1]:
        assert num_frames(n) == -(-n // 640)
    # Where float arithmetic gives a spurious extra frame, the count stays exact.
    assert math.ceil(4480 / 16000 * 25) == 8 and num_frames(4480) == 7
    assert num_frames(np.int64(641)) == 2 and num_frames(641, fps=np.float32(25)) == 2


def test_other_rates_are_exact_at_their_frame_boundaries():
    # 50 fps: 320 samples a frame.
    assert [num_frames(n, fps=50.0) for n in (0, 1, 320, 321, 16000)] == [0, 1, 1, 2, 50]
    # NTSC as a container reports it (a float of 30000/1001) and written as 29.97: at an exact
    # boundary the count is that many frames, one sample more gives one more.
    for fps, exact in ((30000 / 1001, Fraction(30000, 1001)), (29.97, Fraction(2997, 100))):
        for frames in (1, 7, 30, 1000, 30000, 123457):
            boundary = Fraction(frames) / exact * SAMPLE_RATE
            if boundary.denominator == 1:
                n = int(boundary)
                assert num_frames(n, fps=fps) == frames
                assert num_frames(n + 1, fps=fps) == frames + 1
        assert num_frames(1, fps=fps) == 1
        for n in range(0, 200_000, 997):
            assert num_frames(n, fps=fps) == math.ceil(Fraction(n) * exact / SAMPLE_RATE)
    assert num_frames(16016, fps=Fraction(30000, 1001)) == 30


def test_durations_and_frame_times():
    assert frames_for_duration(0.5) == 13 and frames_for_duration(0.52) == 13
    assert frames_for_duration(15.8) == 395 and frames_for_duration(1.0, fps=50) == 50
    assert frame_time(25) == 1.0 and frame_time(3, fps=50) == 0.06
