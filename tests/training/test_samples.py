"""PeriodicSamples and split_holdout."""

from __future__ import annotations

from talkinghead.training.samples import PeriodicSamples, split_holdout


def test_samples_are_due_every_n_steps_and_atomic(tmp_path):
    calls = []

    def render(step, path):
        calls.append(step)
        if step == 4:
            path.write_bytes(b"half")
            raise RuntimeError("renderer broke")
        path.write_bytes(b"sample %d" % step)

    hook = PeriodicSamples(tmp_path, render, every=2, suffix=".npz")
    written = [hook.maybe(step) for step in range(1, 7)]
    assert calls == [2, 4, 6]
    assert written[1].name == "step_00000002.npz" and written[3] is None  # failure: logged
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_00000002.npz",
        "step_00000006.npz",
    ]  # nothing half-written is left
    assert not PeriodicSamples(tmp_path, render, every=0).due(2)
    assert not PeriodicSamples(tmp_path, None, every=2).due(2)


def test_split_holdout():
    train, held = split_holdout(list(range(10)), 2, seed=1)
    assert len(held) == 2 and sorted(train + held) == list(range(10))
    assert split_holdout(list(range(10)), 2, seed=1) == (train, held)
    assert split_holdout([1], 3) == ([1], [])  # never the whole set
