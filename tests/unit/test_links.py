from __future__ import annotations

from dataclasses import dataclass, field

from bridge.ids import UlidFactory
from bridge.links import CONFIGURATION, LinkService
from bridge.model import Kind, Platform, RoomLink
from bridge.timeline.memory import MemoryTimelineStore
from tests.support.adapters import FakeAdapter
from tests.support.fakes import MATRIX_ROOM, TEAMS_ROOM, FakeClock


@dataclass
class AnnouncingAdapter(FakeAdapter):
    announced: list[RoomLink] = field(default_factory=list)

    async def announce_link(self, link: RoomLink) -> None:
        self.announced.append(link)


async def test_link_is_stored_recorded_in_both_rooms_and_announced_once() -> None:
    clock = FakeClock()
    store = MemoryTimelineStore(clock=clock)
    matrix = AnnouncingAdapter(Platform.MATRIX)
    service = LinkService(
        store=store, clock=clock, ids=UlidFactory(), adapters=[matrix, FakeAdapter(Platform.TEAMS)]
    )
    link = RoomLink(matrix_room=MATRIX_ROOM, teams_room=TEAMS_ROOM, created_at=clock.now())

    await service.link(link, by=CONFIGURATION)
    await service.link(link, by=CONFIGURATION)  # a restart with the same settings

    assert await store.all_links() == [link]
    assert matrix.announced == [link]
    for room in (MATRIX_ROOM, TEAMS_ROOM):
        (record,) = (await store.timeline(room=room)).events
        assert record.kind is Kind.NOTICE
        assert record.data["action"] == "linked"
        assert record.sender == CONFIGURATION

    await service.unlink(link, by=CONFIGURATION)
    assert await store.all_links() == []
    assert [e.data["action"] for e in (await store.timeline(room=MATRIX_ROOM)).events] == [
        "linked",
        "unlinked",
    ]
