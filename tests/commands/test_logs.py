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


# Commands that load face models (mediapipe, TFLite), with arguments that stop them at
# their first check, after the logs are set up.
FACE_MODEL_COMMANDS = {
    "serve": ("talkinghead.commands.serve", ["serve", "--avatar", "{tmp}"]),
    "app": ("talkinghead.commands.app", ["app", "--checkpoints", "{tmp}/none"]),
    "prepare-data": ("talkinghead.commands.data", ["prepare-data", "{tmp}/none", "{tmp}/out"]),
    "animate": (
        "talkinghead.methods.liveportrait.commands",
        [
            "animate",
            "-s",
            "{tmp}/none.jpg",
            "-d",
            "{tmp}/none.mp4",
            "-o",
            "{tmp}/o.mp4",
            "-c",
            "{tmp}",
        ],
    ),
}


def _invoke_recording_logs(monkeypatch, tmp_path, name: str, extra: list[str]) -> list[bool]:
    import contextlib
    import importlib

    from typer.testing import CliRunner

    from talkinghead.cli import app

    module_name, args = FACE_MODEL_COMMANDS[name]
    module = importlib.import_module(module_name)
    calls: list[bool] = []

    @contextlib.contextmanager
    def recording(verbose: bool):
        calls.append(verbose)
        yield

    monkeypatch.setattr(module, "third_party_logs", recording)
    CliRunner().invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args] + extra)
    return calls


def test_commands_that_load_face_models_keep_their_logs_out_unless_verbose(
    monkeypatch, tmp_path
) -> None:
    """serve, app, animate and prepare-data printed mediapipe's and TFLite's native log
    lines above their own (generate and batch did not); they now take --verbose too."""
    for name in FACE_MODEL_COMMANDS:
        assert _invoke_recording_logs(monkeypatch, tmp_path, name, []) == [False], name
        assert _invoke_recording_logs(monkeypatch, tmp_path, name, ["--verbose"]) == [True], name


def test_training_log_lines_print_above_a_live_bar_not_inside_it() -> None:
    """train-dithead/train-difftalk's loss lines went through a plain stream handler, which
    wrote at the end of the bar's line on a terminal ("... 14/20 0:00:02autoencoder step 15")."""
    import io
    import logging
    import re

    from rich.console import Console
    from rich.progress import Progress

    from talkinghead.commands.logs import log_lines_through

    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=60)
    logger = logging.getLogger("talkinghead")
    before = (logger.level, logger.propagate, list(logger.handlers))
    with Progress(console=console, auto_refresh=False) as bar, log_lines_through(bar.console):
        bar.add_task("training", total=20, completed=14)
        bar.refresh()
        logging.getLogger("talkinghead.methods.x").info("step 15/20  loss 0.73")
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", stream.getvalue())
    lines = [line.split("\r")[-1] for line in text.split("\n")]
    assert "step 15/20  loss 0.73" in lines  # a line of its own
