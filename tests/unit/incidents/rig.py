"""The incident command layer as the daemon builds it, on in-memory stores and fake adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bridge.commands.permissions import Authorizer
from bridge.commands.processor import CommandProcessor
from bridge.commands.queue import CommandQueue
from bridge.commands.registry import CommandRegistry
from bridge.config.core import CommandSettings, IncidentSettings, OperatorSettings
from bridge.ids import UlidFactory
from bridge.incidents.commands import IncidentCommands
from bridge.incidents.memory_store import MemoryIncidentStore
from bridge.incidents.model import Action, Incident, IncidentChange, change_from
from bridge.incidents.reactions import KeyEventReactions
from bridge.incidents.service import IncidentService
from bridge.links import LinkService
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    Body,
    InboundEvent,
    IncidentID,
    Kind,
    Platform,
    Relation,
    RelationKind,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomLink,
    RoomRef,
    Sender,
    TimelineEvent,
)
from bridge.notices import BRIDGE_ROOM
from bridge.ports import IncidentStore
from bridge.relay.intake import Intake
from bridge.timeline.memory import MemoryTimelineStore
from tests.support.adapters import FakeRoomAdapter
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM, FakeClock

TEAMS_CHANNEL = "19:incidents@thread.tacv2"
RESPONDER = "@oncall:example.org"
OLGA = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-olga"), display_name="Olga")
"""A Teams operator."""
BOB = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-bob"), display_name="Bob Smith")
BOB_IMPOSTOR = Sender(
    platform=Platform.TEAMS, user_id=RemoteUserID("aad-other"), display_name="Bob Smith"
)
CAROL = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@carol:example.org"), display_name="Carol"
)
DAVE = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@dave:example.org"), display_name="Dave"
)

PAGE_BASE = "https://bridge.example.org"
"""Where the incident pages of the rig's incidents are."""


@dataclass
class Rig:
    clock: FakeClock
    store: MemoryTimelineStore
    incidents: IncidentStore
    service: IncidentService
    intake: Intake
    queue: CommandQueue
    matrix: FakeRoomAdapter
    teams: FakeRoomAdapter
    metrics: BridgeMetrics
    links: LinkService
    counter: list[int]

    async def say(
        self,
        text: str,
        *,
        sender: Sender = ALICE,
        room: RoomRef = MATRIX_ROOM,
        mentions: tuple[Sender, ...] = (),
        relations: tuple[Relation, ...] = (),
    ) -> TimelineEvent:
        """Post a message as if it came from the platform; wait for its command to run."""
        event = await self._arrive(
            Kind.MESSAGE, room, sender, Body(text=text, mentions=mentions), relations
        )
        await self.queue.drain()
        return event

    async def react(self, target: TimelineEvent, key: str, *, sender: Sender) -> TimelineEvent:
        relation = Relation(kind=RelationKind.REACTION, target=target.origin, key=key)
        return await self._arrive(Kind.REACTION, target.origin.room, sender, Body(), (relation,))

    async def _arrive(
        self,
        kind: Kind,
        room: RoomRef,
        sender: Sender,
        body: Body,
        relations: tuple[Relation, ...],
    ) -> TimelineEvent:
        self.counter[0] += 1
        parent: RoomRef | None = None
        data: dict[str, str] = {}
        if room.platform is Platform.TEAMS and ";messageid=" in room.room_id:
            # A channel thread, as the Teams adapter describes one.
            channel, root = room.room_id.split(";messageid=", 1)
            parent = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(channel))
            data = {"teams_channel": channel, "teams_thread_root": root}
        (result,) = await self.intake.accept(
            [
                InboundEvent(
                    kind=kind,
                    origin=RemoteRef(room=room, message_id=RemoteMessageID(f"m{self.counter[0]}")),
                    sender=sender,
                    occurred_at=self.clock.now(),
                    body=body,
                    relations=relations,
                    parent_room=parent,
                    data=data,
                )
            ]
        )
        assert result is not None
        return result.event

    async def link(self, matrix_room: RoomRef, teams_room: RoomRef) -> None:
        await self.links.link(
            RoomLink(matrix_room=matrix_room, teams_room=teams_room, created_at=self.clock.now()),
            by=ALICE,
        )

    async def replies(self) -> list[TimelineEvent]:
        return list((await self.store.timeline(room=BRIDGE_ROOM, limit=1000)).events)

    async def last_reply(self) -> TimelineEvent:
        return [r for r in await self.replies() if "in_reply_to" in r.data][-1]

    async def last_text(self) -> str:
        return (await self.last_reply()).body.text

    async def incident(self, number: int = 1) -> Incident:
        found = await self.incidents.get(IncidentID(f"INC-{number}"))
        assert found is not None
        return found

    async def changes(self, number: int = 1) -> list[tuple[TimelineEvent, IncidentChange]]:
        page = await self.store.timeline(incident_id=IncidentID(f"INC-{number}"), limit=1000)
        found = []
        for event in page.events:
            if event.kind is Kind.INCIDENT:
                change = change_from(event.data)
                assert change is not None
                found.append((event, change))
        return found

    async def actions(self, number: int = 1) -> list[Action]:
        return [change.action for _, change in await self.changes(number)]

    @property
    def matrix_room(self) -> RoomRef:
        return self.matrix.created[-1].room

    @property
    def teams_room(self) -> RoomRef:
        return self.teams.created[-1].room

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return value or 0.0


