"""Where a sampler's randomness comes from: one CPU `torch.Generator` per video.

Noise drawn on the CPU generator is the same on every device, so a seed gives the same
video on CPU and GPU (up to the device's arithmetic).
"""

from __future__ import annotations

import secrets

import torch

from talkinghead.errors import TalkingHeadError


def noise_generator(
    seed: int | None = None, generator: torch.Generator | None = None
) -> torch.Generator:
    """``generator`` itself, else a CPU generator seeded with ``seed``, else one with a fresh
    random seed; passing both is refused (which one should win is the caller's bug)."""
    if generator is not None:
        if seed is not None:
            raise TalkingHeadError("pass seed or generator, not both")
        return generator
    return torch.Generator("cpu").manual_seed(secrets.randbits(63) if seed is None else int(seed))


__all__ = ["noise_generator"]
