from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def loopback_ice(monkeypatch):
    """aioice offers every interface but 127.0.0.1; WebRTC tests use 127.0.0.1 alone."""
    aioice_ice = pytest.importorskip("aioice.ice")
    monkeypatch.setattr(aioice_ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


# The page's conversation as the browser and WebRTC tests drive it (window.talkingheadEvents:
# the server's events; window.talkingheadFrames: the frame headers the page received).
EVENTS = "window.talkingheadEvents || []"
FRAMES_RECEIVED = "(window.talkingheadFrames || []).length"


@pytest.fixture
def two_turns_with_an_interrupt():
    """The page-driving steps shared by test_browser.py and test_webrtc.py (a fixture: the
    tests cannot import this conftest by name, tests/conftest.py shadows it)."""
    return _two_turns_with_an_interrupt


def _two_turns_with_an_interrupt(
    page, turn_one: Path, turn_two: Path, *, interrupt_after: int, idle_after: int, timeout_ms: int
) -> None:
    """On a page in conversation mode with its portrait registered: turn one, interrupted
    `interrupt_after` frames into its speech; `idle_after` idle frames; turn two, played to
    its end and back to idle. The caller ends the conversation."""

    def speak(wav: Path) -> None:
        page.set_input_files("#audio-file", str(wav))
        page.wait_for_function("!document.getElementById('speak').disabled", timeout=30_000)
        page.click("#speak")

    def wait_frames_after(kind: str, frames: int) -> None:
        page.wait_for_function(
            f"(() => {{ const e = ({EVENTS}).find((e) => e.type === '{kind}');"
            f" return e && {FRAMES_RECEIVED} >= e.frame + {frames}; }})()",
            timeout=timeout_ms,
        )

    speak(turn_one)
    wait_frames_after("speech", interrupt_after)
    page.click("#interrupt")
    wait_frames_after("interrupted", idle_after)
    speak(turn_two)
    page.wait_for_function(
        f"(() => {{ const kinds = ({EVENTS}).map((e) => e.type).join(' ');"
        f" return kinds.endsWith('interrupted speech idle'); }})()",
        timeout=timeout_ms,
    )
