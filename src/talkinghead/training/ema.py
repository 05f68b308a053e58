"""The exponential moving average of a model's weights, one for every trainer.

The average holds a float32 copy of each floating-point entry of the model's
state_dict (parameters and persistent buffers; a buffer that never changes stays
exactly itself). After `n` updates the decay is ``min(decay, (1 + n) / (10 + n))``
with `warmup` (CompVis latent diffusion, used by Ditto and DiffTalk), so the early
average follows the weights instead of the random initialisation; DiT-Head uses the
plain decay. `state_dict` / `load_state_dict` carry the average and its update count,
so a resumed run continues bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class EMA:
    """Moving average of `module`'s floating-point state, started from its current weights."""

    def __init__(self, module: nn.Module, decay: float, *, warmup: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"the EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone().float()
            for k, v in module.state_dict().items()
            if v.is_floating_point()
        }
        self._bound: tuple[int, list[torch.Tensor], list[torch.Tensor]] | None = None

    def _pairs(self, module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # The module's tensors are the same objects every step: look them up once.
        if self._bound is None or self._bound[0] != id(module):
            live = module.state_dict(keep_vars=True)
            keys = [k for k in self.shadow if k in live]
            self._bound = (id(module), [self.shadow[k] for k in keys], [live[k] for k in keys])
        return self._bound[1], self._bound[2]

    def current_decay(self) -> float:
        """The decay the next `update` applies."""
        if not self.warmup:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards `module`'s weights (call after each optimiser step)."""
        d = self.current_decay()
        self.num_updates += 1
        shadow, live = self._pairs(module)
        torch._foreach_lerp_(shadow, [t.detach().float() for t in live], 1 - d)

    def averaged_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """`module`'s state_dict with the averaged values, in the module's dtypes."""
        return {
            k: self.shadow[k].to(v.dtype) if k in self.shadow else v
            for k, v in module.state_dict().items()
        }

    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into `module`."""
        module.load_state_dict(self.averaged_state_dict(module))

    def averaged(self, module: nn.Module) -> nn.Module:
        """A copy of `module` holding the averaged weights (`module` is left as it is)."""
        clone = copy.deepcopy(module)
        self.copy_to(clone)
        return clone

    def load_average(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Continue from averaged weights saved as a model state_dict (no update count)."""
        missing = [k for k in self.shadow if k not in weights]
        if missing:
            raise KeyError(f"the saved averaged weights lack {missing[:5]}")
        with torch.no_grad():
            for k, v in self.shadow.items():
                v.copy_(weights[k])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.num_updates = int(state["num_updates"])
        with torch.no_grad():
            for k, v in state["shadow"].items():
                self.shadow[k].copy_(v)


__all__ = ["EMA"]
