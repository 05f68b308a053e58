from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

from _conformance import (
    MEDIA_DIR,
    MISSING_FIXTURES,
    Conformance,
    conformance_dir,
    conformance_path,
)
from _extras import NO_OFFLINE_FACE, OFFLINE_FACE


@pytest.fixture(scope="session")
def conformance(tmp_path_factory: pytest.TempPathFactory) -> Conformance:
    """The official-release fixtures; skipped (or, in CI, failed) when ../shared is absent."""
    root = conformance_dir()
    if root is None:
        msg = f"conformance {MISSING_FIXTURES} (set TALKINGHEAD_CONFORMANCE_DIR)"
        if os.environ.get("TALKINGHEAD_REQUIRE_CONFORMANCE"):
            pytest.fail(msg)
        pytest.skip(msg)
    return Conformance(root, tmp_path_factory.mktemp("conformance"))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def _fixture_dirs() -> dict[str, str | None]:
    root = conformance_dir()
    return {
        "conformance": None if root is None else str(root),
        "media": str(MEDIA_DIR) if MEDIA_DIR.is_dir() else None,
    }


_CACHE_ROOT: str | None = None

# Without the offline mediapipe face backend (a lean install, or Python 3.13+, which mediapipe
# 0.10.21 has no wheel for) the tests that need it are skipped, saying so. Where it is
# installed (CI) this never acts, so it cannot hide a failure there.


def _needs_offline_face(exc: BaseException) -> bool:
    """Whether `exc` is a test's failure for want of the offline face backend."""
    if isinstance(exc, ModuleNotFoundError) and exc.name == "mediapipe":
        return True
    text = str(exc)
    return (
        "needs mediapipe" in text
        or "offline mediapipe face backend needs" in text
        or (isinstance(exc, AttributeError) and "'solutions'" in text)
        or (isinstance(exc, FileNotFoundError) and "mediapipe/modules" in text)
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    if OFFLINE_FACE or call.excinfo is None:
        return
    report = outcome.get_result()
    if report.failed and _needs_offline_face(call.excinfo.value):
        first = str(call.excinfo.value).strip().splitlines()[:1]
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {NO_OFFLINE_FACE}")
        report.sections.append(("why skipped", first[0] if first else ""))


def pytest_configure(config: pytest.Config) -> None:
    """Tests (and the CLIs they start) cache avatars in a folder of their own, not the user's."""
    global _CACHE_ROOT
    if "TALKINGHEAD_CACHE" not in os.environ:
        _CACHE_ROOT = tempfile.mkdtemp(prefix="talkinghead-test-cache-")
        os.environ["TALKINGHEAD_CACHE"] = _CACHE_ROOT


def pytest_unconfigure(config: pytest.Config) -> None:
    if _CACHE_ROOT is not None:
        shutil.rmtree(_CACHE_ROOT, ignore_errors=True)
        os.environ.pop("TALKINGHEAD_CACHE", None)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI the shared fixtures and media must be there: a silent skip would hide failures."""
    if not os.environ.get("TALKINGHEAD_REQUIRE_CONFORMANCE"):
        return
    missing = [name for name, path in _fixture_dirs().items() if path is None]
    if missing:
        pytest.exit(
            f"required test fixtures missing: {', '.join(missing)} (expected {conformance_path()} "
            f"and {MEDIA_DIR})",
            returncode=3,
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    found = _fixture_dirs()
    return [
        f"{name} fixtures: {path or 'NOT FOUND (their tests will be skipped)'}"
        for name, path in found.items()
    ]


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Say plainly how many tests were skipped for want of ../shared or of the offline face
    backend, and how to fix it."""
    no_face = [
        r for r in terminalreporter.stats.get("skipped", []) if NO_OFFLINE_FACE in str(r.longrepr)
    ]
    if no_face:
        terminalreporter.write_line(
            f"NOTE: {len(no_face)} tests were SKIPPED because {NO_OFFLINE_FACE}; on Python 3.11 "
            'or 3.12: pip install -c constraints.txt -e ".[face]".',
            yellow=True,
            bold=True,
        )
    skipped = [
        r for r in terminalreporter.stats.get("skipped", []) if MISSING_FIXTURES in str(r.longrepr)
    ]
    if skipped:
        terminalreporter.write_line(
            f"NOTE: {len(skipped)} conformance/media tests were SKIPPED because the shared test "
            f"fixtures were not found (expected {conformance_path()} and {MEDIA_DIR}; put the project's "
            "shared/ folder beside the clone, or set TALKINGHEAD_CONFORMANCE_DIR and "
            "TALKINGHEAD_MEDIA_DIR).",
            yellow=True,
            bold=True,
        )
