"""The pacer keeps Teams' sliding windows exactly, with a virtual clock."""

from __future__ import annotations

import pytest

from adapters.teams.pacing import (
    CONVERSATION_LIMITS,
    TENANT_LIMITS,
    Pacer,
    PacingSettings,
    SlidingWindows,
    WindowLimit,
    backoff_delay,
)
from tests.support.fakes import FakeClock
from tests.unit.teams.connector_fake import VirtualTime

EXACT = PacingSettings(safety_margin_s=0.0)


def violations(times: list[float], limits: tuple[WindowLimit, ...]) -> list[str]:
    """Brute force: every window starting at a call holds at most ``count`` calls."""
    found = []
    for limit in limits:
        for i, start in enumerate(times):
            inside = sum(1 for t in times[i:] if t < start + limit.window_s)
            if inside > limit.count:
                found.append(f"{inside} in {limit.window_s}s from {start}")
    return found


def pacer(settings: PacingSettings = EXACT) -> tuple[Pacer, FakeClock, VirtualTime]:
    clock = FakeClock()
    time = VirtualTime(clock)
    return Pacer(settings, monotonic=clock.monotonic, sleep=time.sleep), clock, time


def test_windows_wait_for_the_oldest_call_of_each_full_window() -> None:
    windows = SlidingWindows(
        (WindowLimit(count=7, window_s=1.0), WindowLimit(count=8, window_s=2.0)), margin_s=0.0
    )
    for _ in range(7):
        assert windows.wait_time(0.0) <= 0
        windows.admit(0.0)
    assert windows.wait_time(0.0) == 1.0
    assert windows.wait_time(0.5) == 0.5
    windows.admit(1.0)  # the 8th: 7/1 s has room again, 8/2 s just fits
    assert windows.wait_time(1.0) == 1.0  # the 9th waits for the first call to leave 2 s
    assert windows.wait_time(2.0) <= 0


def test_the_margin_widens_every_window() -> None:
    windows = SlidingWindows((WindowLimit(count=1, window_s=1.0),), margin_s=0.05)
    windows.admit(10.0)
    assert windows.wait_time(10.0) == pytest.approx(1.05)


async def test_a_greedy_flood_keeps_every_conversation_limit_exactly() -> None:
    pace, clock, _ = pacer()
    start = clock.monotonic()
    times = []
    for _ in range(200):
        await pace.acquire("19:a@thread.tacv2", "tenant")
        times.append(clock.monotonic() - start)
    assert violations(times, CONVERSATION_LIMITS) == []
    assert times[:7] == [0.0] * 7
    assert times[7] == 1.0  # the 8th call: 7 per 1 s
    assert times[8] == 2.0  # the 9th call: 8 per 2 s
    assert times[59] < 30.0
    assert times[60] == 30.0  # the 61st call: 60 per 30 s, not a moment later
    assert times[180] == 90.0


async def test_the_hourly_limit_holds() -> None:
    settings = PacingSettings(
        safety_margin_s=0.0,
        conversation_limits=(WindowLimit(count=1800, window_s=3600.0),),
    )
    pace, clock, _ = pacer(settings)
    for _ in range(1800):
        await pace.acquire("c", "t-unlimited")
    assert clock.monotonic() - 1000.0 < 60  # the tenant's 50/s is the only brake so far
    before = clock.monotonic()
    await pace.acquire("c", "t-unlimited")
    assert clock.monotonic() == 1000.0 + 3600.0
    assert clock.monotonic() > before


async def test_the_tenant_limit_spans_conversations() -> None:
    pace, clock, _ = pacer()
    times = []
    for n in range(120):
        await pace.acquire(f"19:c{n}@thread.v2", "tenant")
        times.append(clock.monotonic() - 1000.0)
    assert violations(times, TENANT_LIMITS) == []
    assert times[49] == 0.0
    assert times[50] == 1.0
    assert times[100] == 2.0


async def test_a_429_pauses_only_its_conversation() -> None:
    pace, clock, _ = pacer()
    await pace.acquire("a", "t")
    pace.pause("a", 5.0)
    assert pace.delay("a", "t") == 5.0
    assert pace.delay("b", "t") == 0.0
    await pace.acquire("b", "t")
    assert clock.monotonic() == 1000.0
    await pace.acquire("a", "t")
    assert clock.monotonic() == 1005.0
    pace.pause("a", 1.0)
    pace.pause("a", 0.5)  # a shorter pause does not cut a longer one short
    assert pace.delay("a", "t") == 1.0


async def test_idle_state_is_swept() -> None:
    pace, clock, _ = pacer()
    for n in range(20):
        await pace.acquire(f"conversation-{n}", "t")
    assert pace.tracked() == 21
    clock.advance(3600.0 + Pacer.SWEEP_INTERVAL_S + 1)
    await pace.acquire("fresh", "t")
    assert pace.tracked() == 2


@pytest.mark.parametrize("jitter", [0.0, 0.3, 0.999])
def test_backoff_is_exponential_capped_and_jittered(jitter: float) -> None:
    delays = [backoff_delay(n, base_s=0.5, cap_s=8.0, jitter=jitter) for n in range(1, 12)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert delays == sorted(delays)
    assert max(delays) <= 8.0
    assert backoff_delay(1, base_s=0.5, cap_s=8.0, jitter=5.0) == 0.5  # jitter is clamped


@pytest.mark.parametrize(
    "changes",
    [
        {"conversation_limits": ()},
        {"tenant_limits": (WindowLimit(count=0, window_s=1.0),)},
        {"max_attempts": 1},
        {"max_activity_bytes": 100},
    ],
)
def test_settings_refuse_nonsense(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        PacingSettings(**changes)  # type: ignore[arg-type]
