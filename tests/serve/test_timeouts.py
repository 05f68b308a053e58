"""`within`: a time limit that never swallows a cancellation (Python 3.11's wait_for does)."""

from __future__ import annotations

import asyncio

import pytest

from talkinghead.serve.timeouts import within


async def _instant() -> int:
    return 1


async def _sender() -> str:
    # The shape of a session's frame sender: a loop of quick, time-limited sends.
    for _ in range(1000):
        await within(asyncio.ensure_future(_instant()), 5)
    return "ran on"


@pytest.mark.parametrize("ticks", range(1, 8))
def test_a_cancelled_sender_stops_whenever_the_cancel_lands(ticks: int) -> None:
    async def trial() -> str:
        task = asyncio.create_task(_sender())
        for _ in range(ticks):  # land the cancel at each point of a send's life
            await asyncio.sleep(0)
        task.cancel()
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(trial()) == "cancelled"


def test_the_limit_raises_the_builtin_timeout_error() -> None:
    async def slow() -> None:
        await asyncio.sleep(10)

    async def trial() -> None:
        await within(slow(), 0.01)

    with pytest.raises(TimeoutError):
        asyncio.run(trial())


def test_no_limit_and_a_result() -> None:
    assert asyncio.run(within(_instant(), None)) == 1
