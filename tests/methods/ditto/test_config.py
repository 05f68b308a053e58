"""Ditto's settings (`methods.ditto.config`): the release config import, unknown settings."""

from __future__ import annotations

import pytest

from talkinghead.methods.ditto.config import DittoConfig, config_from_release


def test_release_config_is_imported() -> None:
    cfg = config_from_release(
        {
            "base_cfg": {},
            "audio2motion_cfg": {},
            "default_kwargs": {
                "sampling_timesteps": 10,
                "overlap_v2": 70,
                "online_mode": True,
                "crop_scale": 2.0,
                "emo": 3,
                "fade_type": "d0",
                "delta_eye_open_n": 0,
                "some_future_key": 1,
            },
        }
    )
    assert cfg.steps == 10 and cfg.online and cfg.online_overlap == 70 and cfg.overlap == 10
    assert cfg.crop.scale == 2.0 and cfg.emotion == 3
    assert cfg.stitch.fade_type == "d0" and cfg.stitch.delta_eye_open_n == 0
    with pytest.raises(TypeError, match="unknown Ditto settings"):
        DittoConfig().replace(stepz=3)
