"""DiffTalk inference: source image/video + speech -> talking-head video, by progressive inference.

Per output frame i (paper Sec. 3.3, Fig. 4):

1. the source frame (a video loops back and forth; an image repeats) is cropped around
   the face at the checkpoint's resolution (256 or 512);
2. conditions: the smoothed audio of frames i - 8 .. i + 8, the landmarks outside the
   mouth, the mouth-masked crop x_m, and the reference x_r: the source's first crop for
   frame 0, then the previous *generated* crop (progressive inference);
3. masked DDIM (200 steps, eta 0) in the 64 x 64 x 3 latent: the lower face is sampled
   from noise, the rest is the source crop's latent (CompVis inpainting);
4. the decoded crop is pasted back into the frame (`talkinghead.face.paste`) and kept
   only inside the feathered lower-face mask: the rest of the frame keeps its pixels;
5. frames stream into the writer (H.264 + the input audio).

The crops, conditions and masks are made as for the training data
(`talkinghead.methods.difftalk.features`); the models come from a checkpoint directory
written by `talkinghead train-difftalk` (`talkinghead.methods.difftalk.checkpoint`).
Steps 2-4 are `talkinghead.methods.difftalk.generation.DiffTalkGenerator`, which
training's validation samples run too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from talkinghead.errors import TalkingHeadError
from talkinghead.frames.interpolation import create_interpolator, interpolate_2x
from talkinghead.methods.difftalk.checkpoint import RESOLUTIONS, load_difftalk
from talkinghead.methods.difftalk.generation import (
    DiffTalkConfig,
    DiffTalkGenerator,
    FrameResult,
    Progress,
    SourceFaces,
    compose,
)
from talkinghead.timebase import SAMPLE_RATE


def generate_video(
    source: Path,
    audio: Path,
    output: Path | str,
    *,
    checkpoints: Path,
    seed: int | None = None,
    steps: int | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
    **method_options: Any,
) -> Path:
    """Write a DiffTalk video of `source` (image or video) speaking `audio` to `output`.

    Method options: ``resolution`` (256 | 512: which checkpoint), ``audio_encoder`` (a
    `CharProbabilityEncoder` object) and the fields of `DiffTalkConfig`.
    """
    from talkinghead.audio.io import load_audio
    from talkinghead.media.writer import open_writer

    options = dict(method_options)
    resolution = options.pop("resolution", None)
    encoder = options.pop("audio_encoder", None)
    if resolution is not None and int(resolution) not in RESOLUTIONS:
        raise TalkingHeadError(
            f"DiffTalk resolution must be one of {RESOLUTIONS}, got {resolution}"
        )
    config = DiffTalkConfig().replace(steps=steps, **options)
    models = load_difftalk(Path(checkpoints), int(resolution) if resolution else None, device)
    gen = DiffTalkGenerator(models, config, device, audio_encoder=encoder)
    # Before any frame is made: "rife" without its weights fails here.
    interpolator = create_interpolator(config.interpolation, models.directory, device)

    audio_path = Path(audio)
    audio_16k = load_audio(audio_path, SAMPLE_RATE)
    src, n = gen.prepare_source(Path(source), len(audio_16k), progress)
    out_fps = src.fps * 2 if interpolator is not None else src.fps
    mux_rate = 48000
    writer = open_writer(output, fps=out_fps, audio=(load_audio(audio_path, mux_rate), mux_rate))
    try:
        stream = (r.frame for r in gen.frames(src, audio_16k, n, seed=seed, progress=progress))
        if interpolator is not None:
            stream = interpolate_2x(stream, interpolator)
        for frame in stream:
            writer.write(frame)
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    return Path(path) if path is not None else Path(str(output))


__all__ = [
    "DiffTalkConfig",
    "DiffTalkGenerator",
    "FrameResult",
    "SourceFaces",
    "compose",
    "generate_video",
]
