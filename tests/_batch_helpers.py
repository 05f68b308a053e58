"""A batch of real jobs for the end-to-end batch tests: good ones and bad ones, on the tiny
release, and what their videos must look like."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import soundfile as sf
from PIL import Image

from _conformance import PORTRAIT, SPEECH, skip_missing

# Every job renders at most 256 px (the portrait is 1432 x 1432) in 2 DDIM steps.
JOB_SETTINGS = "2,0,256"  # steps, seed, max_size
HEADER = "id,source,audio,output,emotion,crop_scale,steps,seed,max_size"


@dataclass
class BatchFiles:
    folder: Path
    jobs_csv: Path
    good: dict[str, tuple[Path, int]]  # job id -> (output, frames)
    bad: dict[str, str]  # job id -> what its reason says
    long_job: str  # the job long enough to be killed while it renders


def speech_clip(path: Path, seconds: float) -> Path:
    data, sr = sf.read(SPEECH, dtype="float32")
    sf.write(path, data[: int(sr * seconds)], sr)
    return path


def make_batch(folder: Path, *, with_face_failure: bool = True) -> BatchFiles:
    """Jobs over two portraits (the example face and its mirror image) and three clips,
    plus a job of each kind of bad input."""
    if not PORTRAIT.is_file():
        skip_missing(str(PORTRAIT))
    folder.mkdir(parents=True, exist_ok=True)
    speech_clip(folder / "short.wav", 0.3)  # 8 frames
    speech_clip(folder / "mid.wav", 0.4)  # 10 frames
    speech_clip(folder / "long.wav", 1.0)  # 25 frames
    (folder / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with Image.open(PORTRAIT) as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "mirror.png")
    Image.new("RGB", (320, 240), (200, 190, 180)).save(folder / "wall.png")
    rows = [
        f"one,{PORTRAIT},mid.wav,out/one.mp4,Happy,,{JOB_SETTINGS}",
        f"two,{PORTRAIT},short.wav,out/two.mp4,,2.5,{JOB_SETTINGS}",
        f"three,mirror.png,long.wav,out/three.mp4,,,{JOB_SETTINGS}",
        f"missing,nobody.png,mid.wav,out/missing.mp4,,,{JOB_SETTINGS}",
        f"junk,mirror.png,junk.wav,out/junk.mp4,,,{JOB_SETTINGS}",
        f"emotion,mirror.png,short.wav,out/emotion.mp4,Furious,,{JOB_SETTINGS}",
    ]
    bad = {
        "missing": "nobody.png: source file not found",
        "junk": "junk.wav",
        "emotion": "unknown emotion 'Furious'",
    }
    if with_face_failure:
        rows.append(f"wall,wall.png,short.wav,out/wall.mp4,,,{JOB_SETTINGS}")
        bad["wall"] = "no face"
    jobs_csv = folder / "jobs.csv"
    jobs_csv.write_text("\n".join([HEADER, *rows]) + "\n")
    out = folder / "out"
    good = {
        "one": (out / "one.mp4", 10),
        "two": (out / "two.mp4", 8),
        "three": (out / "three.mp4", 25),
    }
    return BatchFiles(folder, jobs_csv, good, bad, "three")


def check_video(path: Path, frames: int, size: tuple[int, int] = (256, 256)) -> None:
    """`frames` frames of `size` at 25 fps, with an audio track as long as the video."""
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert float(video.average_rate) == 25
    assert len(decoded) == frames, path
    assert decoded[0].shape == (*size, 3)
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].rate
        audio_s = sum(f.samples for f in c.decode(audio=0)) / rate
    assert math.isclose(audio_s, frames / 25, abs_tol=0.05), (audio_s, frames)


def hidden_files(folder: Path) -> list[Path]:
    """What a writer leaves only while it works (or when killed): its temporary siblings."""
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))
