"""The concurrent stage runner: order, backpressure, failure propagation, no orphan threads."""

from __future__ import annotations

import threading
import time

import pytest

from talkinghead.stages import PipelineStopped, Stage, StageRunner


def _stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("stage-")]


def test_items_flow_in_order_with_finish() -> None:
    held: list[int] = []

    def window(x: int) -> list[int]:
        held.append(x)
        if len(held) == 3:
            out = list(held)
            held.clear()
            return out
        return []

    stages = [
        Stage("double", lambda x: [2 * x]),
        Stage("window", window, finish=lambda: list(held)),
        Stage("expand", lambda x: [x, x + 1]),
    ]
    with StageRunner(stages, maxsize=2) as runner:
        feeder = threading.Thread(
            target=lambda: ([runner.put(i) for i in range(10)], runner.close())
        )
        feeder.start()
        out = list(runner.results())
        feeder.join()
    assert out == [v for i in range(10) for v in (2 * i, 2 * i + 1)]
    assert not _stage_threads()


def test_backpressure_bounds_the_queues() -> None:
    in_flight = []
    lock = threading.Lock()
    count = {"n": 0}

    def produce(x: int) -> list[int]:
        with lock:
            count["n"] += 1
        return [x]

    def slow(x: int) -> list[int]:
        time.sleep(0.002)
        with lock:
            in_flight.append(count["n"] - x)
        return [x]

    with StageRunner([Stage("produce", produce), Stage("slow", slow)], maxsize=2) as runner:
        threading.Thread(
            target=lambda: ([runner.put(i) for i in range(50)], runner.close())
        ).start()
        assert list(runner.results()) == list(range(50))
    # The producer never runs more than a few items ahead of the slow consumer.
    assert max(in_flight) <= 2 * 2 + 3


@pytest.mark.parametrize("failing", ["first", "middle", "last", "finish"])
def test_a_failing_stage_stops_everything_and_raises(failing: str) -> None:
    def boom(x: int) -> list[int]:
        if x == 5:
            raise ValueError(f"boom in {failing}")
        return [x]

    def ok(x: int) -> list[int]:
        return [x]

    def bad_finish() -> list[int]:
        raise ValueError("boom in finish")

    stages = [
        Stage("first", boom if failing == "first" else ok),
        Stage(
            "middle",
            boom if failing == "middle" else ok,
            finish=bad_finish if failing == "finish" else None,
        ),
        Stage("last", boom if failing == "last" else ok),
    ]
    start = time.monotonic()
    with pytest.raises(ValueError, match="boom in"), StageRunner(stages, maxsize=1) as runner:
        for i in range(1000):
            runner.put(i)
        runner.close()
        for _ in runner.results():
            pass
    assert time.monotonic() - start < 10
    assert not _stage_threads()


def test_caller_exception_aborts_the_threads() -> None:
    with pytest.raises(KeyError), StageRunner([Stage("slow", lambda x: [x])], maxsize=1) as runner:
        runner.put(1)
        raise KeyError("caller failed")
    assert not _stage_threads()


def test_poll_returns_what_is_ready_and_put_after_stop_raises() -> None:
    with StageRunner([Stage("id", lambda x: [x])]) as runner:
        runner.put(1)
        deadline = time.monotonic() + 5
        got: list[int] = []
        while not got and time.monotonic() < deadline:
            got = runner.poll()
        assert got == [1]
        runner.abort()
        with pytest.raises(PipelineStopped):
            runner.put(2)
    assert not _stage_threads()
