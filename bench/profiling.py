"""Where the time goes: MongoDB round trips, CPU per process, and a cProfile of the bridge.

- ``RoundTrips`` is a pymongo command listener: how many commands of each kind
  (command, collection) the bridge sent and how long each took from the
  driver's side (send to reply, so event-loop delays are included).
- ``CpuMeter`` reads the CPU time used by this process (the bridge), the load
  process and the SecantusDB daemon over a measured interval (``/proc`` on Linux).
- ``Profiler`` wraps ``cProfile`` and prints the functions with the most own time.

These change the timing they look at (cProfile slows Python code about twofold),
so a profiled run is separate from the run whose figures are reported.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

_TICKS: Final = os.sysconf("SC_CLK_TCK")


class RoundTrips(CommandListener):
    """Counts and times every command the bridge's MongoDB client sends."""

    def __init__(self) -> None:
        self._pending: dict[int, tuple[str, str]] = {}
        self.counts: Counter[tuple[str, str]] = Counter()
        self.micros: Counter[tuple[str, str]] = Counter()

    def reset(self) -> None:
        self.counts.clear()
        self.micros.clear()

    def started(self, event: CommandStartedEvent) -> None:
        collection = event.command.get(event.command_name)
        name = collection if isinstance(collection, str) else "-"
        self._pending[event.request_id] = (event.command_name, name)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        self._finish(event.request_id, event.duration_micros)

    def failed(self, event: CommandFailedEvent) -> None:
        self._finish(event.request_id, event.duration_micros)

    def _finish(self, request_id: int, micros: int) -> None:
        key = self._pending.pop(request_id, None)
        if key is not None:
            self.counts[key] += 1
            self.micros[key] += micros

    def table(self, messages: int) -> str:
        """Per message: round trips of each kind, their mean duration and their share."""
        if messages <= 0 or not self.counts:
            return "  (no MongoDB commands recorded)"
        total_count = sum(self.counts.values())
        total_ms = sum(self.micros.values()) / 1000
        lines = [f"  {'command':<12}{'collection':<32}{'per msg':>8}{'mean ms':>9}{'ms/msg':>8}"]
        for key, micros in self.micros.most_common():
            count = self.counts[key]
            lines.append(
                f"  {key[0]:<12}{key[1]:<32}{count / messages:>8.2f}"
                f"{micros / count / 1000:>9.2f}{micros / 1000 / messages:>8.2f}"
            )
        lines.append(
            f"  {'all':<44}{total_count / messages:>8.2f}"
            f"{total_ms / total_count:>9.2f}{total_ms / messages:>8.2f}"
        )
        return "\n".join(lines)


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuUse:
    """CPU seconds used during the interval, by process."""

    wall_s: float
    bridge_s: float
    load_s: float
    database_s: float

    def per_message_ms(self, messages: int) -> str:
        if messages <= 0:
            return "-"
        return (
            f"bridge {self.bridge_s * 1000 / messages:.2f} ms, "
            f"database {self.database_s * 1000 / messages:.2f} ms, "
            f"load process {self.load_s * 1000 / messages:.2f} ms"
        )

    def utilisation(self) -> str:
        wall = max(self.wall_s, 1e-9)
        return (
            f"bridge {self.bridge_s / wall:.0%}, database {self.database_s / wall:.0%}, "
            f"load process {self.load_s / wall:.0%} of one core"
        )


class CpuMeter:
    """CPU time of this process, the load process and the database over an interval."""

    def __init__(self, *, load_pid: int | None, database_pid: int | None) -> None:
        self._load_pid = load_pid
        self._database_pid = database_pid
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        return (
            time.perf_counter(),
            time.process_time(),
            _process_cpu_s(self._load_pid) if self._load_pid else 0.0,
            _process_cpu_s(self._database_pid) if self._database_pid else 0.0,
        )

    def stop(self) -> CpuUse:
        end = self._sample()
        wall, bridge, load, database = (b - a for a, b in zip(self._start, end, strict=True))
        return CpuUse(wall_s=wall, bridge_s=bridge, load_s=load, database_s=database)


class Profiler:
    """cProfile of this process between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self._profile = cProfile.Profile()

    def start(self) -> None:
        self._profile.enable()

    def stop(self) -> None:
        self._profile.disable()

    def top(self, limit: int = 25) -> str:
        """The functions with the most own time (tottime), with cumulative time beside."""
        out = io.StringIO()
        stats = pstats.Stats(self._profile, stream=out)
        stats.strip_dirs().sort_stats(pstats.SortKey.TIME).print_stats(limit)
        return out.getvalue()
