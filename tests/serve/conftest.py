from __future__ import annotations

import pytest


@pytest.fixture
def loopback_ice(monkeypatch):
    """aioice offers every interface but 127.0.0.1; WebRTC tests use 127.0.0.1 alone."""
    aioice_ice = pytest.importorskip("aioice.ice")
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
