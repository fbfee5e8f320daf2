"""The link table: lookups waiting on one read share its outcome, a failure too."""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import StoreError
from bridge.model import RoomLink
from bridge.relay.link_table import LinkTable
from bridge.timeline.memory import MemoryTimelineStore
from tests.support.fakes import MATRIX_ROOM, TEAMS_ROOM, FakeClock

LOOKUPS = 10
WITHIN_S = 5.0


class SlowLinks(MemoryTimelineStore):
    """Each read of the links waits for ``release``, as a read of a database that is down
    waits for the driver's server-selection timeout."""

    def __init__(self) -> None:
        super().__init__(clock=FakeClock())
        self.reads = 0
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def all_links(self) -> list[RoomLink]:
        self.reads += 1
        self.reading.set()
        await self.release.wait()
        return await super().all_links()


async def test_lookups_waiting_on_a_failed_read_fail_with_it_instead_of_reading_in_turn() -> None:
    store = SlowLinks()
    await store.save_link(
        RoomLink(matrix_room=MATRIX_ROOM, teams_room=TEAMS_ROOM, created_at=FakeClock().now())
    )
    table = LinkTable(store, max_age_s=1.0)
    store.available = False
    lookups = [
        asyncio.get_running_loop().create_task(table.links_of(MATRIX_ROOM)) for _ in range(LOOKUPS)
    ]
    await asyncio.wait_for(store.reading.wait(), WITHIN_S)
    store.release.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*lookups, return_exceptions=True), WITHIN_S)
    assert all(isinstance(o, StoreError) for o in outcomes), outcomes
    assert store.reads == 1

    with pytest.raises(StoreError):  # a lookup after the failure reads again
        await asyncio.wait_for(table.links_of(MATRIX_ROOM), WITHIN_S)
    assert store.reads == 2
    store.available = True
    links = await asyncio.wait_for(table.links_of(MATRIX_ROOM), WITHIN_S)
    assert [link.teams_room for link in links] == [TEAMS_ROOM]
    assert store.reads == 3
