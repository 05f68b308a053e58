"""The session protocol against a real uvicorn server running the tiny Ditto release."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from _conformance import skip_missing
from _serve_helpers import (
    PORTRAIT,
    TINY_SETTINGS,
    get_json,
    http,
    metric_value,
    session_threads,
    speech_16k,
    upload_bytes,
    wait_idle,
    wait_until,
)
from _tiny_release import build_tiny_release
from talkinghead.serve import ServeSettings, create_app
from talkinghead.serve.background import BackgroundServer
from talkinghead.serve.client import SessionError, stream_audio, to_pcm16
from talkinghead.serve.protocol import (
    CLOSE_BUSY,
    CLOSE_NOT_FOUND,
    CLOSE_PROTOCOL_ERROR,
    FRAME_HEADER_BYTES,
    decode_frame,
)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    if not PORTRAIT.is_file():
        skip_missing(f"{PORTRAIT}")
    return build_tiny_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def server(release, tmp_path_factory):
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    pipe = DittoPipeline.from_pretrained(release, download=False, **TINY_SETTINGS)
    settings = ServeSettings(
        max_sessions=1, avatar_dir=tmp_path_factory.mktemp("avatars"), idle_timeout_s=20
    )
    with BackgroundServer(create_app(pipe, settings)) as srv:
        yield srv


@pytest.fixture(scope="module")
def avatar_id(server) -> str:
    # Multipart, with a hostile client file name: it must not reach the disk.
    boundary = "talkinghead-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="../../evil.png"\r\nContent-Type: text/plain\r\n\r\n'
        ).encode()
        + PORTRAIT.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, reply = http(
        "POST",
        f"{server.url}/avatars",
        body,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert status == 201, reply
    record = json.loads(reply)
    assert record["kind"] == "image" and (record["width"], record["height"]) == (256, 256)
    return record["id"]


@pytest.fixture
def idle(server):
    wait_idle(server.url)
    return server


def recv_until_closed(ws) -> tuple[list, int | None]:
    messages = []
    try:
        while True:
            messages.append(ws.recv(timeout=60))
    except ConnectionClosed as exc:
        return messages, exc.rcvd.code if exc.rcvd else None


def test_avatar_is_stored_under_a_server_chosen_name(server, avatar_id, tmp_path) -> None:
    state = server.server.config.app.state.serve
    store = state.registry.directory
    assert sorted(p.name for p in store.iterdir()) == [f"{avatar_id}.source"]
    assert not list(Path(store).parent.glob("evil*"))
    # The registered avatar (its pixels, features) sits in the server's own 0700 folder,
    # not in the user's avatar cache.
    derived = sorted(p.name for p in (state.temp_dir / "derived").iterdir())
    assert derived == [f"{avatar_id}.avatar"]
    assert state.temp_dir.stat().st_mode & 0o077 == 0
    listed = get_json(f"{server.url}/avatars")["avatars"]
    assert [a["id"] for a in listed] == [avatar_id]
    status, thumb = http("GET", f"{server.url}/avatars/{avatar_id}/thumbnail")
    assert status == 200 and cv2.imdecode(np.frombuffer(thumb, np.uint8), 1) is not None
    # The same bytes again: the same avatar, not a new one.
    status, reply = upload_bytes(server.url, PORTRAIT.read_bytes())
    assert status == 200 and reply["id"] == avatar_id


def test_frames_count_order_and_timestamps(idle, avatar_id) -> None:
    pcm = speech_16k(0.17)  # 2720 samples: ceil(0.17 x 25) = 5 frames
    expected = math.ceil(len(pcm) / 640)
    assert expected == 5
    data = to_pcm16(pcm)
    # Odd chunk sizes: a sample split across two messages must survive.
    with connect(idle.ws_url, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "avatar": avatar_id, "controls": {"seed": 0}}))
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready" and ready["frame_header_bytes"] == FRAME_HEADER_BYTES
        assert (ready["width"], ready["height"]) == (256, 256)
        for i in range(0, len(data), 1111):
            ws.send(data[i : i + 1111])
        ws.send(json.dumps({"type": "end"}))
        messages, close_code = recv_until_closed(ws)
    frames = [decode_frame(m) for m in messages if isinstance(m, bytes)]
    end = json.loads(messages[-1])
    assert close_code == 1000
    assert end["type"] == "end" and end["frames"] == end["expected_frames"] == expected
    assert end["dropped"] == 0 and end["audio_seconds"] == pytest.approx(0.17)
    assert [i for i, _, _ in frames] == list(range(expected))
    stamps = [t for _, t, _ in frames]
    assert stamps == sorted(stamps) and stamps == pytest.approx([i / 25 for i in range(expected)])
    for _, _, jpeg in frames:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (256, 256, 3) and image.std() > 5
    assert not [m for m in messages if isinstance(m, str) and '"error"' in m]


def test_second_session_beyond_the_limit_is_refused_as_busy(idle, avatar_id) -> None:
    with connect(idle.ws_url) as first:
        first.send(json.dumps({"type": "start", "avatar": avatar_id}))
        assert json.loads(first.recv(timeout=30))["type"] == "ready"
        t0 = time.perf_counter()
        with connect(idle.ws_url) as second:
            second.send(json.dumps({"type": "start", "avatar": avatar_id}))
            messages, code = recv_until_closed(second)
        assert time.perf_counter() - t0 < 5  # refused at once, not queued
        assert code == CLOSE_BUSY
        error = json.loads(messages[0])
        assert error["type"] == "error" and error["code"] == "busy"
        assert "busy" in error["message"]
        # The first session is unaffected: no audio, then end -> zero frames, clean close.
        first.send(json.dumps({"type": "end"}))
        messages, code = recv_until_closed(first)
        assert code == 1000 and json.loads(messages[-1])["frames"] == 0
    metrics = http("GET", f"{idle.url}/metrics")[1].decode()
    assert metric_value(metrics, 'talkinghead_sessions_total{outcome="busy"}') >= 1


@pytest.mark.parametrize(
    ("messages", "code", "close"),
    [
        (["not json at all"], "protocol_error", CLOSE_PROTOCOL_ERROR),
        ([b"\x00\x01audio before start"], "protocol_error", CLOSE_PROTOCOL_ERROR),
        (['{"type": "start"}'], "protocol_error", CLOSE_PROTOCOL_ERROR),
        (['{"type": "start", "avatar": "0123456789abcdef"}'], "not_found", CLOSE_NOT_FOUND),
        (['{"type": "start", "avatar": "../../etc/passwd"}'], "not_found", CLOSE_NOT_FOUND),
        (['{"type": "start", "avatar": "AVATAR", "controls": {"rm": 1}}'], "protocol_error", 4400),
        (['{"type": "start", "avatar": "AVATAR", "controls": {"steps": 1e9}}'], "protocol_error", 4400),
        (['{"type": "start", "avatar": "AVATAR"}', '{"type": "start", "avatar": "AVATAR"}'],
         "protocol_error", CLOSE_PROTOCOL_ERROR),
        (['{"type": "start", "avatar": "AVATAR"}', '{"type": "dance"}'], "protocol_error", 4400),
        (['{"type": "start", "avatar": "AVATAR"}', "[1, 2, 3]"], "protocol_error", 4400),
        (['{"type": "start", "avatar": "AVATAR"}', '{"type": "end"}', '{"type": "end"}'],
         None, None),
    ],
)  # fmt: skip
def test_malformed_messages_close_the_session_not_the_server(
    idle, avatar_id, messages, code, close
) -> None:
    with connect(idle.ws_url) as ws:
        for m in messages:
            ws.send(m.replace("AVATAR", avatar_id) if isinstance(m, str) else m)
        replies, close_code = recv_until_closed(ws)
    errors = [json.loads(r) for r in replies if isinstance(r, str) and '"error"' in r]
    if code is None:
        # A second "end" may race the server's own close; either way nothing breaks.
        assert close_code in (1000, CLOSE_PROTOCOL_ERROR)
    else:
        assert close_code == close
        assert errors and errors[-1]["code"] == code and errors[-1]["message"]
    wait_idle(idle.url)
    assert get_json(f"{idle.url}/healthz")["status"] == "ok"


def test_client_disconnecting_mid_stream_frees_its_session(idle, avatar_id) -> None:
    state = idle.server.config.app.state.serve
    pcm = to_pcm16(speech_16k(1.6))

    def renderer_running() -> bool:
        sessions = state.sessions.sessions()
        worker = sessions[0].worker if sessions else None
        return worker is not None and worker.stream.frames_out > 0

    with connect(idle.ws_url, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "avatar": avatar_id}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        for i in range(0, len(pcm), 3200):
            ws.send(pcm[i : i + 3200])
        wait_until(renderer_running, 60, "the renderer to start")
        assert any(t.name.startswith("stage-") for t in threading.enumerate())
        # Leaving the block closes the connection mid-stream: no "end", frames in flight.
    wait_idle(idle.url, timeout=60)
    wait_until(lambda: not session_threads(), 30, "the session's threads to end")
    metrics = http("GET", f"{idle.url}/metrics")[1].decode()
    assert metric_value(metrics, 'talkinghead_sessions_total{outcome="disconnected"}') >= 1
    assert metric_value(metrics, "talkinghead_sessions_active") == 0
    # The slot is free again.
    with connect(idle.ws_url) as again:
        again.send(json.dumps({"type": "start", "avatar": avatar_id}))
        assert json.loads(again.recv(timeout=30))["type"] == "ready"


def test_metrics_and_health(idle, avatar_id) -> None:
    result = stream_audio(idle.ws_url, avatar_id, speech_16k(0.04), controls={"seed": 1})
    assert len(result.frames) == 1 and result.close_code == 1000
    health = get_json(f"{idle.url}/healthz")
    assert health["status"] == "ok" and health["max_sessions"] == 1 and health["avatars"] == 1
    status, body = http("GET", f"{idle.url}/metrics")
    text = body.decode()
    assert status == 200
    for name in (
        "talkinghead_sessions_active",
        "talkinghead_first_frame_latency_seconds_bucket",
        "talkinghead_fps",
        'talkinghead_queue_depth{queue="audio_seconds"}',
        'talkinghead_queue_depth{queue="frames"}',
        "talkinghead_frames_dropped_total",
    ):
        assert name in text, name
    assert metric_value(text, "talkinghead_first_frame_latency_seconds_count") >= 1
    assert metric_value(text, "talkinghead_frames_sent_total") >= 1
    assert metric_value(text, "talkinghead_fps") > 0


def test_unknown_avatar_and_delete(idle, avatar_id) -> None:
    assert http("DELETE", f"{idle.url}/avatars/0123456789abcdef")[0] == 404
    assert http("GET", f"{idle.url}/avatars/..%2F..%2Fetc")[0] == 404
    with pytest.raises(SessionError) as info:
        stream_audio(idle.ws_url, "fedcba9876543210", np.zeros(640, np.float32))
    assert info.value.code == "not_found" and info.value.close_code == CLOSE_NOT_FOUND


def _session_frames(url: str, avatar_id: str, before_audio: list[dict]) -> list[bytes]:
    data = to_pcm16(speech_16k(0.4))
    with connect(url, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "avatar": avatar_id, "controls": {"seed": 0}}))
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        for message in before_audio:
            ws.send(json.dumps(message))
        ws.send(data)
        ws.send(json.dumps({"type": "end"}))
        messages, close_code = recv_until_closed(ws)
    assert close_code == 1000, messages[-1:]
    assert not [m for m in messages if isinstance(m, str) and '"error"' in m]
    return [jpeg for _, _, jpeg in (decode_frame(m) for m in messages if isinstance(m, bytes))]


def test_a_timeline_message_steers_a_live_session(idle, avatar_id) -> None:
    # Over a real socket with the tiny release: the same seed gives the same frames, and a
    # head-yaw keyframe sent before the speech changes them (issue 20's live timeline).
    plain = _session_frames(idle.ws_url, avatar_id, [])
    wait_idle(idle.url)
    again = _session_frames(idle.ws_url, avatar_id, [])
    wait_idle(idle.url)
    timeline = {"keyframes": [{"frame": 0, "delta_yaw": 30}]}
    turned = _session_frames(idle.ws_url, avatar_id, [{"type": "timeline", "timeline": timeline}])
    assert len(plain) == len(again) == len(turned) == 10
    assert plain == again
    assert turned != plain


def test_delete_removes_the_avatar(server, avatar_id) -> None:
    # Last in this module: the avatar is gone afterwards.
    wait_idle(server.url)
    assert http("DELETE", f"{server.url}/avatars/{avatar_id}")[0] == 204
    assert http("GET", f"{server.url}/avatars/{avatar_id}")[0] == 404
    assert get_json(f"{server.url}/avatars")["avatars"] == []
    state = server.server.config.app.state.serve
    assert not list(state.registry.directory.iterdir())
    assert not list((state.temp_dir / "derived").iterdir())  # its derived data went with it


@contextlib.contextmanager
def serve_command(release: Path, tmp_path: Path, *options: str, stop=signal.SIGINT):
    """`talkinghead serve` on a free port, with its own temp and cache folders:
    (base URL, process, temp folder, cache folder); stopped with `stop` afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "talkinghead", "serve", "--checkpoints", str(release),
        "--no-download", "--port", str(port), "--avatar", str(PORTRAIT), "--steps", "2",
        "--max-size", "256", "--log-level", "warning", *options,
    ]  # fmt: skip
    temp, cache = tmp_path / "tmp", tmp_path / "cache"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "TALKINGHEAD_CACHE": str(cache)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                return get_json(f"{url}/healthz")["status"] == "ok"
            except OSError:
                return False

        wait_until(healthy, 120, "talkinghead serve to answer")
        yield url, proc, temp, cache
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()


