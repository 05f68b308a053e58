"""Pieces the toolkit defines once (issue 14): the time base, the EMA, the motion keys, the DDIM,
the data-preparation runner, the video reader, the wav2vec2 wrapper, the checkpoint sidecar."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import talkinghead
from talkinghead.methods.ditto.motion.format import MOTION_KEYS, MOTION_LAYOUT_WITH_KP
from talkinghead.models.motion_extractor import OUTPUT_KEYS

PACKAGE = Path(talkinghead.__file__).resolve().parent

# (what, pattern of a module-level definition, the one module allowed to define it)
SINGLE_DEFINITIONS = [
    ("FPS", r"^FPS\s*(:[^=]*)?=", "timebase.py"),
    ("SAMPLE_RATE", r"^SAMPLE_RATE\s*(:[^=]*)?=", "timebase.py"),
    ("SAMPLES_PER_FRAME", r"^SAMPLES_PER_FRAME\s*(:[^=]*)?=", "timebase.py"),
    (
        "frames for N samples",
        r"^def (num_frames|expected_frames|output_frames|frames_for_audio|expected_frame_count)\(",
        "timebase.py",
    ),
    ("an EMA class", r"^\s*class \w*EMA\w*\b", "training/ema.py"),
    ("MOTION_KEYS", r"^MOTION_KEYS\s*(:[^=]*)?=", "methods/ditto/motion/format.py"),
    ("a DDIM sampler class", r"^\s*class \w*DDIM\w*Sampler\b", "diffusion/ddim.py"),
    (
        "the DDIM sampling loop",
        r"^\s*def (ddim_sample|ddim_step|sample_loop)\(",
        "diffusion/ddim.py",
    ),
    ("a diffusion schedule class", r"^\s*class \w*Schedule\b", "diffusion/schedules.py"),
    ("the video-frame iterator", r"^\s*def \w*iter_video_frames\(", "media/video.py"),
    ("a data-preparation report", r"^\s*class \w*PrepareReport\b", "training/prepare.py"),
    ("video discovery", r"^\s*def \w*find_videos\(", "training/prepare.py"),
    ("the worker initialiser", r"^\s*def _worker_init\(", "training/prepare.py"),
    ("a wav2vec2 wrapper", r"^\s*class \w*(Wav2Vec2|CTC)\w*\b", "audio/ctc.py"),
    ("the stage runner", r"^\s*class \w*StageRunner\b", "stages.py"),
    ("the checkpoint sidecar name", r"^SIDECAR_NAME\s*(:[^=]*)?=", "methods/ditto/checkpoints.py"),
]


def definitions(pattern: str) -> list[str]:
    """`file:line` of every line of the package's sources that matches `pattern`."""
    regex = re.compile(pattern)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if regex.match(line):
                found.append(f"{path.relative_to(PACKAGE).as_posix()}:{number}")
    return found


@pytest.mark.parametrize(
    ("what", "pattern", "home"), SINGLE_DEFINITIONS, ids=[w for w, _, _ in SINGLE_DEFINITIONS]
)
def test_defined_exactly_once(what: str, pattern: str, home: str) -> None:
    found = definitions(pattern)
    assert len(found) == 1 and found[0].startswith(f"{home}:"), (
        f"{what} should be defined once, in {home}; found {found}"
    )


@pytest.mark.parametrize(
    ("what", "pattern", "home"), SINGLE_DEFINITIONS, ids=[w for w, _, _ in SINGLE_DEFINITIONS]
)
def test_the_scan_sees_the_definition(what: str, pattern: str, home: str) -> None:
    # Guards the test above against a pattern that could never match.
    assert [f for f in definitions(pattern) if f.startswith(f"{home}:")], what


def test_the_two_motion_key_orders_are_one_set():
    # The keyed motion follows the vector's layout; the extractor returns its heads in the
    # release's order. Both name the same seven blocks.
    assert MOTION_LAYOUT_WITH_KP.names == MOTION_KEYS
    assert MOTION_KEYS == ("scale", "pitch", "yaw", "roll", "t", "exp", "kp")
    assert sorted(OUTPUT_KEYS) == sorted(MOTION_KEYS) and len(set(OUTPUT_KEYS)) == 7
