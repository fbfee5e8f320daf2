"""R13, the soak: steady two-way traffic plus a runbook a minute through the real daemon.

The daemon runs as shipped (``python -m bridge run``) against SecantusDB (retryable
writes off: SecantusDB slows down after 10,000 of them), a real Synapse homeserver and
the Teams emulator (Teams' rate limits on), all on loopback, all started here and
stopped at the end, on an error or on Ctrl-C (see ``bench.soak_stack``).

The traffic (``bench.soak_traffic``): by default 5 msg/s each way round-robin over 4
linked pairs (a Teams group chat and a Matrix room), one message in 20 of each room
edited and one in 20 reacted to, both ways; an ``exec`` runbook commanded from chat
once a minute by an operator (no approval), from Teams and from Matrix in turn; a new
Teams user joining the chats once a minute.

Every ``--interval`` seconds it prints the daemon's resident memory, open file
descriptors, event-loop tasks (``bridge_asyncio_tasks`` on ``/metrics``) and threads,
messages sent/delivered each way, runbook runs finished/asked, events queued in the
outbox and unhandled exceptions in its log so far (``bench.soak_watch``). When the
load ends it waits for the stragglers, stops the daemon and judges
(``bench.soak_verdict``): memory less than ``--limit`` % above its warm-up value,
tasks and fds the same or levelled off; no unhandled exception in the daemon's log
(error-level lines, "Task exception was never retrieved", stray tracebacks), from
start to clean stop; every message, edit and reaction delivered exactly once, and no
delivery given up; every runbook run succeeded.

Run: .venv/bin/python -m bench.soak [--minutes 22] [--warmup-minutes 5] [--interval 30]
     [--rate 5] [--teams-rate 5] [--rooms 16] [--keep]

Teams allows a bot 1,800 calls per conversation per hour (0.5/s on average); the
defaults keep each conversation near 0.35 calls/s (messages, edits and reactions), so
a long soak measures the bridge rather than that limit: above it the bridge (rightly)
holds messages back for up to an hour. A load past the limit is refused.

Exit status: 0 all passed, 1 a criterion failed, 2 the soak could not run (the daemon
died, a server did not start), 130 interrupted. The working directory (the daemon's
log and settings, the servers' data) is removed after a pass unless ``--keep``, and
kept and named otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Final

from bench.soak_matrix import MatrixReader
from bench.soak_report import Outcome, report
from bench.soak_stack import SoakStack, open_soak_stack
from bench.soak_traffic import Ledger, Traffic, TrafficOptions
from bench.soak_verdict import delivery_checks, resource_growths
from bench.soak_watch import (
    FINAL_RUN_STATES,
    HEADER,
    LogScan,
    Sample,
    Sampler,
    cpu_by_process,
    row,
    teams_tokens,
)
from bench.stats import machine_line

SETTLE_POLL_S: Final = 2.0
WINDOW_INTERVALS: Final = 4
TEAMS_HOURLY_RATE: Final = 0.5
"""1,800 calls per conversation per hour, the longest of Teams' windows."""
"""Each end of the growth is the median of this many intervals' samples (five)."""
QUIET_S: Final = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakOptions:
    minutes: float
    warmup_minutes: float
    interval_s: float
    window_s: float
    rooms: int
    settle_s: float
    limit_pct: float
    traffic: TrafficOptions


async def _sleep_until(at: float) -> None:
    delay = at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)  # the sampling schedule


