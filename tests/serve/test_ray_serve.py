"""`talkinghead serve --ray`: two replicas of the server on a local Ray instance (CPU),
the tiny Ditto release, sessions pinned per replica and the busy rule per replica, WebRTC
signalled on the session's socket through the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from _conformance import skip_missing
from _extras import needs_offline_face
from _serve_helpers import PORTRAIT, TINY_SETTINGS, get_json, speech_16k, upload_bytes
from _tiny_release import build_tiny_release
from _webrtc_client import webrtc_session, with_loopback_ice
from talkinghead.serve import ServeSettings
from talkinghead.serve.client import to_pcm16
from talkinghead.serve.protocol import CLOSE_BUSY, decode_frame
from talkinghead.timebase import num_frames

ray = pytest.importorskip("ray")
pytest.importorskip("ray.cloudpickle")
serve = pytest.importorskip("ray.serve")

STARTUP_S = 240.0  # two replicas loading the tiny release on two shared CPU cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    if not PORTRAIT.is_file():
        skip_missing(f"{PORTRAIT}")
    import _webrtc_client
    from talkinghead.methods.ditto.pipeline import DittoPipeline
    from talkinghead.serve.ray_serve import RayServeOptions, build_ray_app

    release = build_tiny_release(tmp_path_factory.mktemp("release"))
    port = _free_port()
    # The replicas unpickle the helper by value: the tests folder is not on their path.
    ray.cloudpickle.register_pickle_by_value(_webrtc_client)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # WebRTC in the replicas stays on 127.0.0.1, like the test's own client.
        factory = functools.partial(
            with_loopback_ice,
            functools.partial(
                DittoPipeline.from_pretrained, release, download=False, **TINY_SETTINGS
            ),
        )
        app = build_ray_app(
            factory,
            ServeSettings(max_sessions=1, idle_timeout_s=60),
            RayServeOptions(replicas=2, cpus_per_replica=1),
            shared_dir=tmp_path_factory.mktemp("shared-avatars"),
        )
        serve.run(app, name="talkinghead", route_prefix="/", blocking=False)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_S
        while True:  # serve.run returns once replicas run; their apps may still start
            try:
                if get_json(f"{base}/healthz")["status"] == "ok":
                    break
            except (OSError, AssertionError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the Ray Serve deployment did not become healthy")
            time.sleep(0.5)
        yield base
    finally:
        serve.shutdown()
        ray.shutdown()


def _start(stack: contextlib.ExitStack, url: str, avatar: str):
    """A connected session past "ready" (or the error message that refused it)."""
    ws = stack.enter_context(connect(url, open_timeout=60, max_size=None))
    ws.send(json.dumps({"type": "start", "avatar": avatar, "controls": {"lossless": True}}))
    return ws, json.loads(ws.recv(timeout=120))


def _speak(ws, pcm: bytes, result: dict) -> None:
    """Send the speech, then "end"; collect frame indices until the server's "end"."""
    try:
        for i in range(0, len(pcm), 3200):
            ws.send(pcm[i : i + 3200])
        ws.send(json.dumps({"type": "end"}))
        indices = []
        while True:
            message = ws.recv(timeout=180)
            if isinstance(message, bytes):
                indices.append(decode_frame(message)[0])
            elif json.loads(message)["type"] == "end":
                result["end"] = json.loads(message)
                break
        result["indices"] = indices
    except Exception as exc:  # reported by the test's assertion
        result["error"] = repr(exc)
    finally:
        ws.close()


@needs_offline_face
def test_two_replicas_one_session_each_third_busy(ray_server: str) -> None:
    base = ray_server
    ws_url = base.replace("http", "ws", 1) + "/ws"
    health = get_json(f"{base}/healthz")
    assert health["max_sessions"] == 1  # the busy rule is per replica

    # One upload, to whichever replica the router picks; both sessions use it, so one
    # of them runs on the replica that registers it from the shared store.
    status, record = upload_bytes(base, PORTRAIT.read_bytes())
    assert status == 201, record

    stack = contextlib.ExitStack()
    with stack:
        _sessions(stack, base, ws_url, record["id"])
    assert get_json(f"{base}/healthz")["status"] == "ok"


