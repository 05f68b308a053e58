"""WebRTC playback with aiortc's own client against a local server: the frames arrive as
a video track (pts on the 90 kHz clock, frame i at i x 3600), the client's speech as a
48 kHz audio track on the same time origin, and the socket carries only frame headers.
The offer goes on the session's socket ({"type": "offer"} -> {"type": "answer"}) or,
for a single server, to POST /webrtc/offer. Then the page in real Chromium.

ICE stays on loopback: no STUN servers, and host candidates restricted to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("aiortc")

from _serve_helpers import (
    PORTRAIT,
    FakePipeline,
    http,
    two_turns_with_an_interrupt,
    upload_bytes,
)
from _webrtc_client import speech_with_onset, webrtc_session
from talkinghead.serve import ServeSettings, create_app
from talkinghead.serve.background import BackgroundServer
from talkinghead.serve.client import to_pcm16
from talkinghead.serve.protocol import CLOSE_PROTOCOL_ERROR, FRAME_HEADER_BYTES, decode_frame
from talkinghead.serve.webrtc import SpeechTimeline


def post_json(url: str, body: dict) -> tuple[int, dict]:
    status, reply = http(
        "POST", url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    return status, json.loads(reply or b"{}")


def http_offer(url: str):
    """Offers through POST /webrtc/offer (the single-server path); a second is refused."""

    async def offer(ready: dict, sdp: str) -> dict:
        body = {"session": ready["session"], "sdp": sdp, "type": "offer"}
        status, answer = await asyncio.to_thread(post_json, f"{url}/webrtc/offer", body)
        assert status == 200, answer
        status, again = await asyncio.to_thread(post_json, f"{url}/webrtc/offer", body)
        assert status == 409, again
        return answer

    return offer


@pytest.mark.parametrize("signalling", ["socket", "http"])
def test_aiortc_client_receives_paced_frames_and_the_speech(
    tmp_path, loopback_ice, signalling
) -> None:
    """The offer on the session's socket ({"type": "offer"} -> {"type": "answer"}), or
    through POST /webrtc/offer: the same tracks either way."""
    pipe = FakePipeline(size=(64, 64), lookahead=0)
    audio = speech_with_onset(0.4, 0.6)  # 1 s: 25 frames; the tone starts at frame 10
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        status, record = upload_bytes(srv.url, PORTRAIT.read_bytes())
        assert status == 201
        offer = http_offer(srv.url) if signalling == "http" else None
        result = asyncio.run(webrtc_session(srv.ws_url, record["id"], audio, offer=offer))
        # The slot is free again and the peer is gone.
        status, _ = post_json(f"{srv.url}/webrtc/offer", {"session": "x", "sdp": "v=0"})
        assert status == 404
    # The socket: 25 headers without a JPEG, then "end" with every frame sent.
    assert [len(h) for h in result["headers"]] == [FRAME_HEADER_BYTES] * 25
    assert [decode_frame(h)[0] for h in result["headers"]] == list(range(25))
    assert result["end"]["type"] == "end" and result["end"]["frames"] == 25
    assert [e["type"] for e in result["events"]] == ["end"]  # the answer came on its own
    # Video: every frame, in order, stamped i x 3600 (90 kHz), showing frame i's picture
    # (the stand-in renders frame i as gray level 7i).
    pts = [p for p, _ in result["video"]]
    first = pts[0]
    assert [p - first for p in pts] == [3600 * i for i in range(len(pts))]
    # aiortc's receiver hands a frame over once the next frame's packets arrive, so the
    # last one never leaves its jitter buffer (a browser plays it: see test_browser).
    assert len(pts) == 24
    levels = [round(level) for _, level in result["video"]]
    assert all(abs(level - 7 * i) <= 3 for i, level in enumerate(levels)), levels
    # Audio: 48 kHz, 20 ms frames; silence, then the tone from 0.4 s on (frame 10).
    assert {rate for _, rate, _ in result["audio"]} == {48000}
    start = result["audio"][0][0]
    loudness = [(p - start) / 48000 for p, _, pcm in result["audio"] if np.abs(pcm).max() > 3000]
    assert loudness, "no speech arrived in the audio track"
    assert 0.36 <= loudness[0] <= 0.48, loudness[0]
    # 1 s is 50 frames, consecutive; aiortc's audio jitter buffer keeps its last 4.
    audio_pts = [p - start for p, _, _ in result["audio"]]
    assert audio_pts == [960 * k for k in range(len(audio_pts))]
    assert 46 <= len(audio_pts) <= 50


def test_offer_checks() -> None:
    pipe = FakePipeline()
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        status, reply = post_json(f"{srv.url}/webrtc/offer", {"session": "nope", "sdp": "v=0"})
        assert status == 404 and "webrtc" in reply["detail"]
        status, reply = post_json(f"{srv.url}/webrtc/offer", {"sdp": 3})
        assert status == 400
        # Without the CSRF header the guard refuses it before the route.
        status, _ = http(
            "POST",
            f"{srv.url}/webrtc/offer",
            b"{}",
            {"Content-Type": "application/json"},
            client_header=False,
        )
        assert status == 403
    # A server with a token wants it here too (the session id alone is not enough).
    settings = ServeSettings(max_sessions=1, token="webrtc-token-0123456789")
    with BackgroundServer(create_app(pipe, settings)) as srv:
        body = json.dumps({"session": "nope", "sdp": "v=0"}).encode()
        headers = {"Content-Type": "application/json"}
        status, _ = http("POST", f"{srv.url}/webrtc/offer", body, headers)
        assert status == 401
        status, _ = http("POST", f"{srv.url}/webrtc/offer", body, headers, token=settings.token)
        assert status == 404


def offer_sdp() -> str:
    """A real offer (recvonly video and audio, ICE gathered) from aiortc's client."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    async def make() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


