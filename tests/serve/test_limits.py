"""Server limits and robustness (uploads, idle timeouts, slow readers, backpressure), and the
protocol helpers; on a stand-in pipeline that renders instantly (see `_serve_helpers`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client as httpclient
import io
import json
import math
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from _conformance import skip_missing
from _hostile_media import png_bomb, truncated
from _serve_helpers import (
    PORTRAIT,
    FakePipeline,
    get_json,
    http,
    metric_value,
    upload_bytes,
    wait_idle,
    wait_until,
)
from talkinghead.serve import ServeSettings, create_app
from talkinghead.serve.background import BackgroundServer
from talkinghead.serve.client import stream_audio, to_pcm16
from talkinghead.serve.protocol import (
    CLOSE_BUSY,
    CLOSE_IDLE_TIMEOUT,
    FRAME_HEADER_BYTES,
    MAX_OFFER_BYTES,
    MAX_TEXT_BYTES,
    Offer,
    ProtocolError,
    check_controls,
    decode_frame,
    encode_frame,
    parse_text,
    pipeline_settings,
)
from talkinghead.serve.security import CSRF_HEADER
from talkinghead.serve.sessions import AudioInbox

LIMIT = 256 * 1024


@contextlib.contextmanager
def fake_server(tmp_path: Path, pipe: FakePipeline | None = None, **settings):
    pipe = pipe or FakePipeline()
    settings.setdefault("max_upload_bytes", LIMIT)
    app = create_app(pipe, ServeSettings(avatar_dir=tmp_path / "avatars", **settings))
    with BackgroundServer(app) as srv:
        srv.pipe = pipe
        yield srv


def upload(srv, data: bytes, **kwargs) -> tuple[int, dict]:
    """`data` as the file of a multipart form (the only way the server takes uploads)."""
    return upload_bytes(srv.url, data, **kwargs)


def small_video(path: Path, frames: int = 6) -> Path:
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            img = np.full((48, 64, 3), i * 30, np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def recv_all(ws) -> tuple[list, int | None]:
    out = []
    try:
        while True:
            out.append(ws.recv(timeout=30))
    except ConnectionClosed as exc:
        return out, exc.rcvd.code if exc.rcvd else None


# ---------------------------------------------------------------------------- uploads


def test_uploads_are_checked_by_content_and_size(tmp_path) -> None:
    if not PORTRAIT.is_file():
        skip_missing(f"{PORTRAIT}")
    with fake_server(tmp_path) as srv:
        # Not images, whatever they claim to be.
        assert upload(srv, b"hello, I am a jpeg")[0] == 415
        wav = io.BytesIO()
        sf.write(wav, np.zeros(1600, np.float32), 16000, format="WAV")
        status, reply = upload(srv, wav.getvalue())  # said "not an image or video" twice
        assert (
            status == 415
            and reply["detail"] == "not an image or video (no picture in a 'wav' file)"
        )
        assert upload(srv, b"")[0] == 415
        assert upload(srv, np.random.default_rng(0).bytes(5000))[0] == 415
        # Too large: refused from the declared length, and while reading a chunked body.
        status, reply = upload(srv, b"\0" * (LIMIT + 128 * 1024))
        assert status == 413 and "larger" in reply["detail"]
        conn = httpclient.HTTPConnection(srv.host, srv.port, timeout=30)
        head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
        conn.request(
            "POST",
            "/avatars",
            body=iter([head] + [b"\0" * 65536] * 8),
            headers={"Content-Type": "multipart/form-data; boundary=b", CSRF_HEADER: "test"},
            encode_chunked=True,
        )
        assert conn.getresponse().status == 413
        conn.close()
        # A multipart form without a file.
        status, _ = http(
            "POST",
            f"{srv.url}/avatars",
            b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n',
            {"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert status == 400
        # A portrait and a short video are accepted, whatever their names say.
        status, image = upload(srv, PORTRAIT.read_bytes())
        assert status == 201 and image["kind"] == "image"
        video = small_video(tmp_path / "clip.txt")
        status, clip = upload(srv, video.read_bytes())
        assert status == 201 and clip["kind"] == "video" and clip["frames"] == 6
        assert clip["width"] == 64 and clip["height"] == 48
        ids = {a["id"] for a in get_json(f"{srv.url}/avatars")["avatars"]}
        assert ids == {image["id"], clip["id"]}
        # Only server-named sources stay in the store: no partial uploads.
        names = sorted(p.name for p in (tmp_path / "avatars").iterdir())
        assert names == sorted(f"{i}.source" for i in ids)
        metrics = http("GET", f"{srv.url}/metrics")[1].decode()
        assert metric_value(metrics, 'talkinghead_uploads_total{status="415"}') == 4
        assert metric_value(metrics, 'talkinghead_uploads_total{status="413"}') == 2


def test_store_survives_a_restart_and_limits_avatars(tmp_path) -> None:
    if not PORTRAIT.is_file():
        skip_missing(f"{PORTRAIT}")
    with fake_server(tmp_path, max_avatars=1) as srv:
        status, first = upload(srv, PORTRAIT.read_bytes())
        assert status == 201
        video = small_video(tmp_path / "clip.mp4")
        assert upload(srv, video.read_bytes())[0] == 507
    with fake_server(tmp_path) as srv:
        assert [a["id"] for a in get_json(f"{srv.url}/avatars")["avatars"]] == [first["id"]]


# ---------------------------------------------------------------------------- sessions


@pytest.fixture
def avatar_server(tmp_path):
    """A fake-pipeline server with one registered avatar: (server, avatar id)."""

    def make(**settings):
        stack = contextlib.ExitStack()
        srv = stack.enter_context(fake_server(tmp_path, settings.pop("pipe", None), **settings))
        video = small_video(tmp_path / "face.mp4", frames=1)
        status, record = upload(srv, video.read_bytes())
        assert status == 201
        servers.append(stack)
        return srv, record["id"]

    servers: list[contextlib.ExitStack] = []
    yield make
    for stack in servers:
        stack.close()


def test_frames_are_sent_as_audio_arrives(avatar_server) -> None:
    srv, avatar = avatar_server()
    arrivals: list[tuple[int, float]] = []
    pcm = np.zeros(16000, np.float32)  # 1 s, sent at its real pace in 100 ms chunks
    result = stream_audio(
        srv.ws_url,
        avatar,
        pcm,
        realtime=True,
        chunk_ms=100,
        on_frame=lambda i, t, jpeg: arrivals.append((i, time.perf_counter())),
    )
    assert len(result.frames) == 25 and result.end["dropped"] == 0
    t0 = result.first_audio_at
    # Frame i needs the audio up to (i + 1 + look-ahead) / 25 s; it arrives within one
    # chunk (100 ms) of that, plus scheduling slack, not at the end of the speech.
    needed = [(i + 1 + 2) / 25 for i, _ in arrivals[:-2]]
    delays = [at - t0 - need for (_, at), need in zip(arrivals, needed, strict=False)]
    assert float(np.median(delays)) < 0.25, delays
    assert arrivals[10][1] - t0 < 0.9  # well before the 1 s of audio has all been sent


@pytest.mark.parametrize("progressive", [False, True])
def test_frames_after_the_end_of_speech(avatar_server, progressive) -> None:
    # All 10 frames are rendered after "end" (look-ahead > audio), 50 ms each.
    pipe = FakePipeline(lookahead=100, delay_s=0.05, progressive_finish=progressive)
    srv, avatar = avatar_server(pipe=pipe)
    arrivals: list[float] = []
    result = stream_audio(
        srv.ws_url,
        avatar,
        np.zeros(6400, np.float32),
        on_frame=lambda i, t, jpeg: arrivals.append(time.perf_counter()),
    )
    assert [i for i, _, _ in result.frames] == list(range(10))
    spread = arrivals[-1] - arrivals[0]
    if progressive:  # each frame leaves as soon as it is rendered
        assert spread > 0.4
    else:  # close() hands over the whole tail at once
        assert spread < 0.3


class LaggingStream:
    """A renderer that finishes one frame per call, 5 ms each: slower than the audio comes."""

    def __init__(self) -> None:
        self.frames_out = 0  # frames submitted to the "renderer"
        self.returned = 0
        self.samples = 0
        self.in_flight_when_fed: list[int] = []
        self.probe = lambda: None

    def push(self, audio) -> list[np.ndarray]:
        n = len(audio) // 2 if isinstance(audio, (bytes, bytearray)) else len(audio)
        if n:
            self.probe()
            self.in_flight_when_fed.append(self.frames_out - self.returned)
            self.samples += n
            self.frames_out = self.samples // 640
        time.sleep(0.005)
        if self.returned < self.frames_out:
            self.returned += 1
            return [np.zeros((16, 16, 3), np.uint8)]
        return []

    def close(self) -> list[np.ndarray]:
        total = -(-self.samples // 640)
        out = [np.zeros((16, 16, 3), np.uint8)] * (total - self.returned)
        self.returned = self.frames_out = total
        return out

    def abort(self) -> None:
        pass


def test_a_slow_renderer_is_not_fed_faster_than_it_renders(avatar_server) -> None:
    from talkinghead.serve.sessions import MAX_IN_FLIGHT

    pipe = FakePipeline()
    stream = LaggingStream()
    pipe.stream = lambda avatar, **settings: stream
    srv, avatar = avatar_server(pipe=pipe, audio_window_s=1.0)
    sessions = srv.server.config.app.state.serve.sessions
    buffered: list[int] = []
    stream.probe = lambda: buffered.append(sessions.sessions()[0].worker.inbox.buffered)
    result = stream_audio(srv.ws_url, avatar, np.zeros(64000, np.float32))  # 4 s at once
    assert result.ready["audio_window_s"] == 1.0
    assert [i for i, _, _ in result.frames] == list(range(100))
    # The model got audio only as the renderer caught up ...
    assert max(stream.in_flight_when_fed) < MAX_IN_FLIGHT
    # ... and the client kept within the window instead of filling the server's buffer.
    assert max(buffered) <= (1.0 + 0.5) * 32000


def test_idle_sessions_are_closed(avatar_server) -> None:
    srv, avatar = avatar_server(idle_timeout_s=0.5)
    with connect(srv.ws_url) as ws:  # never says anything
        messages, code = recv_all(ws)
    assert code == CLOSE_IDLE_TIMEOUT and json.loads(messages[-1])["code"] == "idle_timeout"
    with connect(srv.ws_url) as ws:  # starts, sends a little audio, then goes quiet
        ws.send(json.dumps({"type": "start", "avatar": avatar}))
        ws.send(b"\0" * 640)
        messages, code = recv_all(ws)
    assert code == CLOSE_IDLE_TIMEOUT
    wait_idle(srv.url)  # no session, and its threads have stopped
    assert srv.pipe.streams[-1].aborted


def test_session_limit_and_release(avatar_server) -> None:
    srv, avatar = avatar_server(max_sessions=2)
    with connect(srv.ws_url) as a, connect(srv.ws_url) as b:
        for ws in (a, b):
            ws.send(json.dumps({"type": "start", "avatar": avatar}))
            assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        assert get_json(f"{srv.url}/healthz")["sessions"] == 2
        with connect(srv.ws_url) as c:
            c.send(json.dumps({"type": "start", "avatar": avatar}))  # a slot is taken at start
            _, code = recv_all(c)
        assert code == CLOSE_BUSY
    wait_idle(srv.url)
    assert all(s.aborted for s in srv.pipe.streams)  # both were dropped mid-session
    result = stream_audio(srv.ws_url, avatar, np.zeros(800, np.float32))
    assert len(result.frames) == 2


def test_a_client_waiting_for_a_slow_server_is_not_idle(avatar_server) -> None:
    # 1 s of audio takes the stand-in 2.3 s to render, 4x the idle timeout.
    srv, avatar = avatar_server(pipe=FakePipeline(delay_s=0.1), idle_timeout_s=0.5)
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps({"type": "start", "avatar": avatar}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(to_pcm16(np.zeros(16000, np.float32)))
        frames = [decode_frame(ws.recv(timeout=10))[0] for _ in range(23)]
        ws.send(json.dumps({"type": "end"}))
        messages, code = recv_all(ws)
    assert code == 1000 and frames == list(range(23))
    assert json.loads(messages[-1])["frames"] == 25


@pytest.mark.parametrize("lossless", [False, True])
def test_a_slow_reader_loses_the_oldest_frames_unless_lossless(avatar_server, lossless) -> None:
    # Large incompressible frames, so that socket buffers cannot absorb the burst.
    srv, avatar = avatar_server(
        pipe=FakePipeline(size=(384, 384), noise=True), frame_buffer=4, idle_timeout_s=30
    )
    n = 100
    with connect(srv.ws_url, max_size=None, max_queue=4) as ws:
        ws.send(json.dumps({"type": "start", "avatar": avatar, "controls": {"lossless": lossless}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(to_pcm16(np.zeros(n * 640, np.float32)))
        ws.send(json.dumps({"type": "end"}))
        time.sleep(1.5)  # not reading: the server renders everything meanwhile
        messages, code = recv_all(ws)
    frames = [decode_frame(m)[0] for m in messages if isinstance(m, bytes)]
    end = json.loads(messages[-1])
    assert code == 1000 and end["frames"] == len(frames)
    assert frames == sorted(set(frames)) and frames[-1] == n - 1  # the newest is kept
    if lossless:
        assert frames == list(range(n)) and end["dropped"] == 0
    else:
        assert end["dropped"] > 0 and len(frames) + end["dropped"] == n
        metrics = http("GET", f"{srv.url}/metrics")[1].decode()
        assert metric_value(metrics, "talkinghead_frames_dropped_total") == end["dropped"]


def test_page_and_static_files_are_served(avatar_server) -> None:
    srv, _ = avatar_server()
    status, page = http("GET", f"{srv.url}/")
    assert status == 200 and b'id="canvas"' in page and b'id="frames-received"' in page
    for name in ("app.js", "pcm-worklet.js"):
        assert http("GET", f"{srv.url}/static/{name}")[0] == 200


def test_stream_client_command_writes_the_video(avatar_server, tmp_path) -> None:
    from typer.testing import CliRunner

    from talkinghead.cli import app

    srv, avatar = avatar_server()
    wav = tmp_path / "speech.wav"
    sf.write(wav, np.zeros(int(0.3 * 24000), np.float32), 24000)
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(
        app,
        ["stream-client", "--url", srv.ws_url, "--avatar", avatar, "--audio", str(wav),
         "--output", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == math.ceil(0.3 * 25)
    with av.open(str(out)) as c:
        assert c.streams.audio
    refused = CliRunner().invoke(
        app, ["stream-client", "--url", srv.ws_url, "--avatar", "0" * 16, "--audio", str(wav),
              "--output", str(tmp_path / "x.mp4")],
    )  # fmt: skip
    assert refused.exit_code != 0 and not (tmp_path / "x.mp4").exists()
    assert "upload one with POST /avatars (or give --source FILE)" in str(refused.exception)


# ---------------------------------------------------------------------------- pieces


def test_frame_messages_round_trip() -> None:
    message = encode_frame(7, b"\xff\xd8jpeg")
    assert message[:4] == b"THF1" and len(message) == FRAME_HEADER_BYTES + 6
    assert decode_frame(message) == (7, 7 / 25, b"\xff\xd8jpeg")
    with pytest.raises(ProtocolError):
        decode_frame(b"nope" + bytes(20))


def test_controls_are_validated() -> None:
    controls = check_controls(
        {"seed": 3, "emotion": ["happy", 2], "delta_yaw": 5, "lossless": True}, max_steps=10
    )
    assert controls == {"seed": 3, "emotion": ["Happy", 2], "delta_yaw": 5.0, "lossless": True}
    assert pipeline_settings(controls) == {"seed": 3, "emotion": ["Happy", 2], "delta_yaw": 5.0}
    for bad in (
        {"steps": 11},
        {"steps": "5"},
        {"seed": True},
        {"emotion": "bored"},
        {"delta_yaw": float("nan")},
        {"device": "cuda"},
        [],
    ):
        with pytest.raises(ProtocolError):
            check_controls(bad, max_steps=10)
    for text in ("", "{", "[]", '{"type": 1}', '{"type": "start", "avatar": 3}', "x" * 20000):
        with pytest.raises(ProtocolError):
            parse_text(text)


def test_offer_messages_are_parsed() -> None:
    sdp = "v=0\r\n" + "a=x\r\n" * 4000  # larger than other messages may be
    text = json.dumps({"type": "offer", "sdp": sdp})
    assert MAX_TEXT_BYTES < len(text) < MAX_OFFER_BYTES
    assert parse_text(text) == Offer(sdp)
    for bad in (
        {"type": "offer"},
        {"type": "offer", "sdp": ""},
        {"type": "offer", "sdp": 3},
        {"type": "offer", "sdp": "v=0", "session": "abc"},  # the socket names its session
        {"type": "offer", "sdp": "v=0" + " " * MAX_OFFER_BYTES},
        {"type": "ping", "pad": "x" * MAX_TEXT_BYTES},  # only an offer may be that long
    ):
        with pytest.raises(ProtocolError):
            parse_text(json.dumps(bad))


def test_audio_inbox_applies_backpressure() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        inbox = AudioInbox(loop, max_bytes=1000)
        events = []
        await inbox.put(b"\0" * 800)
        waiter = asyncio.create_task(inbox.put(b"\1" * 400))  # would exceed: waits
        await asyncio.sleep(0.05)
        events.append(f"waiting={not waiter.done()}")
        data, ended = await asyncio.to_thread(inbox.take, 0.1, 500)
        events.append(f"took={len(data)}")
        await asyncio.wait_for(waiter, 1)
        events.append(f"buffered={inbox.buffered}")
        inbox.end()
        data, ended = await asyncio.to_thread(inbox.take, 0.1, 10_000)
        events.append(f"took={len(data)} ended={ended}")
        return events

    assert asyncio.run(scenario()) == [
        "waiting=True",
        "took=500",
        "buffered=700",
        "took=700 ended=True",
    ]


# ---------------------------------------------------------------------------- resources


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path) -> None:
    import psutil

    # 17 KB on the wire, 144 Mpx decoded: the byte limit (256 KiB here) lets it through.
    bomb = png_bomb(tmp_path / "bomb.png", 12000, 12000).read_bytes()
    process = psutil.Process()  # the server runs in this process
    with fake_server(tmp_path) as srv:
        before = process.memory_info().rss
        status, reply = upload(srv, bomb)
        assert status == 413 and "12000x12000 pixels" in reply["detail"]
        assert str(tmp_path) not in reply["detail"]  # no server-side path in the answer
        # Two at once do not stack either.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            statuses = [f.result()[0] for f in [pool.submit(upload, srv, bomb) for _ in range(2)]]
        assert statuses == [413, 413]
        assert process.memory_info().rss - before < 100 * 2**20
        assert srv.pipe.registered == []  # never reached registration
        assert get_json(f"{srv.url}/avatars")["avatars"] == []


def test_a_truncated_upload_is_refused_as_damaged(tmp_path) -> None:
    if not PORTRAIT.is_file():
        skip_missing(f"{PORTRAIT}")
    cut = truncated(PORTRAIT, 0.8, tmp_path / "cut.jpg").read_bytes()
    with fake_server(tmp_path, max_upload_bytes=4 * 2**20) as srv:
        status, reply = upload(srv, cut)
    assert status == 415 and "truncated or damaged" in reply["detail"]


def test_the_pixel_limit_is_a_setting(tmp_path) -> None:
    with fake_server(tmp_path, max_pixels=64 * 64 - 1) as srv:
        image = tmp_path / "face.png"
        Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(image)
        status, reply = upload(srv, image.read_bytes())
        assert status == 413 and "64x64 pixels" in reply["detail"]


def test_an_upload_is_decoded_once_and_registered_from_its_pixels(tmp_path, monkeypatch) -> None:
    import talkinghead.media.source as source_module

    decodes: list[Path] = []
    real_load = source_module.load_source

    def counting_load(path, *args, **kwargs):
        decodes.append(Path(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(source_module, "load_source", counting_load)
    image = tmp_path / "face.png"
    Image.fromarray(np.full((64, 80, 3), 100, np.uint8)).save(image)
    with fake_server(tmp_path) as srv:
        status, record = upload(srv, image.read_bytes())
        assert status == 201 and (record["width"], record["height"]) == (80, 64)
        assert len(decodes) == 1
        [given] = srv.pipe.registered
        assert isinstance(given, np.ndarray) and given.shape == (64, 80, 3)  # not a path


def test_uploads_are_registered_one_at_a_time_and_bounded(tmp_path) -> None:
    pipe = FakePipeline()
    inside, most, release = [0], [0], threading.Event()
    lock = threading.Lock()

    def hold() -> None:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        release.wait(30)
        with lock:
            inside[0] -= 1

    pipe.register_hook = hold
    images = []
    for k in range(4):
        path = tmp_path / f"face{k}.png"
        Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(path)
        images.append(path.read_bytes())
    with (
        fake_server(tmp_path, pipe, max_pending_uploads=3) as srv,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):
        first = [pool.submit(upload, srv, data) for data in images[:3]]
        wait_until(lambda: inside[0] == 1, 30, "the first registration")
        state = srv.server.config.app.state.serve
        wait_until(lambda: state.uploads_pending == 3, 30, "three uploads in progress")
        status, reply = upload(srv, images[3])  # a fourth is one too many
        assert status == 503 and "in progress" in reply["detail"]
        release.set()
        assert sorted(f.result()[0] for f in first) == [201, 201, 201]
    assert most[0] == 1  # never two decodes/registrations at once


def test_an_ended_session_frees_its_slot_at_once(avatar_server) -> None:
    # 30 sessions back to back, each starting the moment the last one ended.
    srv, avatar = avatar_server(max_sessions=1)
    for _ in range(30):
        result = stream_audio(srv.ws_url, avatar, np.zeros(640, np.float32))
        assert len(result.frames) == 1 and result.close_code == 1000


class SlowAbortStream:
    """A stream whose abort takes a while (a renderer finishing its batch)."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def abort(self) -> None:
        time.sleep(self.delay_s)
        self.inner.abort()


