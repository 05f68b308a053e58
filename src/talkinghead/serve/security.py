"""Who may drive the server: the Host and Origin checks, the CSRF rule and the token.

A server on 127.0.0.1 is reachable by every web page the user opens, so the checks
are about browsers as much as about the network:

* **Host** (every request): the `Host` header must name the server, as it was bound
  (its address, and `localhost` for loopback or wildcard addresses; any IP literal
  when bound to every interface) or a configured name. A page that re-points its own
  domain at 127.0.0.1 (DNS rebinding) sends its domain as `Host` and is refused.
* **Origin** (WebSocket handshakes, and requests that change something): a browser's
  `Origin` must be the server's own origin (scheme-default ports normalised) or one of
  `cors_origins`. Clients that are not browsers send no `Origin`.
* **CSRF** (POST, PUT, PATCH, DELETE): the request carries `X-Talkinghead-Client`.
  Browsers send a custom header cross-site only after a CORS preflight, which only
  `cors_origins` pass, so a page elsewhere cannot make one. Its value is not checked.
* **Token** (optional): with a token set, every request but the page, its static files,
  `/healthz` and the API docs (if on) needs `Authorization: Bearer TOKEN`. WebSocket clients that cannot set
  headers (browsers) put `"token"` in their `start` message instead; the app checks it.

Pure ASGI middleware, so one check serves HTTP and WebSocket alike; refusals are JSON
(`{"detail": ...}`) for HTTP and an HTTP denial of the WebSocket handshake.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

CSRF_HEADER = "X-Talkinghead-Client"
# Reachable without the token: the page, its scripts and the API docs (when turned on)
# hold no secret; probes need health.
PUBLIC_PATHS = ("/", "/healthz", "/favicon.ico", "/docs", "/openapi.json")
PUBLIC_PREFIXES = ("/static/",)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
AUTHENTICATED = "talkinghead_authenticated"  # scope["state"] key: the token came in a header
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(lower-case host name, port or None) of a Host header value; None if malformed."""
    try:
        parts = urlsplit(f"//{value}")
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name or parts.username is not None or parts.path or parts.query:
        return None
    return name.lower(), port


def _origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin header value; None for "null" or malformed."""
    try:
        parts = urlsplit(value)
        scheme, name, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not name:
        return None
    return scheme, name.lower(), port if port is not None else DEFAULT_PORTS[scheme]


def normalise_origin(value: str) -> str:
    """An origin as browsers send it: scheme://host[:port], lower case, no trailing slash."""
    parsed = _origin(value.strip().rstrip("/"))
    if parsed is None:
        raise ValueError(f"{value!r} is not an origin like https://app.example.com")
    scheme, name, port = parsed
    host = f"[{name}]" if ":" in name else name
    return f"{scheme}://{host}" + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")


@dataclass(frozen=True)
class AccessPolicy:
    """What `AccessGuard` accepts (built from the server's settings)."""

    bind_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()  # names besides the bind address; "*": any
    cors_origins: tuple[str, ...] = ()  # normalised; "*": any
    token: str | None = None

    @classmethod
    def create(
        cls,
        bind_host: str = "127.0.0.1",
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
        token: str | None = None,
    ) -> AccessPolicy:
        origins = tuple(o if o == "*" else normalise_origin(o) for o in cors_origins)
        hosts = tuple(h.strip().lower().strip("[]") for h in allowed_hosts if h.strip())
        return cls(bind_host.strip().lower().strip("[]"), hosts, origins, token or None)

    def host_names(self) -> frozenset[str]:
        names = set(self.allowed_hosts)
        names.add(self.bind_host)
        loopback = self.bind_host in LOOPBACK_NAMES or self.bind_host.startswith("127.")
        if loopback or self.bind_host in WILDCARD_ADDRESSES:
            names |= LOOPBACK_NAMES
        return frozenset(names)

    def host_allowed(self, name: str) -> bool:
        if "*" in self.allowed_hosts or name in self.host_names():
            return True
        # Bound to every interface, a client may reach us by any of our addresses; an IP
        # literal cannot be re-pointed by DNS.
        return self.bind_host in WILDCARD_ADDRESSES and _is_ip(name)

    def origin_allowed(self, origin: str, host: tuple[str, int | None]) -> bool:
        if "*" in self.cors_origins:
            return True
        parsed = _origin(origin)
        if parsed is None:
            return False
        scheme, name, port = parsed
        host_name, host_port = host
        if name == host_name and port == (host_port or DEFAULT_PORTS[scheme]):
            return True  # the server's own origin (its Host passed the host check)
        return normalise_origin(origin) in self.cors_origins

    def token_matches(self, presented: str | None) -> bool:
        if self.token is None:
            return True
        return presented is not None and hmac.compare_digest(
            presented.encode(), self.token.encode()
        )


def bearer(headers: Headers) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class AccessGuard:
    """ASGI middleware enforcing an `AccessPolicy` on HTTP requests and WebSocket handshakes.

    `stage="host"` checks only the Host header (outermost, before CORS preflights are
    answered); `stage="request"` checks Origin, the CSRF header and the token.
    """

    def __init__(self, app: ASGIApp, policy: AccessPolicy, stage: str) -> None:
        if stage not in ("host", "request"):
            raise ValueError(f"stage must be 'host' or 'request', not {stage!r}")
        self.app = app
        self.policy = policy
        self.stage = stage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._check(scope, headers)
        if refusal is not None:
            status, message = refusal
            await _refuse(scope, send, status, message)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        policy = self.policy
        host = _split_host(headers.get("host", ""))
        if self.stage == "host":
            if host is None or not policy.host_allowed(host[0]):
                return 400, (
                    f"Host {headers.get('host', '')!r} is not this server's name; configure "
                    "it with --allowed-host"
                )
            return None
        assert host is not None  # the host stage ran first
        websocket = scope["type"] == "websocket"
        method = "GET" if websocket else scope["method"]
        origin = headers.get("origin")
        checks_origin = origin is not None and (websocket or method not in SAFE_METHODS)
        if checks_origin and not policy.origin_allowed(origin, host):
            return 403, (
                f"requests from the web page at {origin} are not allowed; add it with "
                "--cors-origins"
            )
        if method not in SAFE_METHODS and not headers.get(CSRF_HEADER):
            return 403, (
                f"requests that change something need the {CSRF_HEADER} header (any value), "
                "so that other web pages cannot send them"
            )
        if policy.token is not None and not _public(scope["path"]):
            presented = bearer(headers)
            if presented is not None:
                if not policy.token_matches(presented):
                    return 401, "wrong token"
                scope.setdefault("state", {})[AUTHENTICATED] = True
            elif not websocket:  # a WebSocket may send its token in "start" instead
                return 401, "this server needs a token: send Authorization: Bearer TOKEN"
        return None


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    """An HTTP error response, or the denial of a WebSocket handshake (the same response,
    where the server supports it; else a plain close, which uvicorn answers with 403)."""
    body = json.dumps({"detail": message}).encode()
    response_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if status == 401:
        response_headers.append((b"www-authenticate", b"Bearer"))
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        await send(
            {"type": "websocket.http.response.start", "status": status, "headers": response_headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


def websocket_authenticated(scope: dict[str, Any]) -> bool:
    """Whether the handshake carried a valid token (so "start" needs none)."""
    return bool(scope.get("state", {}).get(AUTHENTICATED))
