"""Figures: percentiles of latency samples, and the machine a run was measured on."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Percentiles:
    """p50/p95/p99 and the maximum of a set of samples, in milliseconds."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def __str__(self) -> str:
        return (
            f"p50 {self.p50_ms:7.2f} ms  p95 {self.p95_ms:7.2f} ms  "
            f"p99 {self.p99_ms:7.2f} ms  max {self.max_ms:7.2f} ms  (n={self.count})"
        )


def percentiles(samples_s: Sequence[float]) -> Percentiles:
    """The percentiles of samples given in seconds (at least two samples)."""
    if len(samples_s) < 2:
        raise ValueError(f"need at least two samples, got {len(samples_s)}")
    ms = sorted(s * 1000 for s in samples_s)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return Percentiles(count=len(ms), p50_ms=q[49], p95_ms=q[94], p99_ms=q[98], max_ms=ms[-1])


def ratio(measured: float, baseline: float) -> str:
    """``measured / baseline`` as ``"3.4x"`` (``"-"`` when the baseline is zero)."""
    return f"{measured / baseline:.1f}x" if baseline > 0 else "-"


def verdict(*, passed: bool) -> str:
    return "PASS" if passed else "MISS"


def machine_line() -> str:
    """Architecture, cores, Python, date, and the load average when the run started."""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}; "
        f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {load}"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SummaryRow:
    """One line of the summary table: a measured figure beside its target."""

    benchmark: str
    figure: str
    measured: str
    target: str
    passed: bool


def summary_table(rows: Sequence[SummaryRow]) -> str:
    header = ("id", "figure", "measured", "target", "verdict")
    cells = [
        header,
        *((r.benchmark, r.figure, r.measured, r.target, verdict(passed=r.passed)) for r in rows),
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
