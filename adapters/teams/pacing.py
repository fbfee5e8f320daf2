"""Pacing of outbound calls to the Teams connector.

Teams throttles each bot per conversation (7 calls in any 1 s, 8 in any 2 s,
60 in any 30 s, 1,800 in any hour) and each app per tenant (50 per second),
answering 429 with a ``Retry-After`` header when a limit is crossed. The
``Pacer`` keeps every limit as an exact sliding window over the times of the
calls it admitted, so the bridge never needs that 429: a call waits until the
oldest call of each full window has left it.

Time comes from an injected monotonic clock and sleep, so the tests are exact
and instant. A small ``safety_margin_s`` is added to every window: a call is
timed here when it leaves, but counted by Teams when it arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Monotonic = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowLimit:
    """At most ``count`` calls in any window of ``window_s`` seconds."""

    count: int
    window_s: float


CONVERSATION_LIMITS = (
    WindowLimit(count=7, window_s=1.0),
    WindowLimit(count=8, window_s=2.0),
    WindowLimit(count=60, window_s=30.0),
    WindowLimit(count=1800, window_s=3600.0),
)
"""Teams' documented limits per bot and conversation."""
TENANT_LIMITS = (WindowLimit(count=50, window_s=1.0),)
"""Teams' documented limit per app and tenant."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PacingSettings:
    """How the Teams sender paces, retries, coalesces and splits."""

    conversation_limits: tuple[WindowLimit, ...] = CONVERSATION_LIMITS
    tenant_limits: tuple[WindowLimit, ...] = TENANT_LIMITS
    safety_margin_s: float = 0.05
    """Added to every window: covers the time between leaving here and arriving at Teams."""
    max_attempts: int = 6
    """HTTP attempts per call (429s included) before the operation goes back to the outbox."""
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    default_retry_after_s: float = 1.0
    """The pause after a 429 without a usable ``Retry-After``."""
    max_retry_after_s: float = 120.0
    """A longer ``Retry-After`` is not waited out here: the operation goes back to the outbox."""
    queue_timeout_s: float = 120.0
    """An operation still waiting for its turn after this long goes back to the outbox."""
    request_timeout_s: float = 15.0
    """One HTTP request to the connector, connection included."""
    coalesce: bool = True
    """Combine waiting plain messages of one conversation into one activity."""
    max_coalesced_lines: int = 100
    max_activity_bytes: int = 80_000
    """The JSON size of one activity; Teams refuses about 100 KB with 413."""
    recent_keys: int = 4096
    """Idempotency keys whose result is remembered, so a repeated call sends nothing."""

    def __post_init__(self) -> None:
        if not self.conversation_limits or not self.tenant_limits:
            raise ValueError("pacing needs at least one conversation and one tenant limit")
        for limit in (*self.conversation_limits, *self.tenant_limits):
            if limit.count < 1 or limit.window_s <= 0:
                raise ValueError(f"invalid window limit {limit}")
        if self.max_attempts < 2:
            raise ValueError("max_attempts must allow one retry")
        if self.max_activity_bytes < 4096:
            raise ValueError("max_activity_bytes must be at least 4096")


class SlidingWindows:
    """The times of admitted calls for one key, checked against several limits at once."""

    __slots__ = ("_horizon", "_limits", "_margin", "_stamps")

    def __init__(self, limits: tuple[WindowLimit, ...], *, margin_s: float) -> None:
        self._limits = limits
        self._margin = margin_s
        self._stamps: deque[float] = deque(maxlen=max(limit.count for limit in limits))
        self._horizon = max(limit.window_s for limit in limits) + margin_s

    def wait_time(self, now: float) -> float:
        """Seconds until one more call fits every window (0 when it fits now)."""
        stamps = self._stamps
        held = len(stamps)
        delay = 0.0
        for limit in self._limits:
            if held >= limit.count:
                oldest = stamps[-limit.count]
                delay = max(delay, oldest + limit.window_s + self._margin - now)
        return delay

    def admit(self, now: float) -> None:
        self._stamps.append(now)

    def idle(self, now: float) -> bool:
        """Whether no admitted call is inside any window any more."""
        return not self._stamps or self._stamps[-1] + self._horizon <= now

    def count_since(self, start: float) -> int:
        return sum(1 for stamp in self._stamps if stamp > start)


class Pacer:
    """Admits calls per conversation and per tenant within Teams' limits; honours 429 pauses."""

    SWEEP_INTERVAL_S = 60.0

    def __init__(self, settings: PacingSettings, *, monotonic: Monotonic, sleep: Sleep) -> None:
        self._settings = settings
        self._monotonic = monotonic
        self._sleep = sleep
        self._conversations: dict[str, SlidingWindows] = {}
        self._tenants: dict[str, SlidingWindows] = {}
        self._paused_until: dict[str, float] = {}
        self._last_sweep = monotonic()

    def delay(self, conversation: str, tenant: str) -> float:
        """Seconds until the next call into ``conversation`` may go (0 when it may go now)."""
        now = self._monotonic()
        return max(
            self._windows(self._conversations, conversation, conversation=True).wait_time(now),
            self._windows(self._tenants, tenant, conversation=False).wait_time(now),
            self._paused_until.get(conversation, now) - now,
            0.0,
        )

    async def acquire(self, conversation: str, tenant: str) -> float:
        """Wait for a slot in both the conversation's and the tenant's windows; take it.

        Returns the seconds waited. The check and the admission happen without
        a suspension point in between, so concurrent callers never overbook.
        """
        waited = 0.0
        while True:
            delay = self.delay(conversation, tenant)
            if delay <= 0:
                now = self._monotonic()
                self._conversations[conversation].admit(now)
                self._tenants[tenant].admit(now)
                self._maybe_sweep(now)
                return waited
            await self._sleep(delay)
            waited += delay

    def pause(self, conversation: str, seconds: float) -> None:
        """Send nothing into ``conversation`` for ``seconds`` (after a 429)."""
        until = self._monotonic() + max(0.0, seconds)
        self._paused_until[conversation] = max(self._paused_until.get(conversation, 0.0), until)

    def tracked(self) -> int:
        """How many conversations and tenants have state (bounded by the sweep)."""
        return len(self._conversations) + len(self._tenants) + len(self._paused_until)

    def _windows(
        self, table: dict[str, SlidingWindows], key: str, *, conversation: bool
    ) -> SlidingWindows:
        windows = table.get(key)
        if windows is None:
            limits = (
                self._settings.conversation_limits if conversation else self._settings.tenant_limits
            )
            windows = SlidingWindows(limits, margin_s=self._settings.safety_margin_s)
            table[key] = windows
        return windows

    def _maybe_sweep(self, now: float) -> None:
        if now - self._last_sweep < self.SWEEP_INTERVAL_S:
            return
        self._last_sweep = now
        for table in (self._conversations, self._tenants):
            for key in [key for key, windows in table.items() if windows.idle(now)]:
                del table[key]
        for key in [key for key, until in self._paused_until.items() if until <= now]:
            del self._paused_until[key]


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, jitter: float) -> float:
    """The wait before retry number ``attempt`` (1 for the first retry).

    Exponential and capped, with "equal jitter": between half and all of
    ``min(cap, base * 2 ** (attempt - 1))``; ``jitter`` is a number in [0, 1).
    """
    ceiling = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + ceiling / 2 * min(max(jitter, 0.0), 1.0)
