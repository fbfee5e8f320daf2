"""Baseline figures of the timeline store against a real MongoDB-protocol server.

Prints the raw single-insert rate of the driver (journaled, one document per
round trip) and the latency of ``TimelineStore.append`` with one outbox target
(the durable write that precedes every platform acknowledgement), p50/p95/p99.
Later benchmarks compare their per-hop figures with these.

Run: .venv/bin/python -m bench.store_baseline [--count N]
A fresh server is started for the run (the server slows down after ~10,000
retryable writes, so each figure gets its own database and the run stays short).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from bridge.clock import SystemClock
from bridge.ids import UlidFactory
from bridge.model import (
    Body,
    EventID,
    Kind,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
    TimelineEvent,
)
from bridge.timeline.mongo import MongoTimelineStore
from devtools.servers import MongoServer

ROOM = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!bench:localhost"))
TARGET = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:bench@thread.tacv2"))
SENDER = Sender(platform=Platform.MATRIX, user_id=RemoteUserID("@b:localhost"), display_name="B")


def _percentiles(samples_s: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples_s)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"p50 {q[49]:.2f} ms  p95 {q[94]:.2f} ms  p99 {q[98]:.2f} ms  (n={len(ms)})"


async def _raw_inserts(client: AsyncMongoClient[dict[str, Any]], count: int) -> float:
    collection = client.get_database("bench_raw", write_concern=WriteConcern(w=1, j=True))["docs"]
    started = time.perf_counter()
    for i in range(count):
        await collection.insert_one({"i": i, "text": "x" * 200})
    return count / (time.perf_counter() - started)


async def _appends(client: AsyncMongoClient[dict[str, Any]], count: int) -> list[float]:
    clock = SystemClock()
    store = MongoTimelineStore(
        client, "bench_store", clock=clock, write_concern=WriteConcern(w="majority", j=True)
    )
    await store.ensure_indexes()
    ids = UlidFactory()
    samples = []
    for i in range(count):
        now = datetime.now(UTC)
        event = TimelineEvent(
            id=EventID(ids.new()),
            incident_id=None,
            kind=Kind.MESSAGE,
            origin=RemoteRef(room=ROOM, message_id=RemoteMessageID(f"$bench{i}")),
            origin_variant="",
            sender=SENDER,
            body=Body(text="x" * 200),
            occurred_at=now,
            received_at=now,
        )
        started = time.perf_counter()
        await store.append(event, [TARGET])
        samples.append(time.perf_counter() - started)
    return samples


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, MongoServer(Path(tmp) / "db") as server:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(server.uri, tz_aware=True)
        try:
            await client.admin.command("ping")
            await _raw_inserts(client, 100)  # warm-up
            rate = await _raw_inserts(client, count)
            samples = await _appends(client, count)
        finally:
            await client.close()
    print(
        f"machine: {platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}, date {datetime.now(UTC):%Y-%m-%d}"
    )
    print(f"raw single insert (j=true):          {rate:,.0f} inserts/s")
    print(f"timeline append (event + 1 outbox):  {_percentiles(samples)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    asyncio.run(main(parser.parse_args().count))
