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


def test_choose_holdout_defaults_resume_and_refusals():
    import pytest

    from talkinghead.errors import SettingsError
    from talkinghead.training.samples import choose_holdout, resolve_sample_every

    names = ["a", "b", "c"]
    assert resolve_sample_every(None, "tiny") == 0 and resolve_sample_every(None, "dit-l/2") == 5000
    assert resolve_sample_every(7, "tiny") == 7
    (held,) = choose_holdout(names, None, sampling=True, seed=3)  # one by default when sampling
    assert held == split_holdout(names, 1, seed=3)[1][0]
    assert choose_holdout(names, None, sampling=False) == []
    assert choose_holdout(["a"], None, sampling=True) == []  # nothing left to train on
    assert choose_holdout(names, 2, sampling=False, seed=1) == split_holdout(names, 2, seed=1)[1]
    # A resume keeps what its checkpoint held out, and refuses another explicit split.
    assert choose_holdout(names, None, sampling=True, recorded=["c", "a"]) == ["a", "c"]
    assert choose_holdout(names, None, sampling=True, recorded=[]) == []
    with pytest.raises(SettingsError, match="resume with --holdout 0"):
        choose_holdout(names, 1, sampling=True, recorded=[])
    with pytest.raises(SettingsError, match="leaves no clip to train on"):
        choose_holdout(names, 3, sampling=True)
    with pytest.raises(SettingsError, match=">= 0"):
        choose_holdout(names, -1, sampling=True)
