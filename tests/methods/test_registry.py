"""The methods registry: every entry point a `Method` line names exists with its shape."""

from __future__ import annotations

import inspect

import pytest

from _extras import skip_without_packages_of
from talkinghead.errors import SettingsError, TalkingHeadError
from talkinghead.methods import METHODS, get_method


@pytest.mark.parametrize("name", list(METHODS))
def test_named_entry_points_exist(name: str) -> None:
    skip_without_packages_of(name)
    method = METHODS[name]
    for kind in ("generate", "pipeline", "prepare", "commands"):
        if getattr(method, kind) is None:
            with pytest.raises(TalkingHeadError, match=f"{name!r} offers no"):
                method.entry_point(kind)
            continue
        assert callable(method.entry_point(kind)), kind
    if method.pipeline is not None:
        cls = method.entry_point("pipeline")
        assert isinstance(cls.LOAD_OPTIONS, tuple)
        assert "device" in inspect.signature(cls.from_pretrained).parameters
        params = inspect.signature(cls.generate).parameters
        assert {"seed", "steps", "generator", "progress"} <= set(params)
        assert params["output"].default is None  # None: the frames back, as a VideoClip


def test_the_latent_methods_keep_a_pipeline_loaded() -> None:
    assert METHODS["dithead"].pipeline and METHODS["difftalk"].pipeline


def test_an_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(SettingsError, match="use one of ditto, dithead, difftalk, liveportrait"):
        get_method("wav2lip")
