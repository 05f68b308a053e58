"""Third-party log output kept off the terminal unless --verbose (talkinghead.commands.logs)."""

from __future__ import annotations

import logging
import os

from talkinghead.commands.logs import third_party_logs


def test_hub_retry_warnings_are_kept_out_unless_verbose(monkeypatch) -> None:
    # huggingface_hub sets its own logger level when imported, so the env var must be set too:
    # otherwise an unreachable hub prints ten retry lines before our one-line error.
    monkeypatch.delenv("HF_HUB_VERBOSITY", raising=False)
    with third_party_logs(verbose=False):
        assert os.environ["HF_HUB_VERBOSITY"] == "error"
        assert logging.getLogger("huggingface_hub").level == logging.ERROR


def test_verbose_leaves_the_hub_alone(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_VERBOSITY", raising=False)
    with third_party_logs(verbose=True):
        assert "HF_HUB_VERBOSITY" not in os.environ