def test_a_dropped_session_frees_its_slot_before_its_threads_end(avatar_server) -> None:
    pipe = FakePipeline()
    make_stream = pipe.stream
    pipe.stream = lambda avatar, **s: SlowAbortStream(make_stream(avatar, **s), delay_s=2.0)
    srv, avatar = avatar_server(pipe=pipe, max_sessions=1)
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps({"type": "start", "avatar": avatar}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(b"\0" * 6400)
    # Gone mid-session: the slot is free as soon as the server hears of it, while the
    # old session's threads still stop (its abort takes 2 s) ...
    wait_until(lambda: get_json(f"{srv.url}/healthz")["sessions"] == 0, 10, "the slot")
    assert get_json(f"{srv.url}/healthz")["draining"] == 1
    # ... and a new client gets it.
    with connect(srv.ws_url) as again:
        again.send(json.dumps({"type": "start", "avatar": avatar}))
        assert json.loads(again.recv(timeout=10))["type"] == "ready"
    wait_idle(srv.url)
    assert all(s.aborted for s in pipe.streams)


def test_a_session_has_a_maximum_length(avatar_server) -> None:
    # A client that only ever pings is never idle; the session still ends.
    srv, avatar = avatar_server(max_session_s=1.0, idle_timeout_s=30)
    with connect(srv.ws_url) as ws:
        ws.send(json.dumps({"type": "start", "avatar": avatar}))
        ready = json.loads(ws.recv(timeout=10))
        assert ready["max_session_s"] == 1.0
        with contextlib.suppress(ConnectionClosed):
            for _ in range(50):
                ws.send('{"type": "ping"}')
                time.sleep(0.1)
        messages, code = recv_all(ws)  # what arrived meanwhile: pongs, then the error
    replies = [json.loads(m) for m in messages]
    errors = [r for r in replies if r["type"] == "error"]
    assert code == CLOSE_IDLE_TIMEOUT and [e["code"] for e in errors] == ["max_duration"]
    assert {r["type"] for r in replies} == {"pong", "error"} and len(messages) < 50
    wait_idle(srv.url)
    metrics = http("GET", f"{srv.url}/metrics")[1].decode()
    assert metric_value(metrics, 'talkinghead_sessions_total{outcome="max_duration"}') == 1


def test_one_large_message_does_not_overfill_the_audio_buffer(avatar_server) -> None:
    # 8 s of audio in one message, a renderer that needs 20 ms a frame, a 1 s buffer.
    pipe = FakePipeline(delay_s=0.02)
    srv, avatar = avatar_server(pipe=pipe, audio_buffer_s=1.0)
    sessions = srv.server.config.app.state.serve.sessions
    buffered: list[int] = []
    with connect(srv.ws_url, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "avatar": avatar}))
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        ws.send(b"\0" * (8 * 32000))
        ws.send(json.dumps({"type": "end"}))
        frames = 0
        while True:
            message = ws.recv(timeout=30)
            if isinstance(message, str):
                break
            frames += 1
            live = sessions.sessions()
            if live and live[0].worker is not None:
                buffered.append(live[0].worker.inbox.buffered)
    assert frames == 200 and json.loads(message)["type"] == "end"
    assert max(buffered) <= 32000 and max(buffered) > 0