def _sessions(stack: contextlib.ExitStack, base: str, ws_url: str, avatar: str) -> None:
    first, ready1 = _start(stack, ws_url, avatar)
    assert ready1["type"] == "ready", ready1
    second, ready2 = _start(stack, ws_url, avatar)
    assert ready2["type"] == "ready", ready2  # the other replica: the first one is full

    third, refused = _start(stack, ws_url, avatar)
    assert refused["type"] == "error" and refused["code"] == "busy", refused
    with pytest.raises(ConnectionClosed) as closed:
        third.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_BUSY

    pcm = to_pcm16(speech_16k(0.5))  # 13 frames from each replica
    results: list[dict] = [{}, {}]
    threads = [
        threading.Thread(target=_speak, args=(ws, pcm, r))
        for ws, r in zip((first, second), results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    expected = num_frames(len(pcm) // 2)
    for result in results:
        assert "error" not in result, result
        assert result["indices"] == list(range(expected)), result.get("indices")
        assert result["end"]["frames"] == expected


@needs_offline_face
def test_avatar_deleted_on_one_replica_is_gone_on_all(ray_server: str) -> None:
    from _serve_helpers import http

    base = ray_server
    data = PORTRAIT.read_bytes() + b"\0"  # the same face, other bytes (JPEG ignores the tail)
    status, record = upload_bytes(base, data)
    assert status == 201, record
    assert http("DELETE", f"{base}/avatars/{record['id']}")[0] == 204
    # Every replica now answers 404 for it, whichever the router picks.
    for _ in range(4):
        assert http("GET", f"{base}/avatars/{record['id']}")[0] == 404


@needs_offline_face
def test_webrtc_sessions_on_both_replicas_through_the_proxy(ray_server: str, loopback_ice) -> None:
    """The offer travels on the session's socket, so it reaches the replica holding the
    session whichever replica the proxy would give a separate request. One session on each
    replica: an aiortc client gets its video frames and speech; the other never offers
    and still gets every frame header and "end"."""
    pytest.importorskip("aiortc")
    base = ray_server
    ws_url = base.replace("http", "ws", 1) + "/ws"
    status, record = upload_bytes(base, PORTRAIT.read_bytes())
    assert status in (200, 201), record
    speech = speech_16k(0.7)[4800:]  # 0.4 s of voice (the example opens with silence): 10 frames
    expected = num_frames(len(speech))
    with contextlib.ExitStack() as stack:
        # The offer-less session first: it holds one replica, the WebRTC one gets the other.
        ws = stack.enter_context(connect(ws_url, open_timeout=60, max_size=None))
        controls = {"webrtc": True, "lossless": True}
        ws.send(json.dumps({"type": "start", "avatar": record["id"], "controls": controls}))
        ready = json.loads(ws.recv(timeout=120))
        assert ready["type"] == "ready" and ready["webrtc"] is True, ready
        offerless: dict = {}
        speaker = threading.Thread(target=_speak, args=(ws, to_pcm16(speech), offerless))
        speaker.start()
        try:
            played = asyncio.run(webrtc_session(ws_url, record["id"], speech))
        finally:
            speaker.join(300)
    assert played["ready"]["session"] != ready["session"]
    assert [decode_frame(h) for h in played["headers"]] == [
        (i, i / 25, b"") for i in range(expected)
    ]
    assert played["end"]["type"] == "end" and played["end"]["frames"] == expected
    pts = [p - played["video"][0][0] for p, _ in played["video"]]
    # Every frame, in order (aiortc's receiver keeps the last in its jitter buffer).
    assert pts == [3600 * i for i in range(expected - 1)], pts
    assert max(float(abs(pcm).max()) for _, _, pcm in played["audio"]) > 3000  # the speech
    assert "error" not in offerless, offerless
    assert offerless["indices"] == list(range(expected))
    assert offerless["end"]["frames"] == expected


def test_shared_store_is_not_left_half_written(tmp_path: Path) -> None:
    """Publishing goes through a temp file: nothing but finished sources is left."""
    from _serve_helpers import FakePipeline
    from talkinghead.filemode import default_mode
    from talkinghead.serve.ray_serve import SharedAvatarRegistry

    shared = tmp_path / "shared"
    a = SharedAvatarRegistry(FakePipeline(), tmp_path / "a", shared_dir=shared, id_key=b"k" * 16)
    b = SharedAvatarRegistry(FakePipeline(), tmp_path / "b", shared_dir=shared, id_key=b"k" * 16)
    tmp = a.new_upload_file()
    tmp.write_bytes(PORTRAIT.read_bytes())
    record, created = a.add_file(tmp)
    assert created
    assert [p.name for p in shared.iterdir()] == [f"{record.id}.source"]
    published = (shared / f"{record.id}.source").stat().st_mode & 0o777
    assert published == default_mode()  # what a plain copy would get, not a temp file's 0600
    # The other replica registers it on demand, under the same id.
    assert b.get(record.id) is not None and b.get(record.id).id == record.id
    assert b.delete(record.id)
    assert a.get(record.id) is None  # a forgets it on its next look-up
