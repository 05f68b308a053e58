"""The package root: its version and the entry points it exports lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import talkinghead


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, talkinghead; talkinghead.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the CLI's start stays fast


@pytest.mark.parametrize("name", talkinghead.__all__)
def test_each_export_is_the_class_of_its_home_module(name: str) -> None:
    value = getattr(talkinghead, name)
    if name != "__version__":
        assert value.__name__ == name and value.__module__.startswith("talkinghead.")


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Wav2LipPipeline'"):
        talkinghead.Wav2LipPipeline  # noqa: B018
