"""One measured load: the load process, a fresh database, the bridge, a warm-up, the load.

The warm-up posts one message per room in each direction and waits for them to
arrive, so the measured load meets no first-time cost (signing keys, the
outbound token, ghost registration and joins, display names, conversation
references). It is not part of the figures.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from bench.driver import Driver
from bench.pipeline import (
    Stamps,
    StoreKind,
    bridge_settings,
    fresh_mongo,
    room_links,
    running_bridge,
)
from bench.profiling import CpuMeter, CpuUse, Profiler, RoundTrips
from bench.protocol import Load, LoadReport, WorldSpec
from devtools.servers import MongoServer

WARM_UP_SEQ: Final = 900_000_000
WARM_UP_RATE: Final = 20.0
"""Warm-up messages per second (per direction), within every Teams limit."""
WARM_UP_SETTLE_S: Final = 60.0
UNUSED_MONGO_URI: Final = "mongodb://127.0.0.1:9/?directConnection=true"
"""The settings need a URI; the bare relay never connects to it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Measured:
    report: LoadReport
    stamps: Stamps
    cpu: CpuUse
    round_trips: RoundTrips | None
    """Set when round trips were counted."""
    profile: str | None
    """The cProfile summary of a profiled run."""


@contextmanager
def database(kind: StoreKind) -> Iterator[MongoServer | None]:
    if kind is StoreKind.MEMORY:
        yield None
        return
    with fresh_mongo() as server:
        yield server


async def measure_load(
    *,
    store_kind: StoreKind,
    rooms: int,
    load: Load,
    teams_rate_limits: bool = True,
    retry_writes: bool = False,
    trips: bool = False,
    profile: bool = False,
) -> Measured:
    """Run ``load`` through a freshly built bridge and return what happened.

    ``trips`` counts the MongoDB round trips of the load; ``profile`` also runs
    cProfile over it (which slows the bridge).
    """
    hs_token, as_token = secrets.token_hex(16), secrets.token_hex(16)
    spec = WorldSpec(rooms=rooms, hs_token=hs_token, teams_rate_limits=teams_rate_limits)
    counter = RoundTrips() if trips or profile else None
    async with Driver(spec) as driver:
        with database(store_kind) as server:
            settings = bridge_settings(
                driver.world,
                hs_token=hs_token,
                as_token=as_token,
                mongo_uri=server.uri if server is not None else UNUSED_MONGO_URI,
            )
            async with running_bridge(
                settings,
                store_kind=store_kind,
                links=room_links(driver.world),
                retry_writes=retry_writes,
                listeners=[counter] if counter is not None else [],
            ) as bridge:
                await driver.attach(bridge.url)
                await warm_up(driver, rooms)
                if counter is not None:
                    counter.reset()
                profiler = Profiler() if profile else None
                meter = CpuMeter(
                    load_pid=driver.pid, database_pid=server.pid if server is not None else None
                )
                if profiler is not None:
                    profiler.start()
                report = await driver.load(load)
                if profiler is not None:
                    profiler.stop()
                cpu = meter.stop()
    return Measured(
        report=report,
        stamps=bridge.stamps,
        cpu=cpu,
        round_trips=counter,
        profile=profiler.top() if profiler is not None else None,
    )


async def warm_up(driver: Driver, rooms: int) -> None:
    """One message per room into Matrix, then one per room into Teams; all must arrive."""
    seconds = rooms / WARM_UP_RATE
    for to_matrix, to_teams, first in (
        (WARM_UP_RATE, 0.0, WARM_UP_SEQ),
        (0.0, WARM_UP_RATE, WARM_UP_SEQ + rooms),
    ):
        report = await driver.load(
            Load(
                to_matrix_rate=to_matrix,
                to_teams_rate=to_teams,
                seconds=seconds,
                first_seq=first,
                settle_s=WARM_UP_SETTLE_S,
            )
        )
        if not report.complete:
            refused = [s for s in report.sent if s.status != 200]
            raise RuntimeError(
                f"the warm-up did not get through the bridge ({len(refused)} refused)"
            )
