"""The creator's page: portrait or video and speech in, a preview and the mp4 out.

Built with Gradio Blocks. Every field maps to a `talkinghead generate` option; errors
from the checks show as one line in the page (`gr.Error`), as the CLI prints them.
The API name of the button is ``generate`` (``gradio_client``: ``api_name="/generate"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from talkinghead.app.generation import EMOTIONS, Generator, Request
from talkinghead.errors import TalkingHeadError
from talkinghead.methods.ditto.pose_controls import POSE_CONTROLS

TITLE = "talkinghead: a portrait speaks"
# What the page's inputs are, in the order the button sends them (gradio_client uses it too).
INPUT_NAMES = (
    "portrait",
    "video",
    "audio",
    "method",
    "emotion",
    *POSE_CONTROLS,
    "crop_scale",
    "crop_vy",
    "steps",
    "seed",
    "fade_in",
    "fade_out",
)


def _request(values: dict[str, Any]) -> Request:
    portrait, video = values.pop("portrait"), values.pop("video")
    if portrait and video:
        raise TalkingHeadError("both a portrait and a video were given: clear one of them")
    return Request(source=video or portrait, **values)


def build_app(generator: Generator) -> gr.Blocks:
    """The page, bound to `generator` (one pipeline for the process)."""

    # gradio finds its progress tracker by this default value, so it must be in the signature.
    def generate(*args: Any, progress: gr.Progress = gr.Progress()) -> tuple[str, str, str]:  # noqa: B008
        values = dict(zip(INPUT_NAMES, args, strict=True))

        def report(stage: str, done: int, total: int | None) -> None:
            progress((done, total), desc=stage, unit="frames")

        progress(0, desc="checking the inputs")
        try:
            path = generator.run(_request(values), progress=report)
        except TalkingHeadError as exc:
            # One line in the page (and for gradio_client), as the CLI's `error: ...`.
            raise gr.Error(str(exc), print_exception=False) from None
        return str(path), str(path), f"done: {Path(path).name}"

    status = generator.weights_status()
    with gr.Blocks(title=TITLE) as page:
        gr.Markdown(f"## {TITLE}\nUpload a portrait (or a short video) and speech, then Generate.")
        if status is not None:
            gr.Markdown(f"**Weights:** {status}", elem_id="weights-status")
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    portrait = gr.Image(
                        label="Portrait", type="filepath", image_mode=None, sources=["upload"]
                    )
                    video = gr.Video(label="or a short video", format=None, sources=["upload"])
                audio = gr.Audio(
                    label="Speech (upload or record)",
                    type="filepath",
                    format=None,  # kept as uploaded: PyAV decodes it, no ffmpeg needed
                    sources=["upload", "microphone"],
                )
                with gr.Row():
                    method = gr.Dropdown(
                        generator.methods, value="ditto", label="Method", interactive=True
                    )
                    emotion = gr.Dropdown(
                        list(EMOTIONS),
                        value="Neutral",
                        label="Emotion (Ditto; a comma list mixes them)",
                        allow_custom_value=True,  # "Happy,Surprise" as on the CLI; checked as there
                    )
                with gr.Accordion("Head pose (Ditto)", open=False):
                    with gr.Row():
                        delta_pitch = gr.Slider(-30, 30, value=0, step=1, label="pitch offset, °")
                        delta_yaw = gr.Slider(-30, 30, value=0, step=1, label="yaw offset, °")
                        delta_roll = gr.Slider(-30, 30, value=0, step=1, label="roll offset, °")
                    with gr.Row():
                        alpha_pitch = gr.Slider(0, 2, value=1, step=0.05, label="pitch scale")
                        alpha_yaw = gr.Slider(0, 2, value=1, step=0.05, label="yaw scale")
                        alpha_roll = gr.Slider(0, 2, value=1, step=0.05, label="roll scale")
                with gr.Accordion("Crop, steps, seed, fades", open=False):
                    with gr.Row():
                        crop_scale = gr.Slider(1.5, 3.5, value=2.3, step=0.05, label="crop scale")
                        crop_vy = gr.Slider(-0.5, 0.5, value=-0.125, step=0.005, label="crop shift")
                    with gr.Row():
                        steps = gr.Slider(1, 100, value=50, step=1, label="DDIM steps")
                        seed = gr.Number(value=0, precision=0, label="seed (empty: random)")
                    with gr.Row():
                        fade_in = gr.Slider(0, 50, value=0, step=1, label="fade in, frames")
                        fade_out = gr.Slider(0, 50, value=0, step=1, label="fade out, frames")
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                preview = gr.Video(label="Preview", format=None, interactive=False)
                download = gr.File(label="mp4 to download", interactive=False)
                message = gr.Markdown()
        inputs = [
            portrait,
            video,
            audio,
            method,
            emotion,
            delta_pitch,
            delta_yaw,
            delta_roll,
            alpha_pitch,
            alpha_yaw,
            alpha_roll,
            crop_scale,
            crop_vy,
            steps,
            seed,
            fade_in,
            fade_out,
        ]
        button.click(
            generate,
            inputs=inputs,
            outputs=[preview, download, message],
            api_name="generate",
            concurrency_limit=1,  # one pipeline: clips are made one after another
        )
    return page


def launch(
    generator: Generator, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True
) -> gr.Blocks:
    """Build the page and serve it on `host`:`port` (never shared through gradio's tunnel).

    `block`: serve until stopped (the command); False: return the running page (tests;
    stop it with ``page.close()``).
    """
    page = build_app(generator)
    page.queue().launch(
        server_name=host,
        server_port=port,
        allowed_paths=[str(generator.output_dir)],  # the clips made here, and nothing else
        share=False,
        inbrowser=False,
        show_error=True,
        prevent_thread_lock=not block,
        quiet=not block,
    )
    return page


__all__ = ["INPUT_NAMES", "TITLE", "build_app", "launch"]
