"""What a soak found, and its printed summary with a verdict per criterion."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Final

from bench.soak_traffic import Ledger
from bench.soak_verdict import Check, Growth, growth_table
from bench.soak_watch import LogScan, Sample

MIN_SOAK_MINUTES: Final = 20.0
"""R13's duration; a shorter run is a try, and its verdict says so."""
BACKLOG_SLACK: Final = 50
"""Events the outbox may hold at the end of the load without a note."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    minutes: float
    warmup_minutes: float
    window_s: float
    samples: tuple[Sample, ...]
    growths: tuple[Growth, ...]
    checks: tuple[Check, ...]
    runs: Counter[str]
    """Runbook runs by state."""
    exit_code: int | None
    """The daemon's, after SIGTERM (None: it had to be killed)."""
    log: LogScan
    exceptions_at_shutdown: int
    ledger: Ledger
    pacing: str
    settled_s: float | None
    fds_at_warm_up: Counter[str]
    fds_at_end: Counter[str]
    cpu_s: dict[str, float]
    """CPU seconds each process used during the load."""
    load_average: tuple[float, float, float]
    """The machine's, when the load ended."""

    @property
    def runs_passed(self) -> bool:
        asked = self.ledger.runs_asked
        return self.runs["succeeded"] == asked == sum(self.runs.values())

    @property
    def passed(self) -> bool:
        return (
            all(g.passed for g in self.growths)
            and all(c.passed for c in self.checks)
            and self.runs_passed
            and self.log.exceptions == 0
            and not self.log.failed_deliveries
            and self.exit_code == 0
        )


def _verdict(passed: bool) -> str:  # noqa: FBT001
    return "PASS" if passed else "FAIL"


def _kinds(kinds: Counter[str]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))


def _exceptions(outcome: Outcome) -> list[str]:
    log = outcome.log
    lines = [
        f"  {_verdict(log.exceptions == 0)} unhandled exceptions in the daemon's log: "
        f"{log.exceptions} ({log.errors} error-level lines, {log.never_retrieved} of them "
        f'"Task exception was never retrieved"; {log.stray_tracebacks} stray tracebacks; '
        f"{outcome.exceptions_at_shutdown} at shutdown) in {log.lines} lines",
        *(f"      {line}" for line in log.first_errors),
    ]
    if log.warnings:
        top = ", ".join(f"{event} x{n}" for event, n in log.warnings.most_common(5))
        lines.append(f"       warnings (not judged): {top}")
    lines.append(f"  {_verdict(outcome.exit_code == 0)} clean stop: exit code {outcome.exit_code}")
    return lines


def _traffic(outcome: Outcome) -> list[str]:
    ledger = outcome.ledger
    settled = (
        f"{outcome.settled_s:.0f} s after the load"
        if outcome.settled_s is not None
        else "never (see below)"
    )
    lines = [
        f"       sent: {ledger.t2m_sent} Teams posts ({sum(ledger.t2m_refused.values())} "
        f"refused), {ledger.m2t_sent} Matrix messages; {ledger.newcomers} Teams users "
        f"joined; everything expected had arrived: {settled}"
    ]
    if ledger.t2m_refused:
        lines.append(f"       Teams posts refused, by status: {dict(ledger.t2m_refused)}")
    if ledger.errors:
        lines.append(f"       client-side errors: {dict(ledger.errors)}")
    lines += [f"  {_verdict(check.passed)} {check.line()}" for check in outcome.checks]
    failed = outcome.log.failed_deliveries
    lines.append(
        f"  {_verdict(not failed)} deliveries the daemon gave up (delivery_failed): "
        f"{sum(failed.values())}"
    )
    lines += [f"      {n} x {what}" for what, n in failed.most_common()]
    others = {k: v for k, v in outcome.runs.items() if k != "succeeded"}
    lines.append(
        f"  {_verdict(outcome.runs_passed)} runbook runs: {ledger.runs_asked} commanded, "
        f"{outcome.runs['succeeded']} succeeded" + (f", other states {others}" if others else "")
    )
    lines.append(f"       Teams connector (not judged): {outcome.pacing}")
    return lines


def _machine(outcome: Outcome) -> list[str]:
    """Where the CPU went, and whether the machine kept up with the offered load."""
    seconds = outcome.minutes * 60
    cpu = ", ".join(
        f"{name} {used:.0f} s ({used / seconds * 100:.0f} %)"
        for name, used in outcome.cpu_s.items()
    )
    one, five, fifteen = outcome.load_average
    lines = [
        f"       CPU during the load (share of one core): {cpu}; "
        f"load average at the end {one:.2f}, {five:.2f}, {fifteen:.2f}"
    ]
    warm = [s for s in outcome.samples if s.offset_s <= outcome.warmup_minutes * 60][-1]
    end = outcome.samples[-1]
    if end.queued > max(BACKLOG_SLACK, 2 * warm.queued):
        lines.append(
            f"       NOTE: the outbox grew from {warm.queued} to {end.queued} events after "
            "warm-up: this machine did not deliver the offered load as fast as it came, so "
            "the resource figures include a growing backlog (try a lower --rate or more --rooms)"
        )
    return lines


def report(outcome: Outcome) -> str:
    short = outcome.minutes < MIN_SOAK_MINUTES
    title = (
        f"Summary (R13 over {outcome.minutes:g} min, warm-up {outcome.warmup_minutes:g} min; "
        f"warm-up and final are medians over the last {outcome.window_s:g} s before each end"
    )
    title += f"; shorter than R13's {MIN_SOAK_MINUTES:g} min: a try)" if short else ")"
    lines = [
        "",
        title,
        growth_table(outcome.growths),
        f"       fds at warm-up end: {_kinds(outcome.fds_at_warm_up)}",
        f"       fds at the end:     {_kinds(outcome.fds_at_end)}",
        *_exceptions(outcome),
        *_traffic(outcome),
        *_machine(outcome),
        f"R13 {_verdict(outcome.passed)}" + (" (a try shorter than the bar)" if short else ""),
    ]
    return "\n".join(lines)
