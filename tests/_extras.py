"""Skip marks for tests of a method whose packages (an optional extra) are not installed.

CI installs `dev`, which brings every extra, so these skip only in a smaller environment;
`test_methods_check_their_packages` covers the error a user without the extra gets."""

from __future__ import annotations

import pytest

from talkinghead.face.mediapipe_backend import offline_backend_available
from talkinghead.methods import METHODS

OFFLINE_FACE = offline_backend_available()
NO_OFFLINE_FACE = "the offline mediapipe face backend is not installed (mediapipe 0.10.21)"
# For tests whose check comes after a face analysis: without the offline backend they would
# fail for that reason, not the one they test (conftest turns the plain cases into skips).
needs_offline_face = pytest.mark.skipif(not OFFLINE_FACE, reason=NO_OFFLINE_FACE)


def needs_packages_of(method: str) -> pytest.MarkDecorator:
    """Skip unless the packages `method` declares (`Method.requires`) are installed."""
    m = METHODS[method]
    missing = m.missing_packages()
    return pytest.mark.skipif(
        bool(missing), reason=f"{' and '.join(missing)} not installed (the {m.extra} extra)"
    )


def skip_without_packages_of(method: str) -> None:
    """Skip the calling test where `method`'s packages are missing (its error comes first)."""
    m = METHODS.get(method)
    missing = m.missing_packages() if m is not None else []
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (the {m.extra} extra)")
