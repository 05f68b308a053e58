"""End to end in headless Chromium: the page at / uploads a portrait and a wav, streams it,
and shows the frames the server renders (the tiny Ditto release), in sync with the audio.

Needs Debian's `chromium` and the `playwright` Python package (its own browser download is
not used: the system Chromium is launched by path). Skipped when either is missing, except
under CI, where that is a failure.
"""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from _conformance import skip_missing
from _serve_helpers import (
    PORTRAIT,
    SPEECH,
    TINY_SETTINGS,
    FakePipeline,
    get_json,
    two_turns_with_an_interrupt,
)
from _tiny_release import build_tiny_release
from talkinghead.serve import ServeSettings, create_app
from talkinghead.serve.background import BackgroundServer

CHROMIUM = os.environ.get("TALKINGHEAD_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
    "--use-fake-device-for-media-stream",  # a synthetic microphone (a beep)
    "--no-sandbox",  # CI runs as root
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    if not (shutil.which(CHROMIUM) or os.path.isfile(CHROMIUM)):
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    if not PORTRAIT.is_file():
        skip_missing(f"{PORTRAIT}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    context.close()


def text(page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def canvas_spread(page) -> float:
    """Standard deviation of the canvas pixels (0 for a blank canvas)."""
    return page.evaluate(
        """() => {
            const c = document.getElementById("canvas");
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let s = 0, s2 = 0, n = 0;
            for (let i = 0; i < d.length; i += 4) {
                const v = (d[i] + d[i + 1] + d[i + 2]) / 3; s += v; s2 += v * v; n++;
            }
            const m = s / n; return Math.sqrt(Math.max(s2 / n - m * m, 0));
        }"""
    )


def test_page_uploads_a_portrait_and_a_wav_and_plays_every_frame(page, tmp_path) -> None:
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    release = build_tiny_release(tmp_path / "release")
    pipe = DittoPipeline.from_pretrained(release, download=False, **TINY_SETTINGS)
    # 0.1 s of the example speech (24 kHz): ceil(0.1 x 25) = 3 frames.
    data, sr = sf.read(SPEECH, dtype="float32")
    wav = tmp_path / "speech.wav"
    sf.write(wav, data[: sr // 10], sr)
    expected = math.ceil(0.1 * 25)
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        page.goto(srv.url + "/")
        page.set_input_files("#portrait-file", str(PORTRAIT))
        page.wait_for_function(
            "document.getElementById('upload-status').textContent.startsWith('registered')",
            timeout=60_000,
        )
        avatars = get_json(f"{srv.url}/avatars")["avatars"]
        assert len(avatars) == 1
        assert page.locator("#avatar").input_value() == avatars[0]["id"]
        page.set_input_files("#audio-file", str(wav))
        page.wait_for_function("!document.getElementById('speak').disabled", timeout=30_000)
        assert text(page, "#frames-expected") == str(expected)
        page.click("#speak")
        page.wait_for_function(
            "document.getElementById('status').textContent === 'complete'", timeout=120_000
        )
        page.wait_for_function(
            "document.getElementById('playback').textContent === 'finished'", timeout=30_000
        )
        assert text(page, "#frames-received") == str(expected)
        assert text(page, "#frames-shown") == str(expected)  # played through the last frame
        assert text(page, "#frames-dropped") == "0"
        assert text(page, "#error") == ""
        assert text(page, "#latency").endswith("ms")
        assert page.evaluate("document.getElementById('canvas').width") == 256
        assert canvas_spread(page) > 5  # the rendered face, not a blank canvas
        assert get_json(f"{srv.url}/healthz")["sessions"] == 0
    assert not page.errors


def test_microphone_is_streamed_and_played_back(page, tmp_path) -> None:
    # The fake microphone through the AudioWorklet; a stand-in pipeline keeps it fast.
    pipe = FakePipeline(size=(96, 96))
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        page.goto(srv.url + "/")
        video = tmp_path / "face.png"
        from PIL import Image

        Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(video)
        page.set_input_files("#portrait-file", str(video))
        page.wait_for_function("!document.getElementById('mic').disabled", timeout=30_000)
        page.click("#mic")
        page.wait_for_function(
            "Number(document.getElementById('frames-received').textContent) >= 10",
            timeout=30_000,
        )
        page.click("#stop")
        page.wait_for_function(
            "document.getElementById('status').textContent === 'complete'", timeout=30_000
        )
        received = int(text(page, "#frames-received"))
        assert received >= 10 and text(page, "#frames-expected") == str(received)
        assert text(page, "#error") == ""
        # The server heard about 25 frames of audio per second of microphone.
        audio_s = pipe.streams[-1].samples / 16000
        assert audio_s > 0.3 and received == math.ceil(pipe.streams[-1].samples / 640)
    assert not page.errors


def test_page_adapts_its_buffer_to_a_server_slower_than_real_time(page, tmp_path) -> None:
    # 60 ms of rendering per 40 ms frame: the server runs at about 0.67x real time. A
    # fixed 5-frame rebuffer stalls every few frames (stop-and-go); the adaptive buffer
    # waits once for what the rest needs and plays through.
    pipe = FakePipeline(size=(96, 96), delay_s=0.06)
    wav = tmp_path / "speech.wav"
    sf.write(wav, np.zeros(48000, np.float32), 16000)  # 3 s: 75 frames
    face = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(face)
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        page.goto(srv.url + "/")
        page.set_input_files("#portrait-file", str(face))
        page.wait_for_function("!document.getElementById('mic').disabled", timeout=30_000)
        page.set_input_files("#audio-file", str(wav))
        page.wait_for_function("!document.getElementById('speak').disabled", timeout=30_000)
        page.click("#speak")
        page.wait_for_function(
            "document.getElementById('playback').textContent === 'finished'", timeout=60_000
        )
        assert text(page, "#frames-shown") == "75" and text(page, "#error") == ""
        factor = float(text(page, "#realtime-factor").rstrip("×"))
        assert 0.3 < factor < 1.0  # the server said it is slower than real time
        stalls = int(text(page, "#stalls"))
        assert 1 <= stalls <= 2, stalls  # a fixed 5-frame rebuffer: 5 stalls here
    assert not page.errors


def test_page_with_a_token_uploads_and_streams(page, tmp_path) -> None:
    # The address `talkinghead serve --token` prints: the token in the fragment.
    token = "page-token-0123456789"
    pipe = FakePipeline(size=(96, 96))
    settings = ServeSettings(max_sessions=1, token=token)
    wav = tmp_path / "speech.wav"
    sf.write(wav, np.zeros(4000, np.float32), 16000)  # 0.25 s: 7 frames
    face = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(face)
    with BackgroundServer(create_app(pipe, settings)) as srv:
        page.goto(f"{srv.url}/#token={token}")
        page.wait_for_function("location.hash === ''")  # taken out of the address bar
        assert page.locator("#token-box").is_hidden()
        page.set_input_files("#portrait-file", str(face))
        page.wait_for_function(
            "document.getElementById('upload-status').textContent.startsWith('registered')",
            timeout=30_000,
        )
        page.wait_for_function("document.getElementById('thumb').src.startsWith('blob:')")
        page.set_input_files("#audio-file", str(wav))
        page.wait_for_function("!document.getElementById('speak').disabled", timeout=30_000)
        page.click("#speak")
        page.wait_for_function(
            "document.getElementById('status').textContent === 'complete'", timeout=30_000
        )
        assert text(page, "#frames-received") == "7" and text(page, "#error") == ""
    assert not page.errors


EVIL_PAGE = """<!doctype html><script>
window.results = {};
const target = "TARGET";
async function attack() {
  const form = new FormData();
  form.append("file", new Blob([new Uint8Array(PNG)], {type: "image/png"}));
  try {  // a "simple" request: no preflight, the browser sends it
    const r = await fetch(target + "/avatars", {method: "POST", body: form, mode: "no-cors"});
    results.simple = "sent:" + r.type;
  } catch (e) { results.simple = "blocked"; }
  try {  // the custom header needs a preflight, which the server does not grant
    await fetch(target + "/avatars", {method: "POST", body: form,
                                      headers: {"X-Talkinghead-Client": "evil"}});
    results.custom = "sent";
  } catch (e) { results.custom = "blocked"; }
  try {
    const r = await fetch(target + "/avatars");
    results.read = "read:" + (await r.text());
  } catch (e) { results.read = "blocked"; }
  results.ws = await new Promise((resolve) => {
    const ws = new WebSocket(target.replace("http", "ws") + "/ws");
    ws.onopen = () => { ws.send(JSON.stringify({type: "start", avatar: "0000000000000000"}));
                        resolve("open"); };
    ws.onerror = () => resolve("refused");
  });
  results.done = true;
}
attack();
</script>"""


def test_another_page_in_the_browser_cannot_drive_the_server(page, tmp_path) -> None:
    # Two origins on loopback: the server, and a page somewhere else the user visits.
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    png = tmp_path / "face.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(png)
    pipe = FakePipeline()
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        html = EVIL_PAGE.replace("TARGET", srv.url).replace("PNG", str(list(png.read_bytes())))
        evil = Starlette(routes=[Route("/", lambda request: HTMLResponse(html))])
        with BackgroundServer(evil) as elsewhere:
            page.goto(elsewhere.url + "/")
            page.wait_for_function("window.results && window.results.done", timeout=30_000)
            results = page.evaluate("window.results")
        assert results["custom"] == "blocked" and results["read"] == "blocked"
        assert results["ws"] == "refused"
        assert get_json(f"{srv.url}/avatars")["avatars"] == []  # the simple POST got 403
        assert pipe.registered == [] and pipe.streams == []


def test_a_two_turn_conversation_with_an_interrupt_plays_continuous_frames(page, tmp_path) -> None:
    """The page's conversation mode against the tiny Ditto release: idle, turn one (3 s)
    interrupted once the page has 15 of its frames, idle, turn two (0.6 s), idle, end. The
    frames the page received are one unbroken timeline, and no speech/idle boundary moves
    the face more than consecutive speaking frames do (the measure of test_conversation.py)."""
    import base64
    import itertools

    import cv2

    from _serve_helpers import speech_16k
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    release = build_tiny_release(tmp_path / "release")
    pipe = DittoPipeline.from_pretrained(release, download=False, **TINY_SETTINGS)
    turn_one, turn_two = tmp_path / "turn_one.wav", tmp_path / "turn_two.wav"
    sf.write(turn_one, speech_16k(3.0), 16000)
    sf.write(turn_two, speech_16k(0.6), 16000)
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        page.goto(srv.url + "/")
        page.set_input_files("#portrait-file", str(PORTRAIT))
        page.wait_for_function(
            "document.getElementById('upload-status').textContent.startsWith('registered')",
            timeout=60_000,
        )
        page.evaluate("window.talkingheadKeepFrames = true")
        page.check("#conversation")
        # Interrupted once the page has 15 frames of turn one's speech: at least 0.6 s of
        # it played, well short of its 3 s.
        two_turns_with_an_interrupt(
            page, turn_one, turn_two, interrupt_after=15, idle_after=5, timeout_ms=60_000
        )
        assert text(page, "#turns") == "2" and text(page, "#interrupts") == "1"
        page.click("#end")
        page.wait_for_function(
            "document.getElementById('status').textContent === 'complete'", timeout=60_000
        )
        received = page.evaluate(
            """async () => Promise.all(window.talkingheadFrames.map(async (f) => {
                const bytes = new Uint8Array(await f.jpeg.arrayBuffer());
                let s = ""; for (const b of bytes) s += String.fromCharCode(b);
                return [f.index, f.timestamp, btoa(s)];
            }))"""
        )
        marks = page.evaluate("window.talkingheadEvents")
        assert text(page, "#error") == ""
        assert get_json(f"{srv.url}/healthz")["sessions"] == 0
    assert not page.errors
    end = marks[-1]
    kinds = [m["type"] for m in marks]
    assert kinds[-1] == "end" and end["interrupts"] == 1
    assert kinds[:-1] == ["speech", "interrupted", "speech", "idle"], kinds
    # Continuous at the server: every index once, in order, 1/25 s apart on its clock.
    indices = [index for index, _, _ in received]
    assert indices == list(range(len(indices))) and end["frames"] == len(indices)
    gaps = [b - a for (_, a, _), (_, b, _) in itertools.pairwise(received)]
    assert max(gaps) <= 2 / 25 + 1e-9, max(gaps)
    # Interrupted mid-way: less than the 3 s of turn one played.
    spoken = marks[1]["at_s"] - marks[0]["at_s"]
    assert 0.5 < spoken < 2.5, spoken
    images = [
        cv2.imdecode(np.frombuffer(base64.b64decode(j), np.uint8), cv2.IMREAD_GRAYSCALE).astype(
            np.float32
        )
        for _, _, j in received
    ]
    step = [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(images)]
    speaking = np.zeros(len(images), bool)
    stretches = [(m["frame"], m["type"]) for m in marks[:-1]]
    for (frame, kind), nxt in zip(stretches, [*stretches[1:], (len(images), "")], strict=False):
        if kind == "speech":
            speaking[frame : nxt[0]] = True
    speaking_steps = [s for i, s in enumerate(step) if speaking[i] and speaking[i + 1]]
    boundaries = [f for f, _ in stretches if 0 < f < len(images)]
    assert speaking_steps and len(boundaries) == 4
    largest_speaking = max(speaking_steps)
    for f in boundaries:
        assert step[f - 1] <= largest_speaking, (f, step[f - 1], largest_speaking)
