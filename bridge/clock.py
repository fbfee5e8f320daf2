"""Time as a dependency, so tests can control it."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class SystemClock:
    """The real clock: aware UTC wall time and a monotonic counter."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
