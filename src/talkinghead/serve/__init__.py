"""Real-time serving: `talkinghead serve` (FastAPI + uvicorn), its protocol and client.

Speech streams in over a WebSocket as PCM16 16 kHz; JPEG frames stream back as they
are rendered. See `docs/serving.md`.
"""

from talkinghead.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