def test_audio_inbox_never_holds_more_than_its_limit() -> None:
    async def scenario() -> tuple[list[int], bytes]:
        loop = asyncio.get_running_loop()
        inbox = AudioInbox(loop, max_bytes=1000)
        data = bytes(range(250)) * 20  # 5000 bytes in one message
        putting = asyncio.create_task(inbox.put(data))
        seen, out = [], b""
        while len(out) < len(data):
            await asyncio.sleep(0.01)
            seen.append(inbox.buffered)
            chunk, _ = await asyncio.to_thread(inbox.take, 0.1, 300)
            out += chunk
        await asyncio.wait_for(putting, 1)
        return seen, out

    seen, out = asyncio.run(scenario())
    assert max(seen) <= 1000 and out == bytes(range(250)) * 20


def test_the_server_store_is_removed_at_shutdown(tmp_path) -> None:
    image = tmp_path / "face.png"
    Image.fromarray(np.full((32, 32, 3), 50, np.uint8)).save(image)
    app = create_app(FakePipeline(), ServeSettings())  # no --avatar-dir: all temporary
    with BackgroundServer(app) as srv:
        status, record = upload(srv, image.read_bytes())
        assert status == 201
        store = app.state.serve.temp_dir
        assert (store / "avatars" / f"{record['id']}.source").is_file()
        assert store.stat().st_mode & 0o777 == 0o700
    assert not store.exists()
