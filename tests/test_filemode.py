"""Files published by temp file + rename get the modes a plain open()/mkdir() would give."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

import pytest
from torch import nn

from talkinghead.eval.weights import WEIGHT_FILES, WeightFile, WeightResolver
from talkinghead.filemode import current_umask, default_mode, set_default_mode
from talkinghead.methods.difftalk.checkpoint import save_component


@pytest.fixture(params=[0o022, 0o027, 0o002], ids=["umask022", "umask027", "umask002"])
def umask(request) -> int:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_mode_matches_open_and_mkdir(tmp_path, umask):
    assert current_umask() == umask
    plain_file, plain_dir = tmp_path / "plain.txt", tmp_path / "plain"
    plain_file.write_text("x")
    plain_dir.mkdir()
    assert default_mode() == mode(plain_file) == 0o666 & ~umask
    assert default_mode(directory=True) == mode(plain_dir) == 0o777 & ~umask
    assert current_umask() == umask  # reading it left it unchanged

    fd, name = tempfile.mkstemp(dir=tmp_path)
    set_default_mode(fd)
    os.close(fd)
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    set_default_mode(folder, directory=True)
    assert mode(Path(name)) == mode(plain_file) and mode(folder) == mode(plain_dir)


def test_checkpoints_and_downloads_get_plain_modes(tmp_path, umask, monkeypatch):
    expected = 0o666 & ~umask
    saved = save_component(tmp_path / "ckpt" / "ldm.pt", "ldm", nn.Linear(2, 2), {})
    assert mode(saved) == expected

    payload = tmp_path / "src.bin"
    payload.write_bytes(b"weights!")
    name = f"t-{hashlib.sha256(b'weights!').hexdigest()[:8]}.pth"
    monkeypatch.setitem(WEIGHT_FILES, "t", WeightFile("t", (name,), payload.as_uri(), "test"))
    resolver = WeightResolver(cache=tmp_path / "weights", download=True)
    assert mode(resolver.resolve("t")) == expected
