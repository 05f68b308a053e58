from __future__ import annotations

import os

import pytest
import torch

from _conformance import Conformance, conformance_dir


@pytest.fixture(scope="session")
def conformance(tmp_path_factory: pytest.TempPathFactory) -> Conformance:
    """The official-release fixtures; skipped (or, in CI, failed) when ../shared is absent."""
    root = conformance_dir()
    if root is None:
        msg = "conformance fixtures not found (set TALKINGHEAD_CONFORMANCE_DIR)"
        if os.environ.get("TALKINGHEAD_REQUIRE_CONFORMANCE"):
            pytest.fail(msg)
        pytest.skip(msg)
    return Conformance(root, tmp_path_factory.mktemp("conformance"))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI the shared fixtures and media must be there: a silent skip would hide failures."""
    if not os.environ.get("TALKINGHEAD_REQUIRE_CONFORMANCE"):
        return
    from _conformance import REPO_ROOT

    media = os.environ.get("TALKINGHEAD_MEDIA_DIR", str(REPO_ROOT.parent / "shared" / "media"))
    missing = [p for p in (conformance_dir(), media) if p is None or not os.path.isdir(p)]
    if missing:
        pytest.exit(f"required test fixtures missing: {missing}", returncode=3)
