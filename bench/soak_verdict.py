"""The soak's judgement: resource growth after warm-up, and every message delivered once.

Growth compares the daemon at the end of warm-up with the daemon at the end of the
load. Each end is the median of the samples in the last ``window_s`` before it (one
sample can land on a burst of in-flight requests); the peak is the highest sample
after warm-up. Memory passes when its final value is less than ``limit_pct`` above its
warm-up value (R13: "RSS growth < 10 % after warm-up"). Tasks and fds must be bounded:
they pass the same way, or when they levelled off, their median in the second half of
the time after warm-up less than ``limit_pct`` above their median in the first half
(connection pools, the peers' ones included, grow to the highest concurrency seen
and keep their connections: a ratchet that stops, where a leak keeps climbing). The
trend is the least-squares slope of the samples after warm-up, as a share of the
warm-up value per hour: a leak shows there before it shows in the growth of a short
run.

Delivery: every message a platform accepted arrived on the other side exactly once
(Matrix: one new message by the bridge; Teams: the token in one live message of the
bot), nothing came back to the side it came from, every edit arrived once (Matrix: one
``m.replace`` by the bridge; Teams: the bot's message shows the new text) and every
reaction arrived once (Matrix: one ``m.reaction`` by a ghost; Teams: the reaction
line on the bot's message).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from bench.soak_matrix import MatrixReader
from bench.soak_traffic import EDITED, MATRIX_REACTION, Ledger
from bench.soak_watch import Sample

SHOWN: Final = 5
"""Tokens listed per problem."""


class Rule(Enum):
    GROWTH = "growth"
    """The final value less than the limit above the warm-up value."""
    BOUNDED = "bounded"
    """That, or levelled off (see the module docstring)."""
    SHOWN = "shown"
    """Not judged."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Growth:
    name: str
    unit: str
    warm_up: float
    final: float
    peak: float
    first_half: float
    second_half: float
    """Medians of the samples in each half of the time after warm-up."""
    trend_per_hour: float
    """Slope after warm-up, as a share of ``warm_up`` per hour (%)."""
    limit_pct: float
    rule: Rule

    @property
    def growth_pct(self) -> float:
        return _pct(self.final, self.warm_up)

    @property
    def peak_pct(self) -> float:
        return _pct(self.peak, self.warm_up)

    @property
    def levelled_off(self) -> bool:
        return _pct(self.second_half, self.first_half) < self.limit_pct

    @property
    def passed(self) -> bool:
        if self.rule is Rule.SHOWN or self.growth_pct < self.limit_pct:
            return True
        return self.rule is Rule.BOUNDED and self.levelled_off

    @property
    def verdict(self) -> str:
        if self.rule is Rule.SHOWN:
            return "info"
        if self.growth_pct < self.limit_pct:
            return f"PASS (< {self.limit_pct:g} %)"
        halves = f"medians {self.first_half:g} then {self.second_half:g}"
        if self.passed:
            return f"PASS (levelled off: {halves})"
        if self.rule is Rule.BOUNDED:
            return f"FAIL (still growing: {halves})"
        return f"FAIL (not < {self.limit_pct:g} %)"


def _pct(value: float, base: float) -> float:
    return (value - base) / base * 100.0 if base else 0.0


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope (per second) of (t, value) points."""
    if len(points) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if not spread:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def growth(
    samples: Sequence[Sample],
    name: str,
    unit: str,
    value: Callable[[Sample], float],
    *,
    warmup_s: float,
    window_s: float,
    limit_pct: float,
    rule: Rule,
) -> Growth:
    """See the module docstring; needs a sample at or before warm-up's end and one after."""
    before = [s for s in samples if s.offset_s <= warmup_s]
    after = [s for s in samples if s.offset_s >= warmup_s]
    if not before or len(after) < 2:
        raise ValueError("growth needs samples through warm-up and after it")
    warm_end, end = before[-1].offset_s, after[-1].offset_s
    warm = [value(s) for s in before if s.offset_s >= warm_end - window_s]
    final = [value(s) for s in after if s.offset_s >= end - window_s]
    base = statistics.median(warm)
    slope = _slope([(s.elapsed_s, value(s)) for s in after])
    middle = (warm_end + end) / 2
    return Growth(
        name=name,
        unit=unit,
        warm_up=base,
        final=statistics.median(final),
        peak=max(value(s) for s in after),
        first_half=statistics.median(value(s) for s in after if s.offset_s <= middle),
        second_half=statistics.median(value(s) for s in after if s.offset_s >= middle),
        trend_per_hour=slope * 3600 / base * 100 if base else 0.0,
        limit_pct=limit_pct,
        rule=rule,
    )


