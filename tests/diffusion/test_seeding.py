"""noise_generator: one CPU generator per video, from a seed, a given generator or neither."""

from __future__ import annotations

import pytest
import torch

from talkinghead.diffusion.seeding import noise_generator
from talkinghead.errors import TalkingHeadError


def test_a_seed_draws_what_a_generator_seeded_with_it_draws() -> None:
    a = torch.randn(4, generator=noise_generator(seed=7))
    b = torch.randn(4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert noise_generator(seed=7).device.type == "cpu"


def test_a_given_generator_is_used_itself() -> None:
    g = torch.Generator().manual_seed(1)
    assert noise_generator(generator=g) is g


def test_neither_gives_a_fresh_seed_each_time() -> None:
    assert noise_generator().initial_seed() != noise_generator().initial_seed()


def test_both_are_refused() -> None:
    with pytest.raises(TalkingHeadError, match="not both"):
        noise_generator(seed=1, generator=torch.Generator())
