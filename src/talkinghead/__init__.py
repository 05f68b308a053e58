"""talkinghead: diffusion-based, audio-driven talking-head video."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("talkinghead")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
