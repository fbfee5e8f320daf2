"""The connector's rate limits, as Microsoft documents them for Teams bots.

Per bot per conversation, each kind of operation with its own budget:

- sending (send, reply, update, delete, reactions): 7 per 1 s, 8 per 2 s, 60 per 30 s,
  1800 per hour;
- creating conversations (a new channel thread counts against its channel): the same;
- reading (members, team details, channel list): 14 per 1 s, 16 per 2 s, 120 per 30 s,
  3600 per hour.

Per bot per tenant: 50 calls per second, of every kind. Windows slide over the calls
the emulator accepted (a refused call does not use up budget). A channel's threads
count as the channel. A call over a limit is refused with 429 and a ``Retry-After``
that is exactly long enough (rounded up to whole seconds), and is recorded as a
violation.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from devtools.teams_emulator.clock import Clock


@dataclass(frozen=True, slots=True)
class Window:
    limit: int
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.limit}/{self.seconds:g}s"


CONVERSATION_WINDOWS = (Window(7, 1.0), Window(8, 2.0), Window(60, 30.0), Window(1800, 3600.0))
READ_WINDOWS = (Window(14, 1.0), Window(16, 2.0), Window(120, 30.0), Window(3600, 3600.0))
TENANT_WINDOWS = (Window(50, 1.0),)


class Bucket(StrEnum):
    """The kinds of operation that have separate budgets in a conversation."""

    SEND = "send"
    CREATE = "create"
    READ = "read"


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitPolicy:
    conversation: tuple[Window, ...] = CONVERSATION_WINDOWS
    """Sending and creating, per conversation."""
    reads: tuple[Window, ...] = READ_WINDOWS
    tenant: tuple[Window, ...] = TENANT_WINDOWS
    enabled: bool = True

    @classmethod
    def off(cls) -> RateLimitPolicy:
        return cls(enabled=False)


class Scope(StrEnum):
    CONVERSATION = "conversation"
    TENANT = "tenant"


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """A call the emulator refused for exceeding a limit."""

    at: datetime
    monotonic: float
    scope: Scope
    key: str
    """The conversation (channel or chat id) or the tenant id."""
    bucket: Bucket | None
    """The kind of operation, for a conversation's limit."""
    window: Window
    method: str
    path: str
    retry_after_s: int


@dataclass(slots=True)
class _Series:
    times: list[float] = field(default_factory=list)

    def count_since(self, start: float) -> tuple[int, int]:
        """(index of the first call after ``start``, how many calls after it)."""
        first = bisect.bisect_right(self.times, start)
        return first, len(self.times) - first


class SlidingWindows:
    """Timestamps of accepted calls per key, checked against several windows."""

    def __init__(self, windows: Sequence[Window]) -> None:
        self._windows = tuple(windows)
        self._longest = max((w.seconds for w in windows), default=0.0)
        self._series: dict[str, _Series] = {}

    def refusal(self, key: str, now: float) -> tuple[Window, float] | None:
        """The first window the next call would exceed and how long until it would not."""
        series = self._series.get(key)
        if series is None:
            return None
        worst: tuple[Window, float] | None = None
        for window in self._windows:
            first, count = series.count_since(now - window.seconds)
            if count >= window.limit:
                # The call that must leave the window before one more fits.
                leaving = series.times[first + count - window.limit]
                wait = leaving + window.seconds - now
                if worst is None or wait > worst[1]:
                    worst = (window, wait)
        return worst

    def admit(self, key: str, now: float) -> None:
        series = self._series.setdefault(key, _Series())
        series.times.append(now)
        cutoff = bisect.bisect_right(series.times, now - self._longest)
        if cutoff > 1024:
            del series.times[:cutoff]


class RateLimiter:
    def __init__(self, policy: RateLimitPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._buckets = {
            Bucket.SEND: SlidingWindows(policy.conversation),
            Bucket.CREATE: SlidingWindows(policy.conversation),
            Bucket.READ: SlidingWindows(policy.reads),
        }
        self._tenants = SlidingWindows(policy.tenant)
        self.violations: list[Violation] = []

    def admit(
        self,
        *,
        conversation_key: str | None,
        bucket: Bucket | None,
        tenant_key: str,
        method: str,
        path: str,
    ) -> Violation | None:
        """Count the call, or refuse it (and record the violation)."""
        if not self.policy.enabled:
            return None
        now = self._clock.monotonic()
        checks: list[tuple[Scope, str, SlidingWindows]] = [
            (Scope.TENANT, tenant_key, self._tenants)
        ]
        if conversation_key is not None and bucket is not None:
            checks.insert(0, (Scope.CONVERSATION, conversation_key, self._buckets[bucket]))
        for scope, key, windows in checks:
            refusal = windows.refusal(key, now)
            if refusal is not None:
                window, wait = refusal
                violation = Violation(
                    at=self._clock.now(),
                    monotonic=now,
                    scope=scope,
                    key=key,
                    bucket=bucket if scope is Scope.CONVERSATION else None,
                    window=window,
                    method=method,
                    path=path,
                    retry_after_s=max(1, math.ceil(wait)),
                )
                self.violations.append(violation)
                return violation
        for _scope, key, windows in checks:
            windows.admit(key, now)
        return None
