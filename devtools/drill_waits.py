"""Bounded waiting for the drill: every wait has a deadline and says what it waited for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class DrillError(Exception):
    """A step of the drill did not see its result (the message says which and why)."""


async def poll_until(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float,
    what: str,
    interval: float = 0.25,
) -> T:
    """Call ``probe`` until it returns something other than None; ``DrillError`` once
    ``within`` seconds have passed. For state another process changes and cannot be
    waited on (the emulator's messages, the bridge's API)."""
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise DrillError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(interval)
