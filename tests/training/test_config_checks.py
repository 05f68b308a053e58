"""Every trainer's config refuses bad shared fields in one line, before any data is read."""

from __future__ import annotations

from dataclasses import replace

import pytest

from talkinghead.errors import SettingsError
from talkinghead.methods.ditto.train import PRESETS
from talkinghead.training.config_checks import check_train_fields


def _configs():
    from talkinghead.methods.dithead.train import DiTTrainConfig, VQTrainConfig

    configs = {"ditto": PRESETS["tiny"], "dithead-vq": VQTrainConfig(), "dit": DiTTrainConfig()}
    try:  # DiffTalk's trainer needs the latent extra (diffusers)
        from talkinghead.methods.difftalk.train import AutoencoderTrainConfig, LdmTrainConfig
    except ImportError:
        return configs
    return {**configs, "difftalk-ae": AutoencoderTrainConfig(), "ldm": LdmTrainConfig()}


CONFIGS = _configs()
# (field, bad value, what the message says): once a traceback from deep in a run.
BAD = [
    ("lr", -1.0, "lr must be a positive number"),
    ("lr", 0.0, "lr must be a positive number"),
    ("lr", float("nan"), "lr must be a positive number"),
    ("seed", -1, "seed must be a whole number from 0 to 2^32-1"),
    ("seed", 2**32, "seed must be a whole number from 0 to 2^32-1"),
    ("batch_size", 0, "batch_size must be a whole number >= 1"),
    ("mixed_precision", "fp8", "mixed_precision must be one of no, fp16, bf16"),
    ("sample_seconds", 0.0, "sample_seconds must be a positive number"),
    ("holdout", -1, "holdout must be a whole number >= 0"),
]


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize(("field", "value", "message"), BAD)
def test_every_trainer_refuses_a_bad_shared_field(name, field, value, message) -> None:
    with pytest.raises(SettingsError, match="^" + message.replace("^", r"\^")) as info:
        replace(CONFIGS[name], **{field: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_defaults_pass(name) -> None:
    check_train_fields(CONFIGS[name])


def test_fields_a_trainer_has_are_checked_and_others_skipped() -> None:
    ldm = CONFIGS.get("ldm")
    if ldm is not None:
        with pytest.raises(SettingsError, match="grad_clip must be a number >= 0"):
            replace(ldm, grad_clip=-0.1)
        with pytest.raises(
            SettingsError, match="sample_steps must be a whole number from 1 to 1000"
        ):
            replace(ldm, sample_steps=1001)
    with pytest.raises(SettingsError, match=r"ema_decay must be in \[0, 1\)"):
        replace(CONFIGS["dit"], ema_decay=1.0)
    # A DiT trained on a shorter schedule samples at most that many steps.
    with pytest.raises(SettingsError, match="from 1 to 100, got 200"):
        replace(CONFIGS["dit"], n_timestep=100, sample_steps=200)
    # DiT-Head's log_every and save_every 0 switch the loss lines and the periodic saves
    # off; Ditto's log_every must be >= 1, and so must DiffTalk's save_every (0 once
    # stopped a run at its first step with a ZeroDivisionError).
    replace(CONFIGS["dithead-vq"], log_every=0, save_every=0)
    if "difftalk-ae" in CONFIGS:
        with pytest.raises(SettingsError, match="save_every must be a whole number >= 1"):
            replace(CONFIGS["difftalk-ae"], save_every=0)
    with pytest.raises(SettingsError, match="log_every must be a whole number >= 1"):
        replace(CONFIGS["ditto"], log_every=0)
    with pytest.raises(ValueError, match="a loss weight must be >= 0"):
        replace(CONFIGS["ditto"], part_weights={"exp": -1.0})
