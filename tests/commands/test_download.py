"""`talkinghead download` against a fake model hub (a mocked snapshot_download), and --revision."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _conformance import MEDIA_DIR, skip_missing
from _tiny_release import make_release
from talkinghead import cli
from talkinghead.errors import CheckpointError
from talkinghead.methods.ditto import checkpoints as ck

hub = pytest.importorskip("huggingface_hub")
import huggingface_hub.constants as hub_constants  # noqa: E402  (submodules load lazily)
import huggingface_hub.utils as hub_utils  # noqa: E402
from huggingface_hub.errors import LocalEntryNotFoundError  # noqa: E402

PATTERNS = ["ditto_pytorch/**", "ditto_cfg/**"]
REPO_DIR = "models--digital-avatar--ditto-talkinghead"


class FakeHub:
    """snapshot_download that checks what it is asked for and writes the release's tree."""

    def __init__(self, revision: str = ck.DEFAULT_REVISION, error: BaseException | None = None):
        self.revision, self.error = revision, error
        self.calls: list[dict] = []

    def __call__(self, repo_id: str, **kwargs) -> str:
        self.calls.append({"repo_id": repo_id, **kwargs})
        assert repo_id == "digital-avatar/ditto-talkinghead"
        assert kwargs["revision"] == self.revision
        assert kwargs["allow_patterns"] == PATTERNS  # a list, both folders, nothing else
        assert not kwargs.get("local_files_only")
        if self.error is not None:
            raise self.error
        if kwargs.get("local_dir") is not None:
            target = Path(kwargs["local_dir"])
        else:  # the cache layout: <cache>/models--owner--name/snapshots/<commit>/
            cache = Path(kwargs.get("cache_dir") or hub_constants.HF_HUB_CACHE)
            target = cache / REPO_DIR / "snapshots" / ck.DEFAULT_REVISION
            if self.revision != ck.DEFAULT_REVISION:
                (cache / REPO_DIR / "refs").mkdir(parents=True, exist_ok=True)
                (cache / REPO_DIR / "refs" / self.revision).write_text(ck.DEFAULT_REVISION)
        make_release(target)
        return str(target)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`talkinghead ARGS` in this process (so the fake hub is used): exit code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["talkinghead", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The default Hugging Face cache, moved into tmp_path."""
    path = tmp_path / "hf-cache"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(path))
    return path


@pytest.fixture(autouse=True)
def _restore_progress_bars():
    yield
    hub_utils.enable_progress_bars()  # the command sets this process-wide state


def test_download_into_a_folder(tmp_path, monkeypatch, capsys, cache):
    fake = FakeHub()
    monkeypatch.setattr(hub, "snapshot_download", fake)
    target = tmp_path / "checkpoints"
    code, out, err = run_cli(monkeypatch, capsys, "download", "--dir", str(target))
    assert code == 0, err
    assert out == f"{target}\n"  # the path alone on stdout, for scripts
    assert [c.get("local_dir") for c in fake.calls] == [str(target)]
    assert "cache_dir" not in fake.calls[0]
    assert f"digital-avatar/ditto-talkinghead@{ck.DEFAULT_REVISION}" in err
    assert f"talkinghead generate --checkpoints {target}" in err
    assert ck.resolve_checkpoints(target).missing() == []
    assert not cache.exists()


def test_download_into_the_cache_by_default(monkeypatch, capsys, cache):
    real_snapshot_download = hub.snapshot_download
    fake = FakeHub()
    monkeypatch.setattr(hub, "snapshot_download", fake)
    code, out, err = run_cli(monkeypatch, capsys, "download")
    assert code == 0, err
    snapshot = cache / REPO_DIR / "snapshots" / ck.DEFAULT_REVISION
    assert out == f"{snapshot}\n"
    assert "local_dir" not in fake.calls[0] and "cache_dir" not in fake.calls[0]
    assert f"into {cache}" in err and "finds it in the cache" in err
    # What generate does next, with the real hub's offline cache lookup: no --checkpoints needed.
    monkeypatch.setattr(hub, "snapshot_download", real_snapshot_download)
    assert ck.resolve_checkpoints(download=False).root == snapshot


def test_download_a_revision(monkeypatch, capsys, cache):
    monkeypatch.setattr(hub, "snapshot_download", FakeHub(revision="v2"))
    code, _, err = run_cli(monkeypatch, capsys, "download", "--revision", "v2")
    assert code == 0, err
    assert "digital-avatar/ditto-talkinghead@v2" in err
    assert "talkinghead generate --revision v2 finds it" in err


def test_progress_bars_on_unless_quiet(tmp_path, monkeypatch, capsys, cache):
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None:
        pytest.skip("HF_HUB_DISABLE_PROGRESS_BARS is set and decides")
    seen: list[bool] = []

    def fake(repo_id, **kwargs):
        seen.append(hub_utils.are_progress_bars_disabled())
        return FakeHub()(repo_id, **kwargs)

    monkeypatch.setattr(hub, "snapshot_download", fake)
    hub_utils.disable_progress_bars()  # as a library using huggingface_hub might have done
    assert run_cli(monkeypatch, capsys, "download", "--dir", str(tmp_path / "a"))[0] == 0
    assert run_cli(monkeypatch, capsys, "download", "-q", "--dir", str(tmp_path / "b"))[0] == 0
    assert seen == [False, True]


def test_offline_is_one_error_line(tmp_path, monkeypatch, capsys, cache):
    offline = LocalEntryNotFoundError(
        "Got: ConnectError: [Errno -3] Temporary failure in name resolution\n"
        "An error happened while trying to locate the files on the Hub, and we cannot find the "
        "appropriate snapshot folder for the specified revision on the local disk."
    )
    monkeypatch.setattr(hub, "snapshot_download", FakeHub(error=offline))
    code, out, err = run_cli(monkeypatch, capsys, "download", "--dir", str(tmp_path / "ck"))
    assert code == 1 and out == ""
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and err.endswith(error_lines[0] + "\n")
    assert "model hub cannot be reached" in error_lines[0]
    assert "LocalEntryNotFoundError: Got: ConnectError" in error_lines[0]


def test_offline_for_real(tmp_path):
    # No mock: the installed huggingface_hub in offline mode, in a fresh process.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "talkinghead", "download", "--dir", str(tmp_path / "ck")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: downloading digital-avatar/ditto-talkinghead@")
    assert "failed: the model hub cannot be reached" in last


MEDIA = MEDIA_DIR


@pytest.mark.parametrize(("args", "revision"), [((), None), (("--revision", "v2"), "v2")])
def test_generate_passes_revision(tmp_path, monkeypatch, capsys, args, revision):
    portrait, speech = MEDIA / "ditto_example_face.jpg", MEDIA / "ditto_example_speech.wav"
    if not portrait.is_file():
        skip_missing(f"{MEDIA}")
    from talkinghead.methods.ditto.pipeline import DittoPipeline

    received: dict = {}

    def from_pretrained(checkpoints=None, **kwargs):
        received.update(kwargs, checkpoints=checkpoints)
        raise CheckpointError("stopped before loading")

    monkeypatch.setattr(DittoPipeline, "from_pretrained", from_pretrained)
    out = str(tmp_path / "o.mp4")
    code, _, err = run_cli(
        monkeypatch, capsys, "generate", "-s", str(portrait), "-a", str(speech), "-o", out, *args
    )
    assert code == 1 and "stopped before loading" in err
    assert received["checkpoints"] is None and received["revision"] == revision


def test_a_dir_that_is_a_file_is_refused_before_the_hub(tmp_path, monkeypatch, capsys, cache):
    monkeypatch.setattr(hub, "snapshot_download", FakeHub(error=AssertionError("no hub call")))
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, out, err = run_cli(monkeypatch, capsys, "download", "--dir", str(target))
    assert code == 1 and out == "" and target.read_text() == "mine"
    assert err.strip().splitlines()[-1].startswith(f"error: --dir {target}: a file, not a folder")
