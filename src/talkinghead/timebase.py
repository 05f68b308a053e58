"""The one time base of the toolkit: video frames at 25 fps over 16 kHz audio.

Every method, the server and the data preparation count frames with `num_frames`,
so "how many frames does this audio give" has a single answer: ceil(seconds x fps),
computed in integers (a float `ceil(len / 16000 * 25)` gives a spurious extra frame
for some exact multiples of 640 samples). Other rates (DiffTalk follows a source
video's own, e.g. 50 or 30000/1001) are counted exactly as fractions.
"""

from __future__ import annotations

from fractions import Fraction

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
# A float frame rate is read as the nearest fraction with at most this denominator:
# 29.97 -> 2997/100, and a container's 30000/1001 (as a float) -> 30000/1001 again.
MAX_RATE_DENOMINATOR = 1_000_000


def num_frames(
    num_samples: int, sample_rate: int = SAMPLE_RATE, fps: float | Fraction = FPS
) -> int:
    """Video frames covering `num_samples` of audio: ceil(seconds x fps), exactly."""
    if float(fps).is_integer():
        return -(-int(num_samples) * int(fps) // int(sample_rate))
    rate = fps if isinstance(fps, Fraction) else Fraction(float(fps))
    rate = rate.limit_denominator(MAX_RATE_DENOMINATOR)
    return -(-int(num_samples) * rate.numerator // (int(sample_rate) * rate.denominator))


def frames_for_duration(seconds: float, fps: float | Fraction = FPS) -> int:
    """Video frames covering `seconds` of audio at 16 kHz: ceil(seconds x fps)."""
    return num_frames(round(seconds * SAMPLE_RATE), SAMPLE_RATE, fps)


def frame_time(index: int, fps: float = FPS) -> float:
    """Presentation time of frame `index`, seconds."""
    return index / fps