@asynccontextmanager
async def build_rig(
    *,
    incidents: IncidentStore | None = None,
    declare_rooms: Sequence[str] = (),
    teams_channel: str | None = TEAMS_CHANNEL,
) -> AsyncIterator[Rig]:
    clock = FakeClock()
    store = MemoryTimelineStore(clock=clock)
    incident_store = incidents or MemoryIncidentStore()
    ids = UlidFactory()
    metrics = BridgeMetrics()
    matrix = FakeRoomAdapter(Platform.MATRIX, own_user_prefix="@teams_")
    teams = FakeRoomAdapter(
        Platform.TEAMS, own_user_prefix="bridge-bot", teams_channel=TEAMS_CHANNEL
    )
    adapters = [matrix, teams]
    settings = IncidentSettings(
        matrix_responders=(RESPONDER,),
        teams_channel=teams_channel,
        declare_rooms=tuple(declare_rooms),
        key_event_reaction="📌",
    )
    forget: list[Intake] = []

    def links_changed() -> None:
        for intake in forget:
            intake.forget_links()

    links = LinkService(
        store=store, clock=clock, ids=ids, adapters=adapters, on_change=links_changed
    )
    service = IncidentService(
        store=store,
        incidents=incident_store,
        links=links,
        clock=clock,
        ids=ids,
        metrics=metrics,
        adapters={a.platform: a for a in adapters},
        settings=settings,
        page_link=lambda incident_id: f"{PAGE_BASE}/incidents/{incident_id}?key=k",
    )
    registry = CommandRegistry()
    commands = IncidentCommands(service=service, settings=settings)
    commands.register(registry)
    processor = CommandProcessor(
        store=store,
        clock=clock,
        ids=ids,
        registry=registry,
        authorizer=Authorizer(
            CommandSettings(
                operators=OperatorSettings(matrix=(ALICE.user_id,), teams=(OLGA.user_id,))
            ),
            {a.platform: a for a in adapters},
            commander=commands.is_commander,
        ),
        metrics=metrics,
    )
    queue = CommandQueue(processor)
    key_events = KeyEventReactions(service=service, key=settings.key_event_reaction)

    async def on_stored(results: Sequence[AppendResult]) -> None:
        await key_events.offer(results)
        await queue.offer(results)

    intake = Intake(
        store=store, clock=clock, ids=ids, metrics=metrics, adapters=adapters, on_stored=on_stored
    )
    forget.append(intake)
    # The ops rooms: a linked pair where incidents are declared.
    await links.link(
        RoomLink(matrix_room=MATRIX_ROOM, teams_room=TEAMS_ROOM, created_at=clock.now()), by=ALICE
    )
    queue.start()
    try:
        yield Rig(
            clock=clock,
            store=store,
            incidents=incident_store,
            service=service,
            intake=intake,
            queue=queue,
            matrix=matrix,
            teams=teams,
            metrics=metrics,
            links=links,
            counter=[0],
        )
    finally:
        await queue.stop()
