"""The one moving average of the weights every trainer keeps (talkinghead.training.ema)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from talkinghead.training.ema import EMA


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("scale", torch.full((2,), 0.5))  # persistent, never trained
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # not floating point
        self.register_buffer("table", torch.arange(4.0), persistent=False)


def perturb(net: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_warmup_and_plain_decay_by_hand():
    torch.manual_seed(0)
    net = Net()
    start = net.linear.weight.detach().clone()
    warm, plain = EMA(net, 0.99), EMA(net, 0.99, warmup=False)
    assert warm.current_decay() == pytest.approx(2 / 11) and plain.current_decay() == 0.99
    perturb(net, 1)
    warm.update(net)
    plain.update(net)
    w = net.linear.weight.detach()
    torch.testing.assert_close(warm.shadow["linear.weight"], start + (w - start) * (9 / 11))
    torch.testing.assert_close(plain.shadow["linear.weight"], start + (w - start) * 0.01)
    assert warm.num_updates == 1 and warm.current_decay() == pytest.approx(3 / 12)
    for _ in range(2000):
        warm.update(net)
    assert warm.current_decay() == 0.99  # the warm-up ends at the configured decay


def test_covers_floating_state_and_leaves_the_rest():
    net = Net()
    ema = EMA(net, 0.9)
    assert set(ema.shadow) == {"linear.weight", "linear.bias", "scale"}
    for seed in range(5):
        perturb(net, seed)
        ema.update(net)
    assert torch.equal(ema.shadow["scale"], net.scale)  # an unchanging buffer stays exact
    averaged = ema.averaged(net)
    assert averaged is not net and torch.equal(averaged.linear.weight, ema.shadow["linear.weight"])
    assert not torch.equal(net.linear.weight, averaged.linear.weight)  # the model is untouched
    state = ema.averaged_state_dict(net)
    assert list(state) == list(net.state_dict()) and state["steps"].dtype == torch.long
    other = Net()
    ema.copy_to(other)
    assert torch.equal(other.linear.bias, ema.shadow["linear.bias"])


def test_resume_is_bit_exact():
    torch.manual_seed(0)
    net = Net()
    full = EMA(net, 0.999)
    first = EMA(net, 0.999)
    for seed in range(3):
        perturb(net, seed)
        full.update(net)
        first.update(net)
    saved = {**first.state_dict(), "shadow": {k: v.clone() for k, v in first.shadow.items()}}
    resumed = EMA(Net(), 0.999)
    resumed.load_state_dict(saved)
    for seed in range(3, 6):
        perturb(net, seed)
        full.update(net)
        resumed.update(net)
    assert resumed.num_updates == full.num_updates == 6
    for k in full.shadow:
        assert torch.equal(resumed.shadow[k], full.shadow[k])


def test_load_average_continues_from_saved_weights():
    net = Net()
    ema = EMA(net, 0.5, warmup=False)
    perturb(net, 0)
    ema.update(net)
    again = EMA(Net(), 0.5, warmup=False)
    again.load_average(ema.averaged_state_dict(net))
    for k in ema.shadow:
        assert torch.equal(again.shadow[k], ema.shadow[k])
    with pytest.raises(KeyError, match="lack"):
        again.load_average({"linear.weight": net.linear.weight})
    with pytest.raises(ValueError, match="decay"):
        EMA(net, 1.5)
