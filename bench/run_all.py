"""Run P1, P2 and P3 one after the other and print a summary table.

Each benchmark builds its own load process, fresh SecantusDB and bridge, so the
figures do not depend on the order. With the defaults the whole run takes
about a quarter of an hour; ``--quick`` shortens every benchmark for a try (its
figures are not the benchmarks' definitions: P2 is defined over 60 s).

Run: .venv/bin/python -m bench.run_all [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench import p1_latency, p2_throughput, p3_backlog
from bench.pipeline import quiet_logging
from bench.protocol import Direction
from bench.stats import SummaryRow, machine_line, summary_table


async def run(*, quick: bool) -> list[SummaryRow]:
    started = time.perf_counter()
    rows: list[SummaryRow] = []
    p1 = await p1_latency.run(seconds=10.0 if quick else 30.0)
    rows += p1.summary_rows()
    print(flush=True)
    p2 = await p2_throughput.run(seconds=15.0 if quick else 60.0)
    rows += p2.summary_rows()
    print(flush=True)
    for direction in Direction:
        p3 = await p3_backlog.run(entries=2000 if quick else 6000, direction=direction)
        rows += p3.summary_rows()
        print(flush=True)
    print(
        f"Summary ({'quick run' if quick else 'full run'}, {time.perf_counter() - started:.0f} s)"
    )
    print(machine_line())
    print(summary_table(rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a try")
    args = parser.parse_args()
    quiet_logging()
    asyncio.run(run(quick=args.quick))


if __name__ == "__main__":
    main()
