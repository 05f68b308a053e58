"""Exceptions for user errors: the CLI prints their message on one line, without a traceback."""

from __future__ import annotations


class TalkingHeadError(Exception):
    """Base class of every error caused by the user's input or files."""


class CheckpointError(TalkingHeadError):
    """A checkpoint file is missing, unreadable, or not the network it should be."""


class NoFaceError(TalkingHeadError):
    """No face was found in a source frame."""


class MediaError(TalkingHeadError):
    """A source image/video or an audio file is missing, unreadable or unsupported."""


class SettingsError(TalkingHeadError):
    """An option value is invalid (unknown name, out of range, not available here)."""