def resource_growths(
    samples: Sequence[Sample], *, warmup_s: float, window_s: float, limit_pct: float
) -> tuple[Growth, ...]:
    """Memory (growth), tasks and fds (bounded), threads (shown: a pool with a bound)."""

    def of(name: str, unit: str, value: Callable[[Sample], float], rule: Rule) -> Growth:
        return growth(
            samples,
            name,
            unit,
            value,
            warmup_s=warmup_s,
            window_s=window_s,
            limit_pct=limit_pct,
            rule=rule,
        )

    return (
        of("RSS", "MiB", lambda s: s.rss_kib / 1024, Rule.GROWTH),
        of("tasks", "n", lambda s: float(s.tasks), Rule.BOUNDED),
        of("fds", "n", lambda s: float(s.fds), Rule.BOUNDED),
        of("threads", "n", lambda s: float(s.threads), Rule.SHOWN),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One delivery property: how many were expected, and which failed how."""

    what: str
    expected: int
    missing: tuple[str, ...] = ()
    duplicated: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    """Arrived though never accepted, or on the side it came from."""

    @property
    def passed(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected)

    def line(self) -> str:
        once = self.expected - len(self.missing) - len(self.duplicated)
        text = (
            f"{self.what}: {self.expected} expected, {once} exactly once, "
            f"{len(self.missing)} missing, {len(self.duplicated)} duplicated, "
            f"{len(self.unexpected)} unexpected"
            if self.expected
            else f"{self.what}: {len(self.unexpected)}"
        )
        for label, tokens in (
            ("missing", self.missing),
            ("duplicated", self.duplicated),
            ("unexpected", self.unexpected),
        ):
            if tokens:
                text += f"\n      {label}: {', '.join(tokens[:SHOWN])}"
                text += " ..." if len(tokens) > SHOWN else ""
        return text


def _of(tokens: Iterable[str], direction: str) -> set[str]:
    return {t for t in tokens if t.startswith(direction)}


def _once(what: str, expected: set[str], counts: Counter[str], direction: str) -> Check:
    arrived = _of(counts, direction)
    return Check(
        what=what,
        expected=len(expected),
        missing=tuple(sorted(expected - arrived)),
        duplicated=tuple(sorted(t for t in expected if counts[t] > 1)),
        unexpected=tuple(sorted(arrived - expected)),
    )


def _counted(what: str, expected: set[str], count: Callable[[str], int]) -> Check:
    counts = {t: count(t) for t in expected}
    return Check(
        what=what,
        expected=len(expected),
        missing=tuple(sorted(t for t, n in counts.items() if n == 0)),
        duplicated=tuple(sorted(t for t, n in counts.items() if n > 1)),
    )


def delivery_checks(
    ledger: Ledger,
    reader: MatrixReader,
    teams_counts: Counter[str],
    teams_text: dict[str, str],
) -> list[Check]:
    def on_matrix(counts: Counter[str]) -> Callable[[str], int]:
        return lambda t: counts[reader.event_of[t]] if t in reader.event_of else 0

    return [
        _once("Teams -> Matrix messages", ledger.t2m_accepted, reader.bridged, "t2m"),
        _once("Matrix -> Teams messages", ledger.m2t_accepted, teams_counts, "m2t"),
        Check(
            what="echoes (a message back on the side it came from)",
            expected=0,
            unexpected=tuple(
                sorted(_of(reader.bridged, "m2t") | _of(teams_counts, "t2m"))
                + sorted(_of(reader.by_people, "t2m"))
            ),
        ),
        _counted("Teams -> Matrix edits", ledger.t2m_edited, on_matrix(reader.edits)),
        _counted(
            "Matrix -> Teams edits",
            ledger.m2t_edited,
            lambda t: int(EDITED in teams_text.get(t, "")),
        ),
        _counted("Teams -> Matrix reactions", ledger.t2m_reacted, on_matrix(reader.reactions)),
        _counted(
            "Matrix -> Teams reactions",
            ledger.m2t_reacted,
            lambda t: int(MATRIX_REACTION in teams_text.get(t, "")),
        ),
    ]


def _growth_line(g: Growth) -> str:
    return (
        f"  {g.name + ' (' + g.unit + ')':<16} {g.warm_up:>9.1f} {g.final:>9.1f} "
        f"{g.peak:>9.1f} {g.growth_pct:>+7.1f}% {g.peak_pct:>+7.1f}% "
        f"{g.trend_per_hour:>+7.1f}%  {g.verdict}"
    )


def growth_table(rows: Sequence[Growth]) -> str:
    header = (
        f"  {'resource':<16} {'warm-up':>9} {'final':>9} {'peak':>9} "
        f"{'growth':>8} {'peak':>8} {'trend/h':>8}  verdict"
    )
    return "\n".join([header, *(_growth_line(g) for g in rows)])
