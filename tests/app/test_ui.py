"""The creator's app on 127.0.0.1 with the tiny Ditto release, driven as a user would:
through gradio_client (a clip is made, its frames and size checked; bad input comes back
as the CLI's one-line message) and in headless Chromium (a screenshot of the page).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from _conformance import skip_missing
from _serve_helpers import PORTRAIT, SPEECH
from _tiny_release import build_tiny_release

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from _extras import needs_offline_face  # noqa: E402
from talkinghead.app.generation import AppSettings, Generator  # noqa: E402
from talkinghead.app.ui import INPUT_NAMES, launch  # noqa: E402

CHROMIUM = os.environ.get("TALKINGHEAD_CHROMIUM", "/usr/bin/chromium")
# The page's defaults, with the tiny release's 2 steps (a clip in seconds on the CPU).
DEFAULTS = {
    "portrait": None,
    "video": None,
    "audio": None,
    "method": "ditto",
    "emotion": "Neutral",
    "delta_pitch": 0,
    "delta_yaw": 0,
    "delta_roll": 0,
    "alpha_pitch": 1,
    "alpha_yaw": 1,
    "alpha_roll": 1,
    "crop_scale": 2.3,
    "crop_vy": -0.125,
    "steps": 2,
    "seed": 0,
    "fade_in": 0,
    "fade_out": 0,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wav(tmp: Path, seconds: float) -> Path:
    data, sr = sf.read(SPEECH, dtype="float32")
    path = tmp / "speech.wav"
    sf.write(path, data[: int(sr * seconds)], sr)
    return path


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    if not PORTRAIT.is_file() or not SPEECH.is_file():
        skip_missing(f"{PORTRAIT}, {SPEECH}")
    tmp = tmp_path_factory.mktemp("app")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    mp = pytest.MonkeyPatch()
    mp.setenv("TALKINGHEAD_CACHE", str(tmp / "cache"))  # not the user's avatar cache
    release = build_tiny_release(tmp / "release")
    generator = Generator(
        AppSettings(checkpoints=release, download=False, device="cpu", max_size=256)
    )
    page = launch(generator, "127.0.0.1", _free_port(), block=False)
    try:
        yield page.local_url.rstrip("/"), generator
    finally:
        page.close()
        generator.close()
        mp.undo()


def _predict(url: str, **fields):
    from gradio_client import Client, handle_file

    values = {**DEFAULTS, **fields}
    for name in ("portrait", "video", "audio"):
        if values[name] is not None:
            values[name] = handle_file(str(values[name]))
    client = Client(url, verbose=False)
    return client.predict(*(values[n] for n in INPUT_NAMES), api_name="/generate")


def _frames(path: str) -> tuple[int, tuple[int, int], bool]:
    with av.open(path) as container:
        has_audio = bool(container.streams.audio)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return len(frames), frames[0].shape[:2], has_audio


def test_a_clip_is_made_through_gradio_client(app_url, tmp_path) -> None:
    url, generator = app_url
    seconds = 0.3
    preview, download, message = _predict(
        url, portrait=PORTRAIT, audio=_wav(tmp_path, seconds), emotion="Happy", delta_yaw=10
    )
    video_path = preview["video"] if isinstance(preview, dict) else preview
    n, size, has_audio = _frames(download)
    assert n == math.ceil(seconds * 25)  # ceil(seconds x 25), as `generate`
    assert size == (256, 256)  # the 1432 px portrait at the app's --max-size 256
    assert has_audio
    assert _frames(video_path)[0] == n  # the preview is the same clip
    assert message.startswith("done:")
    # The clip was written in the app's own folder, and nothing half-written was left.
    assert [p.suffix for p in generator.output_dir.iterdir()] == [".mp4"]
    assert generator._pipe is not None
    pipe = generator._pipe
    _predict(url, portrait=PORTRAIT, audio=_wav(tmp_path, 0.1), crop_scale=2.0)
    assert generator._pipe is pipe  # loaded once, reused
    assert pipe.models.registrar.face_analyzer.crop_config.scale == 2.0


def test_progress_reports_each_stage_up_to_the_last_frame(app_url, tmp_path) -> None:
    # What the page's progress bar shows: the pipeline's (stage, done, total) reports.
    from talkinghead.app.generation import Request

    _, generator = app_url
    reports: list[tuple[str, int, int | None]] = []
    request = Request(source=str(PORTRAIT), audio=str(_wav(tmp_path, 0.2)), steps=2)
    path = generator.run(request, progress=lambda *r: reports.append(r))
    stages = {stage for stage, _, _ in reports}
    assert {"motion", "render"} <= stages
    assert ("render", 5, 5) in reports  # ceil(0.2 x 25) frames, all of them reported
    assert _frames(str(path))[0] == 5


def test_a_video_source_is_driven(app_url, tmp_path) -> None:
    from PIL import Image

    from talkinghead.media.writer import open_writer

    url, _ = app_url
    face = np.asarray(Image.open(PORTRAIT).convert("RGB").resize((192, 192)))
    source = tmp_path / "source.mp4"
    writer = open_writer(source, fps=25)
    for shift in range(4):  # a short video: the portrait moving a little
        writer.write(np.roll(face, shift, axis=1))
    writer.close()
    _, download, _ = _predict(url, video=source, audio=_wav(tmp_path, 0.2))
    n, size, _ = _frames(download)
    assert n == math.ceil(0.2 * 25)
    assert size == (192, 192)  # the video's own size (under --max-size)
    with pytest.raises(Exception, match="both a portrait and a video were given"):
        _predict(url, portrait=PORTRAIT, video=source, audio=_wav(tmp_path, 0.1))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"emotion": "Grumpy"}, "unknown emotion 'Grumpy'"),
        ({"seed": -5}, "seed must be between 0 and 2^63-1, got -5"),
        ({"audio": None}, "no speech: upload an audio file"),
    ],
)
def test_bad_input_gives_the_cli_s_one_line_message(app_url, tmp_path, fields, message) -> None:
    from gradio_client.exceptions import AppError

    url, _ = app_url
    fields = {"portrait": PORTRAIT, "audio": _wav(tmp_path, 0.1), **fields}
    with pytest.raises(AppError) as caught:
        _predict(url, **fields)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value).strip()


def test_a_picture_without_a_face_is_refused(app_url, tmp_path) -> None:
    from gradio_client.exceptions import AppError
    from PIL import Image

    url, _ = app_url
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((128, 128, 3), 128, np.uint8)).save(blank)
    with pytest.raises(AppError, match="use a picture where a face is clearly visible"):
        _predict(url, portrait=blank, audio=_wav(tmp_path, 0.1))


def test_missing_weights_are_named_on_the_page_and_on_generate(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    generator = Generator(AppSettings(checkpoints=empty, download=False, device="cpu"))
    try:
        status = generator.weights_status()
        assert status is not None
        assert "Ditto's weights are missing" in status
        assert f"talkinghead download --dir {empty}" in status
        from talkinghead.app.generation import Request
        from talkinghead.errors import CheckpointError

        with pytest.raises(CheckpointError, match="weights are missing"):
            generator.run(Request(source=str(PORTRAIT), audio=str(_wav(tmp_path, 0.1))))
        assert list(generator.output_dir.iterdir()) == []
    finally:
        generator.close()


def test_a_method_without_a_model_says_how_to_give_one(tmp_path) -> None:
    from talkinghead.app.generation import Request
    from talkinghead.errors import SettingsError

    generator = Generator(AppSettings(device="cpu"))
    try:
        assert generator.methods == ["ditto"]
        request = Request(source=str(PORTRAIT), audio=str(SPEECH), method="dithead")
        with pytest.raises(SettingsError, match="start the app with --model dithead=DIR"):
            generator.run(request)
        with pytest.raises(SettingsError, match="unknown method 'wav2lip'"):
            generator.run(Request(source=str(PORTRAIT), audio=str(SPEECH), method="wav2lip"))
    finally:
        generator.close()


def test_another_method_s_model_loads_once_for_all_its_clips(tmp_path, monkeypatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from talkinghead import face
    from talkinghead.app.generation import Request
    from talkinghead.methods.dithead import pipeline as dithead

    loads, calls = [], []

    class Loaded:
        def generate(self, source, audio, output, **kwargs):
            calls.append(kwargs)
            Path(output).write_bytes(b"video")
            return Path(output)

    def from_pretrained(cls, checkpoints, *, device):
        loads.append((Path(checkpoints), device))
        return Loaded()

    monkeypatch.setattr(dithead.DiTHeadPipeline, "from_pretrained", classmethod(from_pretrained))
    built = []
    real_create = face.create_face_analyzer

    def create(*args, **kwargs):
        built.append(args)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(face, "create_face_analyzer", create)
    generator = Generator(AppSettings(device="cpu", other_models={"dithead": tmp_path}))
    try:
        request = Request(
            source=str(PORTRAIT), audio=str(_wav(tmp_path, 0.2)), method="dithead", steps=3, seed=1
        )
        # A fresh thread: the face check's analyser is cached per thread.
        with ThreadPoolExecutor(1) as pool:
            outputs = [pool.submit(generator.run, request).result() for _ in range(2)]
        assert outputs[0] != outputs[1] and all(p.read_bytes() == b"video" for p in outputs)
        assert loads == [(tmp_path, "cpu")]
        assert built == [("mediapipe",)]  # the face check's analyser, built once
        assert [(c["seed"], c["steps"]) for c in calls] == [(1, 3), (1, 3)]
    finally:
        generator.close()


def test_a_method_without_a_pipeline_class_runs_generate_per_clip(tmp_path, monkeypatch) -> None:
    from dataclasses import replace

    from talkinghead.app.generation import Request
    from talkinghead.methods import METHODS
    from talkinghead.methods.dithead import pipeline as dithead

    calls = []

    def generate_video(source, audio, output, *, checkpoints, seed, steps, device, progress):
        calls.append((Path(checkpoints), seed, steps, device))
        Path(output).write_bytes(b"video")
        return Path(output)

    monkeypatch.setitem(METHODS, "dithead", replace(METHODS["dithead"], pipeline=None))
    monkeypatch.setattr(dithead, "generate_video", generate_video)
    generator = Generator(AppSettings(device="cpu", other_models={"dithead": tmp_path}))
    try:
        request = Request(
            source=str(PORTRAIT), audio=str(_wav(tmp_path, 0.2)), method="dithead", steps=2, seed=4
        )
        assert generator.run(request).read_bytes() == b"video"
        assert calls == [(tmp_path, 4, 2, "cpu")]
    finally:
        generator.close()


@needs_offline_face
def test_the_page_makes_a_clip_in_chromium(app_url, tmp_path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed")
    if not (shutil.which(CHROMIUM) or os.path.isfile(CHROMIUM)):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} not found (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} not found")
    url, _ = app_url
    shot = Path(os.environ.get("TALKINGHEAD_APP_SCREENSHOT", tmp_path / "app.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/", wait_until="networkidle", timeout=60_000)
            # The file inputs in page order: portrait, video, speech.
            files = page.locator("input[type=file]")
            files.nth(0).set_input_files(str(PORTRAIT))
            page.locator("img[src*='ditto_example_face']").first.wait_for(timeout=60_000)
            files = page.locator("input[type=file]")  # the portrait's input is gone now
            files.last.set_input_files(str(_wav(tmp_path, 0.2)))
            page.locator(
                "audio, [data-testid='waveform-Speech (upload or record)']"
            ).first.wait_for(state="attached", timeout=60_000)
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("done: talkinghead-").wait_for(timeout=120_000)
            preview = page.locator("video").first
            preview.wait_for(timeout=30_000)
            assert ".mp4" in (preview.get_attribute("src") or "")
            page.wait_for_function(
                "document.querySelector('video').readyState >= 2", timeout=30_000
            )  # the browser decoded the clip's first frame
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    assert not errors