def test_serve_command_starts_serves_and_stops(release, tmp_path) -> None:
    # Sessions through the shared batching worker (one per server process).
    options = ("--max-sessions", "3", "--shared-batching", "--max-batch", "4")
    with serve_command(release, tmp_path, *options) as (url, proc, temp, cache):
        health = get_json(f"{url}/healthz")
        assert health["max_sessions"] == 3 and health["avatars"] == 1
        assert health["token_required"] is False
        [avatar] = get_json(f"{url}/avatars")["avatars"]
        result = stream_audio(f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/ws", avatar["id"],
                              speech_16k(0.04))  # fmt: skip
        assert len(result.frames) == 1
        assert http("GET", f"{url}/docs")[0] == 404
        [store] = temp.glob("talkinghead-serve-*")
        assert list((store / "derived").glob("*.avatar"))  # the registered avatar is here ...
    assert proc.returncode == 0, proc.stdout.read().decode()
    assert not store.exists()  # ... until shutdown
    assert not list(cache.rglob("*.avatar"))  # and never in the user's avatar cache


def test_serve_command_with_token_cache_and_docs_stops_on_sigterm(release, tmp_path) -> None:
    token = "tok-" + "x" * 20
    options = ("--token", token, "--cache", "--docs")
    with serve_command(release, tmp_path, *options, stop=signal.SIGTERM) as running:
        url, proc, temp, cache = running
        assert get_json(f"{url}/healthz")["token_required"] is True
        assert http("GET", f"{url}/avatars")[0] == 401
        [avatar] = json.loads(http("GET", f"{url}/avatars", token=token)[1])["avatars"]
        ws_url = f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/ws"
        result = stream_audio(ws_url, avatar["id"], speech_16k(0.04), token=token)
        assert len(result.frames) == 1
        assert http("GET", f"{url}/docs")[0] == 200
        [store] = temp.glob("talkinghead-serve-*")
        assert not list((store / "derived").glob("*.avatar"))  # --cache: in the cache instead
    assert proc.returncode in (0, 128 + signal.SIGTERM), proc.stdout.read().decode()
    assert not store.exists()
    assert len(list((cache / "avatars").glob("*.avatar"))) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--cors-origins", "app.example.com"), "--cors-origins: 'app.example.com' is not"),
        (("--token", " "), "--token is empty"),
        (("--avatar", "."), "is a folder"),
        (("--max-batch", "4"), "--max-batch and --gather-ms need --shared-batching"),
        (("--runtime", "fast"), "runtime must be one of"),
    ],
)
def test_serve_command_refuses_bad_options_before_loading(
    tmp_path, options, message, monkeypatch, capsys
) -> None:
    from _cli_in_process import run_cli

    missing = tmp_path / "no-checkpoints"  # loading would fail too: the option must come first
    args = ["serve", "--checkpoints", str(missing), "--no-download", *options]
    proc = run_cli(args, monkeypatch, capsys)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
