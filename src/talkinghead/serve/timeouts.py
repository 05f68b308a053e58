"""Awaiting with a time limit without losing a cancellation.

Python 3.11's `asyncio.wait_for` returns the result when the awaited call has just finished
as the waiting task is cancelled: the cancellation is dropped (CPython gh-86296, fixed in
3.12). A session's frame sender cancelled that way kept sending for good after its
receiver had closed the session. `asyncio.timeout` keeps the cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """`await awaitable`, raising `TimeoutError` after `seconds` (None: no limit)."""
    async with asyncio.timeout(seconds):
        return await awaitable