async def _load(options: SoakOptions, traffic: Traffic, sampler: Sampler) -> tuple[Sample, ...]:
    """Run the traffic for the soak's length, sampling on schedule (also at the end)."""
    seconds = options.minutes * 60
    warmup_s = options.warmup_minutes * 60
    ticks = int(seconds // options.interval_s)
    offsets = [k * options.interval_s for k in range(ticks + 1)]
    if offsets[-1] < seconds:
        offsets.append(seconds)
    samples: list[Sample] = []
    print(HEADER, flush=True)
    async with asyncio.TaskGroup() as group:
        start = time.monotonic()
        group.create_task(traffic.run(seconds))
        for offset in offsets:
            await _sleep_until(start + offset)
            sample = await sampler.sample(offset, time.monotonic() - start)
            samples.append(sample)
            previous = samples[-2] if len(samples) >= 2 else None
            print(row(sample, previous, warm_up=sample.offset_s < warmup_s), flush=True)
    return tuple(samples)


async def _settle(options: SoakOptions, stack: SoakStack, sampler: Sampler) -> float | None:
    """Seconds until everything expected arrived and every run finished; None when it did
    not within ``settle_s``, or when the outbox stayed empty for ``QUIET_S`` with
    something still missing (the bridge holds nothing more: what is missing is lost)."""
    started = time.monotonic()
    quiet_since: float | None = None
    while True:
        stack.daemon.ensure_alive()
        missing = await _outstanding(stack, sampler)
        now = time.monotonic()
        if missing == 0:
            return now - started
        quiet_since = (quiet_since or now) if await sampler.queued() == 0 else None
        if now - started >= options.settle_s or (
            quiet_since is not None and now - quiet_since >= QUIET_S
        ):
            return None
        await asyncio.sleep(SETTLE_POLL_S)  # other processes' state: polled


async def _outstanding(stack: SoakStack, sampler: Sampler) -> int:
    """Expected deliveries not seen yet, and runs not finished."""
    await sampler.reader.catch_up()
    checks = delivery_checks(sampler.ledger, sampler.reader, *teams_tokens(stack))
    runs = await sampler.runs()
    finished = sum(runs[state] for state in FINAL_RUN_STATES)
    return sum(len(c.missing) for c in checks) + max(0, sampler.ledger.runs_asked - finished)


async def soak(options: SoakOptions, workdir: Path) -> Outcome:
    """Start everything, run the load, let it settle, stop the daemon, gather the findings."""
    async with open_soak_stack(workdir, rooms=options.rooms) as stack:
        print(f"  daemon pid {stack.daemon.pid}, log {stack.daemon.log_path}", flush=True)
        ledger = Ledger()
        reader = MatrixReader(
            stack.matrix,
            [p.matrix_room for p in stack.pairs],
            since=await stack.matrix.sync_token(),
            is_bridge=stack.is_bridge,
        )
        log = LogScan(stack.daemon.log_path)
        sampler = Sampler(stack, ledger, reader, log)
        cpu_before = cpu_by_process(stack)
        samples = await _load(options, Traffic(stack, options.traffic, ledger), sampler)
        cpu_after = cpu_by_process(stack)
        settled_s = await _settle(options, stack, sampler)
        checks = delivery_checks(ledger, reader, *teams_tokens(stack))
        runs = await sampler.runs()
        emulator = stack.emulator
        pacing = (
            f"{len(emulator.connector_calls)} connector calls, "
            f"{len(emulator.violations)} limit violations, "
            f"{sum(1 for c in emulator.connector_calls if c.rate_limited)} answered 429"
        )
        log.read_new()
        before_stop = log.exceptions
        exit_code = await stack.daemon.stop()
        log.read_new()
    warmup_s = options.warmup_minutes * 60
    return Outcome(
        minutes=options.minutes,
        warmup_minutes=options.warmup_minutes,
        window_s=options.window_s,
        samples=samples,
        growths=resource_growths(
            samples, warmup_s=warmup_s, window_s=options.window_s, limit_pct=options.limit_pct
        ),
        checks=tuple(checks),
        runs=runs,
        exit_code=exit_code,
        log=log,
        exceptions_at_shutdown=log.exceptions - before_stop,
        ledger=ledger,
        pacing=pacing,
        settled_s=settled_s,
        fds_at_warm_up=Counter(dict([s for s in samples if s.offset_s <= warmup_s][-1].fd_kinds)),
        fds_at_end=Counter(dict(samples[-1].fd_kinds)),
        cpu_s={name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after},
        load_average=os.getloadavg(),
    )


def _arguments(argv: list[str] | None = None) -> tuple[SoakOptions, bool, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=22.0, help="length of the load")
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        help="seconds before each end whose samples give its median (default: 4 intervals)",
    )
    parser.add_argument("--rate", type=float, default=5.0, help="Teams -> Matrix msg/s")
    parser.add_argument("--teams-rate", type=float, default=5.0, help="Matrix -> Teams msg/s")
    parser.add_argument("--rooms", type=int, default=16, help="linked room pairs")
    parser.add_argument("--edit-every", type=int, default=20, help="edit every Nth message")
    parser.add_argument("--react-every", type=int, default=20, help="react to every Nth")
    parser.add_argument("--runbook-every", type=float, default=60.0, help="seconds; 0: none")
    parser.add_argument("--newcomer-every", type=float, default=60.0, help="seconds; 0: none")
    parser.add_argument("--settle", type=float, default=180.0, help="wait for stragglers, s")
    parser.add_argument("--limit", type=float, default=10.0, help="growth limit, %%")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    args = parser.parse_args(argv)
    if not 0 < args.warmup_minutes < args.minutes:
        parser.error("--warmup-minutes must be positive and less than --minutes")
    if args.interval <= 0 or args.interval > args.warmup_minutes * 60:
        parser.error("--interval must be positive and at most the warm-up")
    if args.rooms < 1 or args.edit_every < 1 or args.react_every < 1:
        parser.error("--rooms, --edit-every and --react-every must be at least 1")
    per_conversation = (
        args.teams_rate / args.rooms * (1 + 1 / args.edit_every + 1 / args.react_every)
    )
    if per_conversation > TEAMS_HOURLY_RATE:
        parser.error(
            f"{per_conversation:.2f} Teams calls/s per conversation is over Teams' hourly"
            f" limit ({TEAMS_HOURLY_RATE}/s): use more --rooms or a lower --teams-rate"
        )
    options = SoakOptions(
        minutes=args.minutes,
        warmup_minutes=args.warmup_minutes,
        interval_s=args.interval,
        window_s=args.window if args.window is not None else WINDOW_INTERVALS * args.interval,
        rooms=args.rooms,
        settle_s=args.settle,
        limit_pct=args.limit,
        traffic=TrafficOptions(
            to_matrix_rate=args.rate,
            to_teams_rate=args.teams_rate,
            edit_every=args.edit_every,
            react_every=args.react_every,
            runbook_every_s=args.runbook_every,
            newcomer_every_s=args.newcomer_every,
        ),
    )
    return options, args.keep, args.workdir


