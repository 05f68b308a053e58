"""What a web page (or anyone else) cannot make the server do: the Host and Origin checks,
the CSRF header on uploads and deletes, the optional token, unguessable avatar ids and API
docs off by default. On the stand-in pipeline (`_serve_helpers.FakePipeline`)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client as httpclient
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from _serve_helpers import FakePipeline, get_json, http, upload_bytes
from talkinghead.serve import ServeSettings, create_app
from talkinghead.serve.background import BackgroundServer
from talkinghead.serve.client import SessionError, multipart_file, stream_audio
from talkinghead.serve.protocol import CLOSE_UNAUTHORIZED
from talkinghead.serve.security import CSRF_HEADER, AccessPolicy, normalise_origin

TOKEN = "s3cret-token-for-tests"


@contextlib.contextmanager
def server(tmp_path: Path, **settings):
    app = create_app(FakePipeline(), ServeSettings(avatar_dir=tmp_path / "avatars", **settings))
    with BackgroundServer(app) as srv:
        yield srv


def portrait_bytes(tmp_path: Path, value: int = 120) -> bytes:
    path = tmp_path / f"face{value}.png"
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(path)
    return path.read_bytes()


def raw_request(srv, method: str, path: str, headers: dict[str, str], body: bytes = b""):
    """(status, JSON body) of a request with exactly these headers (Host included)."""
    conn = httpclient.HTTPConnection(srv.host, srv.port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data.startswith(b"{") else data)
    finally:
        conn.close()


def ws_handshake(srv, *, host: str | None = None, origin: str | None = None, token=None):
    """Open /ws through a socket to the server, sending `host` / `origin` as a browser would."""
    sock = socket.create_connection((srv.host, srv.port), timeout=30)
    uri = f"ws://{host or f'{srv.host}:{srv.port}'}/ws"
    headers = {"Origin": origin} if origin else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return connect(uri, sock=sock, additional_headers=headers, open_timeout=30)


def refused_status(srv, **kwargs) -> int:
    with pytest.raises(InvalidStatus) as info:
        ws_handshake(srv, **kwargs).close()
    return info.value.response.status_code


def start(ws, avatar: str, **extra) -> dict:
    ws.send(json.dumps({"type": "start", "avatar": avatar, **extra}))
    return json.loads(ws.recv(timeout=30))


# ---------------------------------------------------------------------------- Host


def test_a_page_on_a_rebound_domain_is_refused(tmp_path) -> None:
    # DNS rebinding: evil.example now resolves to 127.0.0.1; the browser sends its own name.
    with server(tmp_path) as srv:
        status, reply = raw_request(srv, "GET", "/avatars", {"Host": f"evil.example:{srv.port}"})
        assert status == 400 and "evil.example" in reply["detail"]
        assert raw_request(srv, "GET", "/healthz", {"Host": "evil.example"})[0] == 400
        assert raw_request(srv, "GET", "/", {"Host": "evil.example"})[0] == 400
        assert refused_status(srv, host=f"evil.example:{srv.port}") == 400
        # Loopback names are the server's own.
        for host in (f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", "localhost"):
            assert raw_request(srv, "GET", "/healthz", {"Host": host})[0] == 200, host


def test_configured_host_names_are_accepted(tmp_path) -> None:
    with server(tmp_path, allowed_hosts=("avatar.example.com",)) as srv:
        assert raw_request(srv, "GET", "/healthz", {"Host": "avatar.example.com"})[0] == 200
        assert raw_request(srv, "GET", "/healthz", {"Host": "other.example.com"})[0] == 400


def test_host_policy_by_bind_address() -> None:
    loopback = AccessPolicy.create("127.0.0.1")
    assert loopback.host_allowed("localhost") and not loopback.host_allowed("192.168.1.5")
    # Bound to every interface: any IP literal (clients reach it by its addresses), no names.
    everywhere = AccessPolicy.create("0.0.0.0")
    assert everywhere.host_allowed("192.168.1.5") and everywhere.host_allowed("::1")
    assert not everywhere.host_allowed("evil.example")
    lan = AccessPolicy.create("192.168.1.5", ["Avatar.Example.com"])
    assert lan.host_allowed("192.168.1.5") and lan.host_allowed("avatar.example.com")
    assert not lan.host_allowed("127.0.0.1")
    assert normalise_origin("HTTPS://App.Example.com:443/") == "https://app.example.com"
    with pytest.raises(ValueError):
        normalise_origin("app.example.com")


# ---------------------------------------------------------------------------- Origin


def test_websockets_from_other_pages_are_refused(tmp_path) -> None:
    with server(tmp_path) as srv:
        avatar = upload_bytes(srv.url, portrait_bytes(tmp_path))[1]["id"]
        assert refused_status(srv, origin="https://evil.example") == 403
        assert refused_status(srv, origin="null") == 403  # sandboxed frames, file:// pages
        assert refused_status(srv, origin=f"http://127.0.0.1:{srv.port + 1}") == 403
        # The server's own page, and clients that are not browsers (no Origin), are fine.
        for origin in (f"http://127.0.0.1:{srv.port}", None):
            with ws_handshake(srv, origin=origin) as ws:
                assert start(ws, avatar)["type"] == "ready"


def test_cors_origins_may_use_the_server(tmp_path) -> None:
    app_origin = "https://app.example.com"
    with server(tmp_path, cors_origins=(app_origin,)) as srv:
        avatar = upload_bytes(srv.url, portrait_bytes(tmp_path))[1]["id"]
        with ws_handshake(srv, origin=app_origin) as ws:
            assert start(ws, avatar)["type"] == "ready"
        assert refused_status(srv, origin="https://evil.example") == 403
        # The CORS preflight a browser makes before an upload with the custom header.
        preflight = {
            "Host": f"127.0.0.1:{srv.port}",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": CSRF_HEADER.lower(),
        }
        conn = httpclient.HTTPConnection(srv.host, srv.port, timeout=30)
        conn.request("OPTIONS", "/avatars", headers={**preflight, "Origin": app_origin})
        ok = conn.getresponse()
        ok.read()
        assert ok.status == 200 and ok.getheader("access-control-allow-origin") == app_origin
        conn.request("OPTIONS", "/avatars", headers={**preflight, "Origin": "https://evil.example"})
        refused = conn.getresponse()
        refused.read()
        assert refused.getheader("access-control-allow-origin") is None
        conn.close()


# ---------------------------------------------------------------------------- CSRF


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"],
)
def test_uploads_a_page_can_send_without_a_preflight_are_refused(tmp_path, content_type) -> None:
    # The three content types a cross-site form or fetch() may send without asking first.
    with server(tmp_path) as srv:
        body = portrait_bytes(tmp_path)
        status, reply = http(
            "POST", f"{srv.url}/avatars", body, {"Content-Type": content_type}, client_header=False
        )
        assert status == 403 and CSRF_HEADER in reply.decode()
        assert get_json(f"{srv.url}/avatars")["avatars"] == []


def test_uploads_are_multipart_only_and_checked_for_their_origin(tmp_path) -> None:
    with server(tmp_path) as srv:
        data = portrait_bytes(tmp_path)
        status, reply = http(
            "POST", f"{srv.url}/avatars", data, {"Content-Type": "application/octet-stream"}
        )
        assert status == 415 and "multipart/form-data" in json.loads(reply)["detail"]
        # The custom header from another page (as if its preflight had been skipped).
        status, _ = upload_bytes(srv.url, data, headers={"Origin": "https://evil.example"})
        assert status == 403
        status, record = upload_bytes(srv.url, data, headers={"Origin": srv.url})
        assert status == 201
        # Deleting needs the header too.
        delete = f"{srv.url}/avatars/{record['id']}"
        assert http("DELETE", delete, client_header=False)[0] == 403
        assert http("DELETE", delete, headers={"Origin": "https://evil.example"})[0] == 403
        assert http("DELETE", delete)[0] == 204


def test_avatar_ids_cannot_be_computed_from_the_picture(tmp_path) -> None:
    data = portrait_bytes(tmp_path)
    ids = []
    for run in range(2):
        with server(tmp_path / f"run{run}") as srv:
            status, record = upload_bytes(srv.url, data)
            assert status == 201
            assert upload_bytes(srv.url, data) == (200, record)  # the same bytes: same avatar
            ids.append(record["id"])
    assert ids[0] != ids[1]
    for digest_size in (8, 16):
        content_hash = hashlib.blake2b(data, digest_size=digest_size).hexdigest()
        assert not content_hash.startswith(ids[0])


def test_api_docs_are_off_unless_asked_for(tmp_path) -> None:
    with server(tmp_path) as srv:
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert http("GET", f"{srv.url}{path}")[0] == 404, path
    with server(tmp_path, docs=True) as srv:
        assert http("GET", f"{srv.url}/docs")[0] == 200
        assert http("GET", f"{srv.url}/openapi.json")[0] == 200


# ---------------------------------------------------------------------------- token


def test_a_token_guards_everything_but_the_page_and_health(tmp_path) -> None:
    with server(tmp_path, token=TOKEN) as srv:
        for path in ("/", "/static/app.js", "/healthz"):
            assert http("GET", f"{srv.url}{path}")[0] == 200, path
        assert get_json(f"{srv.url}/healthz")["token_required"] is True
        for path in ("/avatars", "/metrics"):
            status, reply = http("GET", f"{srv.url}{path}")
            assert status == 401 and "token" in json.loads(reply)["detail"], path
            assert http("GET", f"{srv.url}{path}", token="wrong")[0] == 401
            assert http("GET", f"{srv.url}{path}", token=TOKEN)[0] == 200
        assert upload_bytes(srv.url, portrait_bytes(tmp_path))[0] == 401
        status, record = upload_bytes(srv.url, portrait_bytes(tmp_path), token=TOKEN)
        assert status == 201
        avatar = record["id"]

        # WebSocket: a header token is checked at the handshake ...
        assert refused_status(srv, token="wrong") == 401
        with ws_handshake(srv, token=TOKEN) as ws:
            assert start(ws, avatar)["type"] == "ready"
        # ... a browser sends it in "start"; without one the session is refused.
        with ws_handshake(srv) as ws:
            assert start(ws, avatar, token=TOKEN)["type"] == "ready"
        for extra in ({}, {"token": "wrong"}):
            with ws_handshake(srv) as ws:
                reply = start(ws, avatar, **extra)
                assert reply["type"] == "error" and reply["code"] == "unauthorized"
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
                assert closed.value.rcvd.code == CLOSE_UNAUTHORIZED
        result = stream_audio(srv.ws_url, avatar, np.zeros(1600, np.float32), token=TOKEN)
        assert len(result.frames) == 3
        with pytest.raises(SessionError):
            stream_audio(srv.ws_url, avatar, np.zeros(1600, np.float32))


def test_stream_client_sends_the_token(tmp_path) -> None:
    import soundfile as sf
    from typer.testing import CliRunner

    from talkinghead.cli import app

    portrait = tmp_path / "face.png"
    portrait.write_bytes(portrait_bytes(tmp_path))
    wav = tmp_path / "speech.wav"
    sf.write(wav, np.zeros(4000, np.float32), 16000)
    with server(tmp_path, token=TOKEN) as srv:
        args = ["stream-client", "--url", srv.ws_url, "--source", str(portrait), "--audio",
                str(wav), "--output", str(tmp_path / "out.mp4")]  # fmt: skip
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code != 0 and not (tmp_path / "out.mp4").exists()
        done = CliRunner().invoke(app, args, env={"TALKINGHEAD_TOKEN": TOKEN})
        assert done.exit_code == 0, done.output
        assert (tmp_path / "out.mp4").is_file()


def test_multipart_helper_builds_a_form_starlette_reads(tmp_path) -> None:
    # The one encoder the client, the benchmark and the tests share.
    body, content_type = multipart_file(b"\x00\x01binary\r\n--not-a-boundary")
    assert content_type.startswith("multipart/form-data; boundary=")
    with server(tmp_path) as srv:
        status, reply = http("POST", f"{srv.url}/avatars", body, {"Content-Type": content_type})
        assert status == 415 and json.loads(reply)["detail"].startswith(
            "not a readable image or video"
        )  # read, then refused
