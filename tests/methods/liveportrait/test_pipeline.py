"""`talkinghead animate` and `LivePortraitAnimator` end to end, on a tiny LivePortrait release."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from _conformance import PORTRAIT, skip_missing
from _tiny_liveportrait import build_tiny_liveportrait
from talkinghead.errors import MediaError, SettingsError
from talkinghead.methods.liveportrait.pipeline import LivePortraitAnimator

DRIVING_FRAMES = 6


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return build_tiny_liveportrait(tmp_path_factory.mktemp("lp"))


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> tuple[Path, Path]:
    """A 240x300 portrait (not square) and a 6-frame driving video of the face moving."""
    if not PORTRAIT.is_file():
        skip_missing(str(PORTRAIT))
    root = tmp_path_factory.mktemp("media")
    face = np.asarray(Image.open(PORTRAIT).convert("RGB").resize((300, 300)))
    portrait = root / "portrait.png"
    Image.fromarray(face[:, 30:270]).save(portrait)
    driving = root / "driving.mp4"
    with av.open(str(driving), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 256
        s.pix_fmt = "yuv420p"
        for i in range(DRIVING_FRAMES):
            shifted = np.roll(face, 3 * i, axis=1)[22:278, 22:278]
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(shifted), "rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return portrait, driving


def read_video(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as c:
        rate = float(c.streams.video[0].average_rate)
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)], rate


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "talkinghead", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )


def test_animate_gives_the_driving_frame_count_at_the_source_size(release, media, tmp_path):
    portrait, driving = media
    out = tmp_path / "out.mp4"
    proc = run(
        [
            "animate",
            "--source",
            str(portrait),
            "--driving",
            str(driving),
            "-o",
            str(out),
            "--checkpoints",
            str(release),
            "--eye-open",
            "0.3",
            "--batch-size",
            "4",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    frames, fps = read_video(out)
    assert len(frames) == DRIVING_FRAMES
    assert frames[0].shape == (300, 240, 3)
    assert fps == 25
    assert not [p for p in tmp_path.iterdir() if p.name != "out.mp4"]  # no temp file left


def test_the_api_returns_frames_and_the_sliders_change_them(release, media):
    portrait, driving = media
    animator = LivePortraitAnimator.from_pretrained(release)
    plain = animator.animate(portrait, driving, max_frames=2)
    assert plain.frames.shape == (2, 300, 240, 3) and plain.output is None
    opened = animator.animate(portrait, driving, max_frames=2, eye_open=0.8, lip_open=0.8)
    assert not np.array_equal(plain.frames, opened.frames)
    again = animator.animate(portrait, driving, max_frames=2)
    assert np.array_equal(plain.frames, again.frames)


def test_api_errors(release, media, tmp_path):
    portrait, driving = media
    animator = LivePortraitAnimator.from_pretrained(release)
    with pytest.raises(SettingsError, match=r"eye_open must be a number from 0\.0 to 0\.8"):
        animator.animate(portrait, driving, eye_open=2.0)
    with pytest.raises(MediaError, match="must be a video"):
        animator.animate(portrait, portrait)
    with pytest.raises(MediaError, match="the output is the driving input"):
        animator.animate(portrait, driving, driving)
    with pytest.raises(MediaError, match="the source is a video"):
        animator.animate(driving, driving)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (["--eye-open", "1.5"], "eye_open must be a number from 0.0 to 0.8"),
        (["--driving", "{portrait}"], "the driving input must be a video"),
        (["--driving", "{tmp}/nothing.mp4"], "driving video not found"),
        (["--checkpoints", "{tmp}"], "no LivePortrait release"),
        (["-o", "{tmp}/out.avi"], "cannot tell what to write"),
        (["-o", "{driving}"], "the output is the --driving input"),  # it was overwritten
        (["--source", "{driving}"], "the source is a video; animate takes a portrait"),
    ],
)
def test_cli_errors_are_one_line_before_any_model_loads(
    release, media, tmp_path, change, needle, monkeypatch, capsys
):
    from _cli_in_process import run_cli

    portrait, driving = media
    args = {
        "--source": str(portrait),
        "--driving": str(driving),
        "-o": str(tmp_path / "o.mp4"),
        "--checkpoints": str(release),
    }
    key, value = change
    if key in args:
        args[key] = value.format(portrait=portrait, tmp=tmp_path, driving=driving)
    else:
        args[key] = value
    driving_bytes = driving.read_bytes()
    proc = run_cli(["animate", *[x for kv in args.items() for x in kv]], monkeypatch, capsys)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.mp4").exists()
    assert driving.read_bytes() == driving_bytes


def test_generate_refuses_liveportrait_by_name():
    from talkinghead.errors import TalkingHeadError
    from talkinghead.methods import get_method

    with pytest.raises(TalkingHeadError, match="'liveportrait' offers no generation"):
        get_method("liveportrait").entry_point("generate")
