"""build_accelerator honours the launcher's precision; per-rank state makes resume exact."""

from __future__ import annotations

import textwrap

import pytest
import torch

from _accelerate_launch import launch
from talkinghead.training.distributed import (
    load_rank_state,
    resolve_mixed_precision,
    save_rank_state,
)


def test_precision_comes_from_the_launcher_unless_given(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_mixed_precision(None) == "no"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_mixed_precision(None) == "bf16"
    assert resolve_mixed_precision("fp16") == "fp16"
    with pytest.raises(ValueError, match="mixed_precision"):
        resolve_mixed_precision("fp8")


def test_rank_state_round_trip(tmp_path):
    g = torch.Generator().manual_seed(3)
    save_rank_state(tmp_path, 1, {"noise": g}, extra={"step": 7})
    expected = (torch.rand(3), torch.rand(2, generator=g))
    torch.manual_seed(99)
    g.manual_seed(99)
    assert load_rank_state(tmp_path, 1, {"noise": g}) == {"step": 7}
    assert torch.equal(torch.rand(3), expected[0]) and torch.equal(
        torch.rand(2, generator=g), expected[1]
    )
    with pytest.raises(FileNotFoundError, match="rank 0"):
        load_rank_state(tmp_path, 0)


SCRIPT = """
import sys, torch
from pathlib import Path
from talkinghead.training.distributed import (
    build_accelerator, end_training, load_rank_state, save_rank_state,
)

# Runs of (out, stop, fresh|resume), one after another in this process.
args = sys.argv[1:]
for out, stop, mode in zip(args[::3], args[1::3], args[2::3]):
    out, stop, resume = Path(out), int(stop), mode == "resume"
    acc = build_accelerator()
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net, opt = acc.prepare(net, opt)
    rank_noise = torch.Generator().manual_seed(1000 + acc.process_index)
    step = 0
    if resume:
        acc.load_state(str(out / "state"))
        step = load_rank_state(out / "state", acc.process_index, {"noise": rank_noise})["step"]
    while step < stop:
        # Each rank draws its own batch from the global RNG and its own generator.
        x = torch.randn(8, 4) + torch.rand(8, 4, generator=rank_noise)
        loss = (net(x) - x.sum(1, keepdim=True)).pow(2).mean()
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        step += 1
    acc.save_state(str(out / "state"))
    save_rank_state(out / "state", acc.process_index, {"noise": rank_noise}, extra={"step": step})
    if acc.is_main_process:
        torch.save(acc.unwrap_model(net).state_dict(), out / "weights.pt")
        (out / "info.txt").write_text(f"{acc.num_processes} {acc.mixed_precision}")
net = opt = None  # as the trainers do: a DDP wrapper alive at exit may abort the process
end_training(acc)
"""


def test_two_process_resume_is_exact_and_precision_is_the_launchers(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "straight").mkdir()
    (tmp_path / "split").mkdir()
    # The two fresh runs share a launch; the resume is a launch of its own, so it starts
    # from nothing but what the split run saved.
    for runs in ([tmp_path / "straight", 6, "fresh", tmp_path / "split", 3, "fresh"],
                 [tmp_path / "split", 6, "resume"]):  # fmt: skip
        run = launch([script, *runs], module=False, mixed_precision="bf16", timeout=180)
        assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "straight" / "info.txt").read_text() == "2 bf16"
    a = torch.load(tmp_path / "straight" / "weights.pt")
    b = torch.load(tmp_path / "split" / "weights.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
