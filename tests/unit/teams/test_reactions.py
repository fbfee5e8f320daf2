"""The reaction line: rendering, the record behind it, edits keeping it, the reply under a
Teams user's message, and a restart in between."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from adapters.teams.ids import TeamsActivityID
from adapters.teams.reactions import (
    ReactionDresser,
    ReactionRecords,
    Reactor,
    TeamsReactions,
    dressed,
    reaction_line,
)
from adapters.teams.records import ActivityLayout, LayoutLine, MemoryLayouts
from adapters.teams.render import Content, MediaAttachment, activity_size
from bridge.model import (
    Attachment,
    Body,
    EventID,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RemoteUserID,
    RoomRef,
    Sender,
    TimelineEvent,
)
from bridge.ports import OutboundMessage
from bridge.timeline.memory import MemoryStateStore, MemoryTimelineStore
from tests.support.fakes import ALICE, EventBuilder, FakeClock

CHANNEL = "19:ops@thread.tacv2"
THREAD = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(f"{CHANNEL};messageid=1700"))
ROOM = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID(CHANNEL))
BOB = Sender(platform=Platform.MATRIX, user_id=RemoteUserID("@bob:example.org"), display_name="Bob")
DANA = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-dana"), display_name="Dana")
HEADER = "<b>Alice</b> <i>(Matrix)</i>: "


@dataclass
class FakeSender:
    """The sender as the reaction line sees it: updates are dressed as the real one does."""

    dresser: ReactionDresser
    layouts: MemoryLayouts = field(default_factory=MemoryLayouts)
    max_activity_bytes: int = 80_000
    shown: dict[str, Content] = field(default_factory=dict)
    posted: list[OutboundMessage] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef:
        self.posted.append(message)
        return RemoteRef(room=message.target, message_id=RemoteMessageID(f"90{len(self.posted)}"))

    async def update(
        self, target: RemoteRef, content: Content, *, idempotency_key: str, dressed: bool = True
    ) -> None:
        if dressed:
            content = await self.dresser.dress(CHANNEL, TeamsActivityID(target.message_id), content)
        self.shown[target.message_id] = content

    async def delete(
        self, target: RemoteRef, *, idempotency_key: str, original: EventID | None = None
    ) -> None:
        self.deleted.append(target.message_id)


@dataclass
class Line:
    state: MemoryStateStore
    timeline: MemoryTimelineStore
    sender: FakeSender
    reactions: TeamsReactions
    builder: EventBuilder

    def restarted(self) -> Line:
        """The same stores, everything else new (as after a restart)."""
        return line_over(self.state, self.timeline, self.builder)

    async def stored(self, event: TimelineEvent) -> TimelineEvent:
        await self.timeline.append(event, [])
        return event


def line_over(
    state: MemoryStateStore, timeline: MemoryTimelineStore, builder: EventBuilder
) -> Line:
    records = ReactionRecords(state)
    sender = FakeSender(ReactionDresser(records, max_activity_bytes=80_000))
    reactions = TeamsReactions(records=records, timeline=timeline, sender=sender, clock=FakeClock())
    return Line(state, timeline, sender, reactions, builder)


@pytest.fixture
def line() -> Line:
    clock = FakeClock()
    return line_over(MemoryStateStore(), MemoryTimelineStore(clock=clock), EventBuilder(clock))


def posted_at(activity_id: str) -> RemoteRef:
    return RemoteRef(room=ROOM, message_id=RemoteMessageID(activity_id))


def test_the_line_groups_names_by_key_in_the_order_they_came() -> None:
    reactors = [
        Reactor(key="👍", user_id="@a", name="Alice"),
        Reactor(key="🎉", user_id="@c", name="Carol"),
        Reactor(key="👍", user_id="@b", name="Bob"),
    ]
    assert reaction_line(reactors) == "👍 Alice, Bob · 🎉 Carol"
    assert reaction_line(reactors, names=False) == "👍 2 · 🎉 1"
    many = [Reactor(key="👀", user_id=f"@{n}", name=f"U{n}") for n in range(11)]
    assert reaction_line(many) == "👀 U0, U1, U2, U3, U4, U5, U6, U7 +3"


def test_the_line_gives_way_to_counts_then_to_the_message_when_space_runs_out() -> None:
    content = Content(html="x" * 1000)
    reactors = [Reactor(key="👍", user_id=f"@u{n}", name="N" * 40) for n in range(8)]
    full = dressed(content, reactors, max_bytes=100_000)
    assert full.html.startswith("x" * 1000 + "<br>👍 NNN")
    budget = activity_size(content) + 30
    assert dressed(content, reactors, max_bytes=budget).html.endswith("<br>👍 8")
    assert dressed(content, reactors, max_bytes=activity_size(content)) == content


async def test_reactions_on_the_bots_message_keep_one_line_up_to_date(line: Line) -> None:
    message = await line.stored(line.builder.message("restarting db-1"))
    target = posted_at("1800")

    async def react(sender: Sender, key: str) -> None:
        await line.reactions.react(target, sender, key, idempotency_key="k", original=message.id)

    await react(ALICE, "👍")
    await react(ALICE, "👍")  # a redelivery changes nothing
    await react(BOB, "👍")
    await react(BOB, "🎉")
    assert line.sender.shown["1800"].html == f"{HEADER}restarting db-1<br>👍 Alice, Bob · 🎉 Bob"
    await line.reactions.unreact(target, ALICE, "👍", idempotency_key="k", original=message.id)
    assert line.sender.shown["1800"].html == f"{HEADER}restarting db-1<br>👍 Bob · 🎉 Bob"
    for key in ("👍", "🎉"):
        await line.reactions.unreact(target, BOB, key, idempotency_key="k", original=message.id)
    assert line.sender.shown["1800"].html == f"{HEADER}restarting db-1"
    assert line.sender.posted == []


async def test_an_edit_keeps_the_line_and_the_images_also_after_a_restart(line: Line) -> None:
    image = Attachment(
        name="graph.png", mime_type="image/png", url="https://bridge.example/media/t", is_image=True
    )
    message = await line.stored(
        replace(line.builder.message("graph"), body=Body(text="graph", attachments=(image,)))
    )
    target = posted_at("1801")
    await line.reactions.remember_sent(target, OutboundMessage(event=message, target=ROOM))
    await line.reactions.react(target, BOB, "👀", idempotency_key="k", original=message.id)
    shown = line.sender.shown["1801"]
    assert shown.html == f"{HEADER}graph<br>👀 Bob"
    assert shown.attachments == (
        MediaAttachment(
            content_type="image/png", content_url="https://bridge.example/media/t", name="graph.png"
        ),
    )

    later = line.restarted()
    edited = await later.sender.dresser.dress(
        CHANNEL, TeamsActivityID("1801"), Content(html=f"{HEADER}better graph")
    )
    assert edited.html == f"{HEADER}better graph<br>👀 Bob"
    assert edited.attachments == shown.attachments
    await later.reactions.react(target, ALICE, "👀", idempotency_key="k", original=message.id)
    assert later.sender.shown["1801"].html == f"{HEADER}better graph<br>👀 Bob, Alice"


async def test_a_combined_activity_gets_one_line_under_all_its_lines(line: Line) -> None:
    first, second = line.builder.message("one"), line.builder.message("two")
    await line.sender.layouts.put(
        ActivityLayout(
            conversation_key=CHANNEL,
            parts=(TeamsActivityID("1802"),),
            lines=tuple(
                LayoutLine(event_id=e.id, origin=None, sender=None, html=f"{HEADER}{e.body.text}")
                for e in (first, second)
            ),
        )
    )
    await line.reactions.react(posted_at("1802"), BOB, "👍", idempotency_key="k", original=None)
    assert line.sender.shown["1802"].html == f"{HEADER}one<br>{HEADER}two<br>👍 Bob"


async def test_reactions_on_a_teams_users_message_live_in_one_reply(line: Line) -> None:
    post = RemoteRef(room=THREAD, message_id=RemoteMessageID("1750"))
    message = await line.stored(
        replace(line.builder.message("disk full on db-3"), origin=post, sender=DANA)
    )

    async def change(sender: Sender, key: str, *, add: bool) -> None:
        call = line.reactions.react if add else line.reactions.unreact
        await call(post, sender, key, idempotency_key="k", original=message.id)

    await change(ALICE, "👍", add=True)
    (reply,) = line.sender.posted
    assert reply.target == THREAD
    assert reply.reply_to == "1750"
    assert reply.event.body.text == "on Dana's message “disk full on db-3”\n👍 Alice"

    await change(BOB, "🎉", add=True)
    assert len(line.sender.posted) == 1
    assert line.sender.shown["901"].html.endswith("<br>👍 Alice · 🎉 Bob")

    later = line.restarted()
    await later.reactions.unreact(post, ALICE, "👍", idempotency_key="k", original=message.id)
    await later.reactions.unreact(post, BOB, "🎉", idempotency_key="k", original=message.id)
    assert later.sender.deleted == ["901"]
    await later.reactions.unreact(post, BOB, "🎉", idempotency_key="k", original=message.id)
    assert later.sender.deleted == ["901"]  # taking back twice is harmless
    assert later.sender.posted == []
