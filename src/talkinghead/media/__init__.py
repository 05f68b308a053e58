"""Media I/O: reading source images/videos, writing videos. Nothing here knows about faces or models."""
