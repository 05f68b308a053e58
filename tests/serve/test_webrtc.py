"""WebRTC playback with aiortc's own client against a local server: the frames arrive as
a video track (pts on the 90 kHz clock, frame i at i x 3600), the client's speech as a
48 kHz audio track on the same time origin, and the socket carries only frame headers.

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

from _serve_helpers import PORTRAIT, FakePipeline, http, upload_bytes
from talkinghead.serve import ServeSettings, create_app
from talkinghead.serve.background import BackgroundServer
from talkinghead.serve.client import to_pcm16
from talkinghead.serve.protocol import FRAME_HEADER_BYTES, decode_frame
from talkinghead.serve.webrtc import SpeechTimeline


@pytest.fixture
def loopback_ice(monkeypatch):
    """aioice offers every interface but 127.0.0.1; tests use 127.0.0.1 alone."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def post_json(url: str, body: dict) -> tuple[int, dict]:
    status, reply = http(
        "POST", url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    return status, json.loads(reply or b"{}")


def speech_with_onset(silence_s: float, tone_s: float) -> np.ndarray:
    t = np.arange(int(tone_s * 16000)) / 16000
    return np.concatenate([np.zeros(int(silence_s * 16000)), 0.5 * np.sin(2 * np.pi * 440 * t)])


async def _session(url: str, ws_url: str, avatar: str, audio: np.ndarray) -> dict:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError
    from websockets.asyncio.client import connect

    result: dict = {"video": [], "audio": [], "headers": [], "events": []}
    async with connect(ws_url, additional_headers={"X-Talkinghead-Client": "test"}) as ws:
        await ws.send(json.dumps({"type": "start", "avatar": avatar, "controls": {"webrtc": True}}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready" and ready["webrtc"] is True
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
        # A second offer for the same session is refused.
        status, again = await asyncio.to_thread(post_json, f"{url}/webrtc/offer", offer)
        assert status == 409, again

        async def read_video() -> None:
            while True:
                try:
                    frame = await asyncio.wait_for(tracks["video"].recv(), 10)
                except (MediaStreamError, asyncio.TimeoutError):
                    return
                result["video"].append((frame.pts, float(frame.to_ndarray(format="gray").mean())))

        async def read_audio() -> None:
            while True:
                try:
                    frame = await asyncio.wait_for(tracks["audio"].recv(), 3)
                except (MediaStreamError, asyncio.TimeoutError):
                    return
                pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                result["audio"].append((frame.pts, frame.sample_rate, pcm.astype(np.float32)))

        await ws.send(to_pcm16(audio))
        await ws.send(json.dumps({"type": "end"}))
        async for message in ws:
            if isinstance(message, bytes):
                result["headers"].append(message)
            else:
                result["events"].append(json.loads(message))
        while len(tracks) < 2:  # both tracks were announced in the answer
            await asyncio.sleep(0.05)
        await asyncio.gather(read_video(), read_audio())
        result["end"] = result["events"][-1]
        await pc.close()
    return result


def test_aiortc_client_receives_paced_frames_and_the_speech(tmp_path, loopback_ice) -> None:
    pipe = FakePipeline(size=(64, 64), lookahead=0)
    audio = speech_with_onset(0.4, 0.6)  # 1 s: 25 frames; the tone starts at frame 10
    with BackgroundServer(create_app(pipe, ServeSettings(max_sessions=1))) as srv:
        status, record = upload_bytes(srv.url, PORTRAIT.read_bytes())
        assert status == 201
        result = asyncio.run(_session(srv.url, srv.ws_url, record["id"], audio))
        # The slot is free again and the peer is gone.
        status, _ = post_json(f"{srv.url}/webrtc/offer", {"session": "x", "sdp": "v=0"})
        assert status == 404
    # The socket: 25 headers without a JPEG, then "end" with every frame sent.
    assert [len(h) for h in result["headers"]] == [FRAME_HEADER_BYTES] * 25
    assert [decode_frame(h)[0] for h in result["headers"]] == list(range(25))
    assert result["end"]["type"] == "end" and result["end"]["frames"] == 25
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
                except (MediaStreamError, asyncio.TimeoutError):
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
        result = asyncio.run(_session(srv.url, srv.ws_url, record["id"], speech))
    assert [decode_frame(h)[0] for h in result["headers"]] == list(range(10))
    assert result["end"]["frames"] == 10 and result["end"]["dropped"] == 0
    pts = [p - result["video"][0][0] for p, _ in result["video"]]
    assert pts == [3600 * i for i in range(9)]  # the last stays in aiortc's jitter buffer
    assert max(float(np.abs(pcm).max()) for _, _, pcm in result["audio"]) > 3000  # the speech
