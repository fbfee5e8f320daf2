"""When the homeserver retried the bridge's transactions, read from Synapse's own log.

Synapse marks an application service that failed a transaction as down and retries
it with a backoff of 2, 4, 8 ... 512 s (``synapse/appservice/scheduler.py``,
``_Recoverer``), or at once when the application service pings it
(``POST /_matrix/client/v1/appservice/{id}/ping``). Its log says when: "Scheduling
retries on <id> in <n>s", "Starting retries on <id>", "Successfully recovered
application service AS ID <id>". Times are the log's local wall-clock time, as
``time.time()`` seconds.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_STAMP: Final = re.compile(r"^(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}) ")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduledRetry:
    at: float
    """When Synapse scheduled it (``time.time()`` seconds)."""
    delay_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryLog:
    """What Synapse logged about one application service since ``mark``."""

    scheduled: tuple[ScheduledRetry, ...]
    started: tuple[float, ...]
    """When a retry (scheduled or forced by a ping) began."""
    recovered: tuple[float, ...]


class AsRetries:
    """Reads the homeserver log from where it stood when this was made."""

    def __init__(self, log_path: Path, as_id: str) -> None:
        self._path = log_path
        self._offset = log_path.stat().st_size if log_path.exists() else 0
        escaped = re.escape(as_id)
        self._scheduled = re.compile(rf"Scheduling retries on {escaped} in (?P<delay>[\d.]+)s")
        self._started = re.compile(rf"Starting retries on {escaped}\b")
        self._recovered = re.compile(rf"Successfully recovered application service AS ID {escaped}")

    def read(self) -> RetryLog:
        with self._path.open("rb") as log:
            log.seek(self._offset)
            text = log.read().decode("utf-8", errors="replace")
        scheduled: list[ScheduledRetry] = []
        started: list[float] = []
        recovered: list[float] = []
        for line in text.splitlines():
            stamp = _STAMP.match(line)
            if stamp is None:
                continue
            at = time.mktime(time.strptime(stamp["stamp"], "%Y-%m-%d %H:%M:%S"))
            at += int(stamp["ms"]) / 1000
            if found := self._scheduled.search(line):
                scheduled.append(ScheduledRetry(at=at, delay_s=float(found["delay"])))
            elif self._started.search(line):
                started.append(at)
            elif self._recovered.search(line):
                recovered.append(at)
        return RetryLog(
            scheduled=tuple(scheduled), started=tuple(started), recovered=tuple(recovered)
        )