async def _run(options: SoakOptions, workdir: Path) -> Outcome:
    """The soak, cancelled (and so cleaned up, in order) by the first SIGINT or SIGTERM;
    later ones are ignored so that the clean-up is not cut short."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, _cancel_once, task)
    try:
        return await soak(options, workdir)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _cancel_once(task: asyncio.Task[Outcome]) -> None:
    if not task.cancelling():
        print("\nstopping: the daemon, then every server (wait)", file=sys.stderr, flush=True)
        task.cancel()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def main(argv: list[str] | None = None) -> int:
    options, keep, given = _arguments(argv)
    if given is not None and given.exists() and any(given.iterdir()):
        print(f"--workdir {given} is not empty", file=sys.stderr)
        return 2
    workdir = given or Path(tempfile.mkdtemp(prefix="bench-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    traffic = options.traffic
    print(
        f"R13 soak: {options.minutes:g} min (warm-up {options.warmup_minutes:g}), "
        f"{traffic.to_matrix_rate:g} msg/s Teams -> Matrix and {traffic.to_teams_rate:g} msg/s "
        f"Matrix -> Teams over {options.rooms} room pairs, a runbook every "
        f"{traffic.runbook_every_s:g} s, samples every {options.interval_s:g} s"
    )
    print(
        f"  the daemon (python -m bridge run) against SecantusDB {version('secantusdb')} "
        f"(retryable writes off), Synapse {version('matrix-synapse')} (real, SQLite) and the "
        f"Teams emulator (rate limits on), on loopback; working directory {workdir}"
    )
    print(machine_line(), flush=True)
    code = 2
    try:
        outcome = asyncio.run(_run(options, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: the daemon and every server started were stopped", file=sys.stderr)
        code = 130
    except Exception as exc:  # noqa: BLE001 - reported with the working directory kept
        for leaf in _leaves(exc):
            print(f"the soak could not run: {type(leaf).__name__}: {leaf}", file=sys.stderr)
    else:
        print(report(outcome), flush=True)
        code = 0 if outcome.passed else 1
    if code == 0 and not keep and given is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"working directory kept: {workdir}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
