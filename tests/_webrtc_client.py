"""A WebRTC session from aiortc's own client: start over /ws with the webrtc control, offer
(on the session's socket, or through a function given, e.g. POST /webrtc/offer), speak, and
collect what arrives on both tracks and on the socket.

ICE stays on 127.0.0.1: aioice offers every interface but loopback, so the tests patch its
host addresses (`loopback_only`, in this process and, through `with_loopback_ice`, in the
processes of Ray Serve's replicas).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from talkinghead.serve.client import to_pcm16

# (the "ready" message, the offer's SDP) -> the answer {"sdp", "type"}
OfferFunction = Callable[[dict, str], Awaitable[dict]]


def loopback_only() -> None:
    """Host candidates on 127.0.0.1 alone (aioice's choice: every interface but it)."""
    try:
        import aioice.ice
    except ImportError:  # no webrtc extra: nothing to restrict
        return
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def with_loopback_ice(factory: Callable[[], Any]) -> Any:
    """`factory()` in a process whose WebRTC stays on loopback (a Ray replica's pipeline)."""
    loopback_only()
    return factory()


def speech_with_onset(silence_s: float, tone_s: float) -> np.ndarray:
    t = np.arange(int(tone_s * 16000)) / 16000
    return np.concatenate([np.zeros(int(silence_s * 16000)), 0.5 * np.sin(2 * np.pi * 440 * t)])


async def webrtc_session(
    ws_url: str,
    avatar: str,
    audio: np.ndarray,
    *,
    offer: OfferFunction | None = None,
    controls: dict | None = None,
    socket_timeout: float = 120.0,
) -> dict:
    """One spoken WebRTC session. Returns {"ready", "headers" (binary messages), "events"
    (text messages but the answer), "end", "video" [(pts, mean gray level)], "audio"
    [(pts, sample rate, float32 samples of channel 0)]}."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError
    from websockets.asyncio.client import connect

    result: dict = {"video": [], "audio": [], "headers": [], "events": []}
    headers = {"X-Talkinghead-Client": "test"}
    async with connect(ws_url, additional_headers=headers, max_size=None) as ws:
        start = {
            "type": "start",
            "avatar": avatar,
            "controls": {"webrtc": True, **(controls or {})},
        }
        await ws.send(json.dumps(start))
        ready = json.loads(await asyncio.wait_for(ws.recv(), socket_timeout))
        assert ready["type"] == "ready" and ready["webrtc"] is True, ready
        result["ready"] = ready
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        tracks: dict = {}
        pc.on("track", lambda track: tracks.__setitem__(track.kind, track))
        await pc.setLocalDescription(await pc.createOffer())
        answered: asyncio.Future = asyncio.get_running_loop().create_future()

        async def read_socket() -> None:
            async for message in ws:
                if isinstance(message, bytes):
                    result["headers"].append(message)
                    continue
                event = json.loads(message)
                if event["type"] == "answer" and not answered.done():
                    answered.set_result(event)
                else:
                    result["events"].append(event)
            if not answered.done():
                answered.set_exception(AssertionError(f"no answer: {result['events']}"))

        reader = asyncio.ensure_future(read_socket())
        try:
            if offer is None:
                await ws.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
                answer = await asyncio.wait_for(answered, socket_timeout)
            else:
                answer = await offer(ready, pc.localDescription.sdp)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))

            async def read_video() -> None:
                while True:
                    try:
                        frame = await asyncio.wait_for(tracks["video"].recv(), 10)
                    except (TimeoutError, MediaStreamError):
                        return
                    level = float(frame.to_ndarray(format="gray").mean())
                    result["video"].append((frame.pts, level))

            async def read_audio() -> None:
                while True:
                    try:
                        frame = await asyncio.wait_for(tracks["audio"].recv(), 3)
                    except (TimeoutError, MediaStreamError):
                        return
                    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                    result["audio"].append((frame.pts, frame.sample_rate, pcm.astype(np.float32)))

            await ws.send(to_pcm16(audio))
            await ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(reader, socket_timeout)
            for _ in range(200):  # both tracks were announced in the answer
                if len(tracks) == 2:
                    break
                await asyncio.sleep(0.05)
            assert set(tracks) == {"video", "audio"}, tracks
            await asyncio.gather(read_video(), read_audio())
        finally:
            reader.cancel()
            await pc.close()
    result["end"] = result["events"][-1]
    return result