def socket_replies(ws_url: str, avatar: str, controls: dict, messages: list[dict]):
    """Start a session, send `messages` in turn (each after the previous one's reply),
    and read until the server closes: (the replies, the close code)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    replies: list[dict] = []
    with connect(ws_url, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "avatar": avatar, "controls": controls}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        try:
            for message in messages:
                ws.send(json.dumps(message))
                while True:  # skip frame headers: the next text message is the reply
                    reply = ws.recv(timeout=30)
                    if isinstance(reply, str):
                        replies.append(json.loads(reply))
                        break
            while True:
                ws.recv(timeout=30)
        except ConnectionClosed as exc:
            return replies, exc.rcvd.code if exc.rcvd else None
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("case", "controls", "sdps", "says"),
    [
        ("no webrtc control", {}, ["VALID"], '"webrtc": true'),
        ("offer without video", {"webrtc": True}, ["v=0\r\n"], "no video"),
        ("malformed offer", {"webrtc": True}, ["v=0\r\nm=video x\r\n"], "malformed offer"),
        ("second offer", {"webrtc": True}, ["VALID", "VALID"], "second"),
    ],
)
def test_an_offer_on_the_socket_is_refused_with_a_protocol_error(
    loopback_ice, case, controls, sdps, says
) -> None:
    valid = offer_sdp()
    with BackgroundServer(create_app(FakePipeline(), ServeSettings(max_sessions=1))) as srv:
        status, record = upload_bytes(srv.url, PORTRAIT.read_bytes())
        assert status == 201
        offers = [{"type": "offer", "sdp": valid if sdp == "VALID" else sdp} for sdp in sdps]
        replies, code = socket_replies(srv.ws_url, record["id"], controls, offers)
    *answers, error = replies
    assert [a["type"] for a in answers] == ["answer"] * (len(sdps) - 1), case
    assert all(a["sdp"].startswith("v=0") for a in answers)
    assert error["type"] == "error" and error["code"] == "protocol_error", error
    assert says in error["message"], error
    assert code == CLOSE_PROTOCOL_ERROR


def test_a_refused_http_offer_leaves_the_session_open_to_another(loopback_ice) -> None:
    from websockets.sync.client import connect

    with BackgroundServer(create_app(FakePipeline(), ServeSettings(max_sessions=1))) as srv:
        status, record = upload_bytes(srv.url, PORTRAIT.read_bytes())
        assert status == 201
        with connect(srv.ws_url) as ws:
            start = {"type": "start", "avatar": record["id"], "controls": {"webrtc": True}}
            ws.send(json.dumps(start))
            ready = json.loads(ws.recv(timeout=30))
            url, body = f"{srv.url}/webrtc/offer", {"session": ready["session"]}
            status, reply = post_json(url, {**body, "sdp": "v=0\r\nm=video x\r\n"})
            assert status == 400 and "malformed offer" in reply["detail"], reply
            status, reply = post_json(url, {**body, "sdp": offer_sdp()})
            assert status == 200 and reply["type"] == "answer", reply


def test_a_webrtc_session_that_never_offers_still_gets_every_header() -> None:
    """Frames wait for a video track that never comes: before a connection the newest
    are kept, so the session is not held up (here a queue of 30 frames, 50 rendered)."""
    from websockets.sync.client import connect

    pipe = FakePipeline(size=(32, 32), lookahead=0)
    settings = ServeSettings(max_sessions=1, audio_window_s=0.2)  # queue: (0.2 + 1) x 25
    with BackgroundServer(create_app(pipe, settings)) as srv:
        status, record = upload_bytes(srv.url, PORTRAIT.read_bytes())
        assert status == 201
        with connect(srv.ws_url) as ws:
            # lossless: the stand-in renders all 50 at once; none may drop for the socket.
            controls = {"webrtc": True, "lossless": True}
            ws.send(json.dumps({"type": "start", "avatar": record["id"], "controls": controls}))
            assert json.loads(ws.recv(timeout=30))["webrtc"] is True
            ws.send(to_pcm16(np.zeros(32000, np.float32)))  # 2 s: 50 frames
            ws.send(json.dumps({"type": "end"}))
            headers, end = [], None
            while end is None:
                message = ws.recv(timeout=30)
                if isinstance(message, bytes):
                    headers.append(message)
                else:
                    end = json.loads(message)
    assert [decode_frame(h) for h in headers] == [(i, i / 25, b"") for i in range(50)]
    assert end["type"] == "end" and end["frames"] == 50 and end["dropped"] == 0


def test_speech_timeline_of_a_conversation() -> None:
    timeline = SpeechTimeline(conversation=True)
    timeline.add_speech(np.arange(1, 801, dtype=np.int16).tobytes())  # 800 samples of speech
    timeline.add_event("idle", {"at_s": 0.0})
    timeline.add_event("speech", {"at_s": 0.02, "offset_s": 0.0})  # speech at sample 320
    timeline.add_event("interrupted", {"at_s": 0.05, "dropped_s": 0.01})  # stops at 800
    timeline.add_event("speech", {"at_s": 0.06, "offset_s": 0.04})  # resumes from 640
    out = timeline.samples(0, 1200)
    assert not out[:320].any()
    assert list(out[320:800]) == list(range(1, 481))
    assert not out[800:960].any()
    assert list(out[960:1120]) == list(range(641, 801))
    assert not out[1120:].any()  # speech not received yet: silence


# ---------------------------------------------------------------------------- in Chromium

# The flags of test_browser, and WebRTC on loopback: Chromium offers its 127.0.0.1
# candidate (hidden by default) with the real address, not an mDNS name.
CHROMIUM_WEBRTC_ARGS = [
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--no-sandbox",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


CHROMIUM = os.environ.get("TALKINGHEAD_CHROMIUM", "/usr/bin/chromium")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def webrtc_page():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    if not (shutil.which(CHROMIUM) or os.path.isfile(CHROMIUM)):
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_WEBRTC_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors
        yield page
        browser.close()


def test_page_plays_a_webrtc_session_in_chromium(webrtc_page, tmp_path, loopback_ice) -> None:
    import soundfile as sf
    from PIL import Image

    page = webrtc_page
    # 10 ms a frame: faster than real time, not instant (the server would drop frames
    # that all arrive at once, as it does for a slow reader).
    pipe = FakePipeline(size=(96, 96), lookahead=0, delay_s=0.01)
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech_with_onset(0.4, 1.6).astype(np.float32), 16000)  # 2 s: 50 frames
    face = tmp_path / "face.png"
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(face)
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        page.goto(srv.url + "/")
        page.set_input_files("#portrait-file", str(face))
        page.wait_for_function("!document.getElementById('mic').disabled", timeout=30_000)
        page.select_option("#mode", "webrtc")
        page.set_input_files("#audio-file", str(wav))
        page.wait_for_function("!document.getElementById('speak').disabled", timeout=30_000)
        page.click("#speak")
        page.wait_for_function(
            "document.getElementById('playback').textContent === 'finished'", timeout=60_000
        )
        stats = page.evaluate("window.talkingheadWebRTCStats")
        assert page.locator("#error").inner_text().strip() == ""
        assert page.locator("#status").inner_text().strip() == "complete"
        assert page.locator("#frames-received").inner_text().strip() == "50"  # headers
        assert page.locator("#video").is_visible() and page.locator("#canvas").is_hidden()
    # The <video> played the frames: its clock advanced and it rendered about 50 of them.
    assert stats["currentTime"] > 1.0, stats
    assert 45 <= stats["shown"] <= 52, stats
    assert stats["video"]["framesDecoded"] >= 45, stats["video"]
    assert stats["audio"]["packetsReceived"] > 0, stats["audio"]
    assert not page.errors


# Every frame the page's <video> element receives, as gray pixels with its RTP timestamp:
# a clone of its track read through MediaStreamTrackProcessor (unlike the element's own
# frame callbacks, which skip frames the compositor coalesces).
CAPTURE_VIDEO_FRAMES = """() => {
  window.capturedFrames = [];
  const canvas = new OffscreenCanvas(1, 1);
  const g = canvas.getContext("2d", { willReadFrequently: true });
  const read = async (track) => {
    // A deep queue: a frame that arrives while the page is busy waits instead of dropping.
    const processor = new MediaStreamTrackProcessor({ track, maxBufferSize: 250 });
    const reader = processor.readable.getReader();
    for (;;) {
      const { value: frame, done } = await reader.read();
      if (done) return;
      const w = frame.displayWidth, h = frame.displayHeight;
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
      g.drawImage(frame, 0, 0);
      const rtp = frame.metadata().rtpTimestamp;
      frame.close();
      const rgba = g.getImageData(0, 0, w, h).data;
      const gray = new Uint8Array(w * h);
      for (let i = 0; i < gray.length; i++) {
        gray[i] = (rgba[4 * i] + rgba[4 * i + 1] + rgba[4 * i + 2]) / 3;
      }
      let bytes = "";
      for (let i = 0; i < gray.length; i += 8192) {
        bytes += String.fromCharCode(...gray.subarray(i, i + 8192));
      }
      window.capturedFrames.push({ rtp, w, h, gray: btoa(bytes) });
    }
  };
  const poll = setInterval(() => {
    const stream = document.getElementById("video").srcObject;
    const track = stream && stream.getVideoTracks()[0];
    if (track) { clearInterval(poll); read(track.clone()); }
  }, 5);
}"""


def test_page_holds_a_webrtc_conversation_with_an_interrupt_in_chromium(
    webrtc_page, tmp_path, loopback_ice
) -> None:
    """The page in WebRTC mode and conversation mode against the tiny Ditto release: idle,
    turn one (3 s) interrupted 15 frames in, idle, turn two (0.6 s), idle, end. The server's
    frame timeline is unbroken (every header index once, 1/25 s apart), the <video> element
    receives every frame once, in order, and no speech/idle boundary moves the face more
    than consecutive speaking frames do (the measure of test_conversation.py, on the frames
    the browser decoded)."""
    import base64
    import itertools

    import soundfile as sf

    from _conformance import skip_missing
    from _serve_helpers import TINY_SETTINGS, get_json, speech_16k
    from _tiny_release import build_tiny_release
    from talkinghead.methods.ditto.pipeline import DittoPipeline
    from talkinghead.serve.webrtc import VIDEO_PTS_STEP

    if not PORTRAIT.is_file():
        skip_missing(f"{PORTRAIT}")
    page = webrtc_page
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
        page.select_option("#mode", "webrtc")
        page.check("#conversation")
        page.evaluate(CAPTURE_VIDEO_FRAMES)
        two_turns_with_an_interrupt(
            page, turn_one, turn_two, interrupt_after=15, idle_after=5, timeout_ms=120_000
        )
        page.click("#end")
        page.wait_for_function(
            "document.getElementById('playback').textContent === 'finished'", timeout=120_000
        )
        headers = page.evaluate("window.talkingheadFrames.map((f) => [f.index, f.timestamp])")
        marks = page.evaluate("window.talkingheadEvents")
        captured = page.evaluate("window.capturedFrames")
        stats = page.evaluate("window.talkingheadWebRTCStats")
        assert page.locator("#error").inner_text().strip() == ""
        assert page.locator("#status").inner_text().strip() == "complete"
        assert page.locator("#turns").inner_text().strip() == "2"
        assert page.locator("#interrupts").inner_text().strip() == "1"
        assert get_json(f"{srv.url}/healthz")["sessions"] == 0
    assert not page.errors
    end = marks[-1]
    kinds = [m["type"] for m in marks]
    assert kinds == ["speech", "interrupted", "speech", "idle", "end"], kinds
    assert end["interrupts"] == 1 and end["dropped"] == 0
    # The server's timeline (the headers on the socket): every index once, 1/25 s apart.
    indices = [index for index, _ in headers]
    assert indices == list(range(len(indices))) and end["frames"] == len(indices)
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(headers)]
    assert max(gaps) <= 2 / 25 + 1e-9, max(gaps)
    # Turn one was cut: the interrupt dropped speech, less than its 3 s played.
    assert marks[1]["dropped_s"] > 0
    assert 0 < marks[1]["at_s"] - marks[0]["at_s"] < 3.0
    # The video track: every frame decoded once, in order (RTP timestamps 3600 apart), so
    # the first is frame 0; nothing dropped by the browser.
    rtp = [f["rtp"] for f in captured]
    assert [(t - rtp[0]) % 2**32 for t in rtp] == [
        VIDEO_PTS_STEP * i for i in range(len(indices))
    ], (len(rtp), len(indices), stats["video"])
    assert stats["video"]["framesDropped"] == 0, stats["video"]
    assert stats["audio"]["packetsReceived"] > 0, stats["audio"]
    images = [
        np.frombuffer(base64.b64decode(f["gray"]), np.uint8)
        .reshape(f["h"], f["w"])
        .astype(np.float32)
        for f in captured
    ]
    step = [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(images)]
    speaking = np.zeros(len(images), bool)
    stretches = [(m["frame"], m["type"]) for m in marks[:-1]]
    for (frame, kind), nxt in zip(stretches, [*stretches[1:], (len(images), "")], strict=False):
        if kind == "speech":
            speaking[frame : nxt[0]] = True
    speaking_steps = [s for i, s in enumerate(step) if speaking[i] and speaking[i + 1]]
    # aiortc restarts its VP8 encoder when the browser's bandwidth estimate changes by
    # more than 10 %: a keyframe of another quality (a step of the codec, not of the
    # face), then a frame the rate control nearly repeats. A boundary on such a restart
    # cannot be judged from the video; the others must not jump.
    restarts = {i for i in range(len(step) - 1) if step[i + 1] < 0.25 * np.median(step)}
    boundaries = [f for f, _ in stretches if 0 < f < len(images)]
    judged = [f for f in boundaries if f - 1 not in restarts]
    assert speaking_steps and len(boundaries) == 4 and len(judged) >= 3, (boundaries, restarts)
    largest_speaking = max(speaking_steps)
    for f in judged:
        assert step[f - 1] <= largest_speaking, (f, step[f - 1], largest_speaking)


def test_webrtc_control_needs_the_extra(monkeypatch) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from talkinghead.serve import webrtc

    monkeypatch.setattr(webrtc, "available", lambda: False)
    with BackgroundServer(create_app(FakePipeline(), ServeSettings(max_sessions=1))) as srv:
        status, record = upload_bytes(srv.url, PORTRAIT.read_bytes())
        assert status == 201
        with connect(srv.ws_url) as ws:
            start = {"type": "start", "avatar": record["id"], "controls": {"webrtc": True}}
            ws.send(json.dumps(start))
            error = json.loads(ws.recv(timeout=10))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
    assert error["type"] == "error" and "talkinghead[webrtc]" in error["message"]
    assert closed.value.rcvd.code == 4400


async def _conversation(url: str, ws_url: str, avatar: str) -> dict:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError
    from websockets.asyncio.client import connect

    result: dict = {"video": [], "audio": [], "events": []}
    controls = {"webrtc": True, "conversation": True}
    async with connect(ws_url) as ws:
        await ws.send(json.dumps({"type": "start", "avatar": avatar, "controls": controls}))
        ready = json.loads(await ws.recv())
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        tracks: dict = {}
        pc.on("track", lambda track: tracks.__setitem__(track.kind, track))
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"session": ready["session"], "sdp": pc.localDescription.sdp, "type": "offer"}
        status, answer = await asyncio.to_thread(post_json, f"{url}/webrtc/offer", offer)
        assert status == 200, answer
        await pc.setRemoteDescription(RTCSessionDescription(**answer))

        async def read(kind: str, out: list) -> None:
            while True:
                try:
                    frame = await asyncio.wait_for(tracks[kind].recv(), 5)
                except (TimeoutError, MediaStreamError):
                    return
                if kind == "audio":
                    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                    out.append((frame.pts, float(np.abs(pcm).max())))
                else:
                    out.append(frame.pts)

        async def socket() -> None:
            async for message in ws:
                if isinstance(message, str):
                    result["events"].append(json.loads(message))

        while len(tracks) < 2:
            await asyncio.sleep(0.05)
        readers = [
            asyncio.ensure_future(read("video", result["video"])),
            asyncio.ensure_future(read("audio", result["audio"])),
            asyncio.ensure_future(socket()),
        ]
        await asyncio.sleep(0.6)  # idle motion first
        await ws.send(to_pcm16(speech_with_onset(0.0, 0.8)))  # one turn: 0.8 s of tone
        await asyncio.sleep(1.6)  # the turn, then idle again
        await ws.send(to_pcm16(speech_with_onset(0.0, 3.0)))  # a long second turn...
        await asyncio.sleep(0.6)
        await ws.send(json.dumps({"type": "interrupt"}))  # ...cut short
        await asyncio.sleep(0.8)
        await ws.send(json.dumps({"type": "end"}))
        await asyncio.wait_for(asyncio.gather(*readers), 30)
        await pc.close()
    return result


def test_conversation_over_webrtc_follows_turns_and_interrupt(tmp_path, loopback_ice) -> None:
    pipe = FakePipeline(size=(64, 64), lookahead=0, delay_s=0.005)
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        status, record = upload_bytes(srv.url, PORTRAIT.read_bytes())
        assert status == 201
        result = asyncio.run(_conversation(srv.url, srv.ws_url, record["id"]))
    speech = [e for e in result["events"] if e["type"] == "speech"]
    idle = [e for e in result["events"] if e["type"] == "idle"]
    cut = [e for e in result["events"] if e["type"] == "interrupted"]
    assert len(speech) == 2 and speech[0]["offset_s"] == 0 and speech[0]["at_s"] > 0.2
    assert len(cut) == 1
    # Video never stops between turns: consecutive pts from the first frame on.
    pts = [p - result["video"][0] for p in result["video"]]
    assert pts == [3600 * i for i in range(len(pts))] and len(pts) >= 50
    # Audio: silence, the turn's 0.8 s of tone where the server put it, silence again.
    # Audio: silence, each turn's tone where the server put it, silence in between.
    start = result["audio"][0][0]
    loud = [(p - start) / 48000 for p, peak in result["audio"] if peak > 3000]
    assert loud, "the turns' speech did not reach the audio track"
    gap = next(i for i in range(1, len(loud)) if loud[i] - loud[i - 1] > 0.1)
    first, second = loud[:gap], loud[gap:]
    assert abs(first[0] - speech[0]["at_s"]) <= 0.05, (first[0], speech[0])
    assert 0.7 <= first[-1] + 0.02 - first[0] <= 0.9  # the whole 0.8 s turn
    assert idle and abs(first[-1] + 0.02 - idle[0]["at_s"]) <= 0.05, (first[-1], idle)
    # The second turn stops where the server says the interrupt took effect.
    assert abs(second[0] - speech[1]["at_s"]) <= 0.05, (second[0], speech[1])
    assert abs(second[-1] + 0.02 - cut[0]["at_s"]) <= 0.05, (second[-1], cut)
    assert second[-1] - second[0] < 2.0  # not the whole 3 s


def test_tiny_ditto_session_over_webrtc(tmp_path, loopback_ice) -> None:
    # The real pipeline (tiny networks) behind the same tracks: 0.4 s of the example
    # speech, ceil(0.4 x 25) = 10 frames, all of the portrait's size.
    from _serve_helpers import TINY_SETTINGS, speech_16k
    from _tiny_release import build_tiny_release
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    speech = speech_16k(0.7)[4800:]  # the example's first 0.3 s are silent
    release = build_tiny_release(tmp_path / "release")
    pipe = DittoPipeline.from_pretrained(release, download=False, **TINY_SETTINGS)
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        status, record = upload_bytes(srv.url, PORTRAIT.read_bytes())
        assert status == 201, record
        result = asyncio.run(webrtc_session(srv.ws_url, record["id"], speech))
    assert [decode_frame(h)[0] for h in result["headers"]] == list(range(10))
    assert result["end"]["frames"] == 10 and result["end"]["dropped"] == 0
    pts = [p - result["video"][0][0] for p, _ in result["video"]]
    assert pts == [3600 * i for i in range(9)]  # the last stays in aiortc's jitter buffer
    assert max(float(np.abs(pcm).max()) for _, _, pcm in result["audio"]) > 3000  # the speech
