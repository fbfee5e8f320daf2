"""Dispatch decisions: reactions and their removal, media carried or noted, edits text-only.

Events are stored through the real intake (so relations resolve as in production)
into the in-memory store; the target adapters are fakes that record the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from bridge.errors import MediaTooLargeError, PermanentDeliveryError, RetryableDeliveryError
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    Attachment,
    Body,
    EventID,
    InboundEvent,
    Kind,
    Mirror,
    MirrorStatus,
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
    ThreadStyle,
    TimelineEvent,
)
from bridge.ports import (
    ChatAdapter,
    OutboundMessage,
    SupportsMedia,
    SupportsReactionRemoval,
    SupportsReactions,
)
from bridge.relay.delivery import idempotency_key
from bridge.relay.dispatch import Dispatcher
from bridge.relay.intake import Intake
from bridge.timeline.memory import MemoryTimelineStore
from tests.support.adapters import FakeAdapter
from tests.support.fakes import ALICE, MATRIX_ROOM, FakeClock

CHANNEL = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:ops@thread.tacv2"))
THREAD = RoomRef(
    platform=Platform.TEAMS, room_id=RemoteRoomID("19:ops@thread.tacv2;messageid=1700")
)
DANA = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-dana"), display_name="Dana")
ERIN = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-erin"), display_name="Erin")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@dataclass
class Calls:
    """What the fakes were asked to do, in order."""

    log: list[tuple[str, Any]] = field(default_factory=list)

    def of(self, name: str) -> list[Any]:
        return [args for called, args in self.log if called == name]


@dataclass
class MatrixSide(FakeAdapter):
    """Reactions as ghosts, removal only by redacting (no ``unreact``), media repository."""

    calls: Calls = field(default_factory=Calls)
    max_media_bytes: int = 1024
    files: dict[str, bytes] = field(default_factory=dict)

    async def react(
        self,
        target: RemoteRef,
        sender: Sender,
        key: str,
        *,
        idempotency_key: str,
        original: EventID | None = None,
    ) -> RemoteRef | None:
        self.calls.log.append(("react", (target, sender.user_id, key)))
        return RemoteRef(room=target.room, message_id=RemoteMessageID(f"$r{len(self.calls.log)}"))

    async def redact(
        self,
        target: RemoteRef,
        sender: Sender,
        *,
        idempotency_key: str,
        original: EventID | None = None,
    ) -> None:
        self.calls.log.append(("redact", (target, sender.user_id)))

    async def download(self, attachment: Attachment, *, max_bytes: int) -> bytes:
        self.calls.log.append(("download", (attachment.url, max_bytes)))
        data = self.files[attachment.url]
        if len(data) > max_bytes:
            raise MediaTooLargeError(size=None, limit=max_bytes)
        return data

    async def upload(self, data: bytes, attachment: Attachment) -> Attachment:
        self.calls.log.append(("upload", (len(data), attachment)))
        return replace(attachment, url=f"mxc://hs/{len(self.calls.log)}")


@dataclass
class TeamsSide(FakeAdapter):
    """Reactions on the bot's line (``react`` returns nothing), ``unreact``, media host."""

    calls: Calls = field(default_factory=Calls)
    max_media_bytes: int = 4096
    files: dict[str, bytes] = field(default_factory=dict)
    download_error: Exception | None = None

    async def react(
        self,
        target: RemoteRef,
        sender: Sender,
        key: str,
        *,
        idempotency_key: str,
        original: EventID | None = None,
    ) -> RemoteRef | None:
        self.calls.log.append(("react", (target, sender.user_id, key, original)))
        return None

    async def unreact(
        self,
        target: RemoteRef,
        sender: Sender,
        key: str,
        *,
        idempotency_key: str,
        original: EventID | None = None,
        reaction: RemoteRef | None = None,
    ) -> RemoteRef | None:
        self.calls.log.append(("unreact", (target, sender.user_id, key, original, reaction)))
        return None

    async def edit(
        self, target: RemoteRef, message: OutboundMessage, *, idempotency_key: str
    ) -> None:
        self.calls.log.append(("edit", (target, message)))

    async def download(self, attachment: Attachment, *, max_bytes: int) -> bytes:
        self.calls.log.append(("download", (attachment.url, max_bytes)))
        if self.download_error is not None:
            raise self.download_error
        return self.files[attachment.url]

    async def upload(self, data: bytes, attachment: Attachment) -> Attachment:
        self.calls.log.append(("upload", (len(data), attachment)))
        return replace(attachment, url=f"https://bridge.example/media/t{len(self.calls.log)}")


@dataclass
class Scene:
    store: MemoryTimelineStore
    intake: Intake
    dispatcher: Dispatcher
    matrix: MatrixSide
    teams: TeamsSide
    clock: FakeClock

    async def receive(self, event: InboundEvent) -> TimelineEvent:
        (result,) = await self.intake.accept([event])
        assert result is not None
        return result.event

    async def mirrored(self, event: TimelineEvent, room: RoomRef, message_id: str) -> None:
        mirror = Mirror(room=room, status=MirrorStatus.SENT, message_id=RemoteMessageID(message_id))
        await self.store.set_mirror(event.id, mirror)

    async def deliver(self, event: TimelineEvent, room: RoomRef) -> RemoteMessageID | None:
        stored = await self.store.get(event.id)
        assert stored is not None
        adapter: ChatAdapter = self.matrix if room.platform is Platform.MATRIX else self.teams
        return await self.dispatcher.dispatch(adapter, stored, room, idempotency_key(stored, room))

    def inbound(self, kind: Kind, origin: RemoteRef, sender: Sender, **fields: Any) -> InboundEvent:
        self.clock.advance(1)
        return InboundEvent(
            kind=kind, origin=origin, sender=sender, occurred_at=self.clock.now(), **fields
        )


@pytest.fixture
async def s() -> Scene:
    clock = FakeClock()
    store = MemoryTimelineStore(clock=clock)
    await store.save_link(
        RoomLink(matrix_room=MATRIX_ROOM, teams_room=CHANNEL, created_at=clock.now())
    )
    matrix, teams = MatrixSide(Platform.MATRIX), TeamsSide(Platform.TEAMS)
    adapters = {Platform.MATRIX: matrix, Platform.TEAMS: teams}
    intake = Intake(
        store=store,
        clock=clock,
        ids=UlidFactory(),
        metrics=BridgeMetrics(),
        adapters=[matrix, teams],
    )
    return Scene(store, intake, Dispatcher(store, adapters=adapters), matrix, teams, clock)


def teams_message(message_id: str = "1701") -> RemoteRef:
    return RemoteRef(room=THREAD, message_id=RemoteMessageID(message_id))


def matrix_message(event_id: str) -> RemoteRef:
    return RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID(event_id))


def teams_reaction(
    s: Scene, target: RemoteRef, sender: Sender, key: str, *, removed: bool = False, stamp: str
) -> InboundEvent:
    change = "removed" if removed else "added"
    return s.inbound(
        Kind.REACTION,
        target,
        sender,
        origin_variant=f"{change}:{key}:{sender.user_id}:{stamp}",
        body=Body(text=key),
        relations=(Relation(kind=RelationKind.REACTION, target=target, key=key),),
        data={"removed": True} if removed else {},
        parent_room=CHANNEL,
    )


async def a_teams_post_mirrored_in_matrix(s: Scene) -> TimelineEvent:
    post = await s.receive(
        s.inbound(
            Kind.MESSAGE, teams_message(), DANA, body=Body(text="db-1 down"), parent_room=CHANNEL
        )
    )
    await s.mirrored(post, MATRIX_ROOM, "$post")
    return post


def test_the_fakes_have_the_capabilities_under_test() -> None:
    matrix, teams = MatrixSide(Platform.MATRIX), TeamsSide(Platform.TEAMS)
    assert isinstance(matrix, SupportsReactions)
    assert isinstance(matrix, SupportsMedia)
    assert not isinstance(matrix, SupportsReactionRemoval)
    assert isinstance(teams, SupportsReactionRemoval)
    assert isinstance(teams, SupportsMedia)


# -- Teams reactions on Matrix -------------------------------------------------------------


async def test_a_teams_reaction_becomes_the_ghosts_reaction_on_the_matrix_copy(s: Scene) -> None:
    await a_teams_post_mirrored_in_matrix(s)
    like = await s.receive(teams_reaction(s, teams_message(), ERIN, "👍", stamp="a1"))
    shown = await s.deliver(like, MATRIX_ROOM)
    assert s.matrix.calls.of("react") == [(matrix_message("$post"), "aad-erin", "👍")]
    assert shown == "$r1"


async def test_a_teams_removal_redacts_the_earlier_adds_mirror_and_adds_nothing(s: Scene) -> None:
    await a_teams_post_mirrored_in_matrix(s)
    like = await s.receive(teams_reaction(s, teams_message(), ERIN, "👍", stamp="a1"))
    await s.mirrored(like, MATRIX_ROOM, "$erin-like")
    other_key = await s.receive(teams_reaction(s, teams_message(), ERIN, "🎉", stamp="a2"))
    await s.mirrored(other_key, MATRIX_ROOM, "$erin-party")
    other_user = await s.receive(teams_reaction(s, teams_message(), DANA, "👍", stamp="a3"))
    await s.mirrored(other_user, MATRIX_ROOM, "$dana-like")

    removal = await s.receive(
        teams_reaction(s, teams_message(), ERIN, "👍", removed=True, stamp="r1")
    )
    removed = await s.deliver(removal, MATRIX_ROOM)

    assert s.matrix.calls.of("react") == []
    assert s.matrix.calls.of("redact") == [(matrix_message("$erin-like"), "aad-erin")]
    assert removed == "$erin-like"


async def test_a_removal_takes_back_the_latest_add_of_a_re_added_reaction(s: Scene) -> None:
    await a_teams_post_mirrored_in_matrix(s)
    first = await s.receive(teams_reaction(s, teams_message(), ERIN, "👍", stamp="a1"))
    await s.mirrored(first, MATRIX_ROOM, "$first")
    await s.receive(teams_reaction(s, teams_message(), ERIN, "👍", removed=True, stamp="r1"))
    again = await s.receive(teams_reaction(s, teams_message(), ERIN, "👍", stamp="a2"))
    await s.mirrored(again, MATRIX_ROOM, "$again")
    removal = await s.receive(
        teams_reaction(s, teams_message(), ERIN, "👍", removed=True, stamp="r2")
    )
    await s.deliver(removal, MATRIX_ROOM)
    assert s.matrix.calls.of("redact") == [(matrix_message("$again"), "aad-erin")]


async def test_a_removal_without_a_mirrored_add_does_nothing(s: Scene) -> None:
    await a_teams_post_mirrored_in_matrix(s)
    removal = await s.receive(
        teams_reaction(s, teams_message(), ERIN, "👍", removed=True, stamp="r1")
    )
    assert await s.deliver(removal, MATRIX_ROOM) is None
    assert s.matrix.calls.log == []


# -- Matrix reactions on Teams -------------------------------------------------------------


async def test_a_matrix_reaction_and_its_redaction_go_to_the_teams_line(s: Scene) -> None:
    message = await s.receive(
        s.inbound(Kind.MESSAGE, matrix_message("$m1"), ALICE, body=Body(text="restarting"))
    )
    await s.mirrored(message, CHANNEL, "1800")
    like = await s.receive(
        s.inbound(
            Kind.REACTION,
            matrix_message("$like"),
            ALICE,
            body=Body(text="👍"),
            relations=(
                Relation(kind=RelationKind.REACTION, target=matrix_message("$m1"), key="👍"),
            ),
        )
    )
    assert await s.deliver(like, CHANNEL) is None
    posted = RemoteRef(room=CHANNEL, message_id=RemoteMessageID("1800"))
    assert s.teams.calls.of("react") == [(posted, "@alice:example.org", "👍", message.id)]

    await s.store.set_mirror(like.id, Mirror(room=CHANNEL, status=MirrorStatus.SENT))
    unlike = await s.receive(
        s.inbound(
            Kind.REDACTION,
            matrix_message("$unlike"),
            ALICE,
            relations=(Relation(kind=RelationKind.REDACTION, target=matrix_message("$like")),),
        )
    )
    await s.deliver(unlike, CHANNEL)
    assert s.teams.calls.of("unreact") == [(posted, "@alice:example.org", "👍", message.id, None)]


async def test_a_matrix_reaction_on_a_teams_thread_post_targets_the_post_itself(
    s: Scene,
) -> None:
    post = await a_teams_post_mirrored_in_matrix(s)
    like = await s.receive(
        s.inbound(
            Kind.REACTION,
            matrix_message("$like"),
            ALICE,
            body=Body(text="👍"),
            relations=(
                Relation(kind=RelationKind.REACTION, target=matrix_message("$post"), key="👍"),
            ),
        )
    )
    await s.deliver(like, CHANNEL)
    assert s.teams.calls.of("react") == [(teams_message(), "@alice:example.org", "👍", post.id)]


async def test_a_deleted_message_is_still_redacted(s: Scene) -> None:
    await a_teams_post_mirrored_in_matrix(s)
    gone = await s.receive(
        s.inbound(
            Kind.REDACTION,
            teams_message(),
            DANA,
            origin_variant="delete:1",
            parent_room=CHANNEL,
            relations=(Relation(kind=RelationKind.REDACTION, target=teams_message()),),
        )
    )
    assert await s.deliver(gone, MATRIX_ROOM) == "$post"
    assert s.matrix.calls.of("redact") == [(matrix_message("$post"), "aad-dana")]


# -- media ----------------------------------------------------------------------------------


def image(url: str, *, size: int | None = None, mime: str = "image/png") -> Attachment:
    return Attachment(name="shot.png", mime_type=mime, url=url, size=size, is_image=True)


async def a_matrix_image(s: Scene, attachment: Attachment, text: str = "shot.png") -> TimelineEvent:
    return await s.receive(
        s.inbound(
            Kind.MESSAGE,
            matrix_message("$img"),
            ALICE,
            body=Body(text=text, attachments=(attachment,)),
        )
    )


async def test_a_matrix_image_is_downloaded_uploaded_and_sent_with_its_new_url(
    s: Scene,
) -> None:
    s.matrix.files["mxc://hs/img"] = PNG
    event = await a_matrix_image(s, image("mxc://hs/img", size=len(PNG)))
    await s.deliver(event, CHANNEL)
    assert s.matrix.calls.of("download") == [("mxc://hs/img", 4096)]
    ((size, uploaded),) = s.teams.calls.of("upload")
    assert size == len(PNG)
    assert uploaded.mime_type == "image/png"
    ((sent, _),) = s.teams.sent
    assert [a.url for a in sent.event.body.attachments] == ["https://bridge.example/media/t1"]
    stored = await s.store.get(event.id)
    assert stored is not None
    assert stored.body.attachments[0].url == "mxc://hs/img"


async def test_a_teams_inline_image_gets_its_real_type_and_a_file_name(s: Scene) -> None:
    url = "https://smba.example/v3/attachments/0-1/views/original"
    s.teams.files[url] = PNG
    event = await s.receive(
        s.inbound(
            Kind.MESSAGE,
            teams_message(),
            DANA,
            parent_room=CHANNEL,
            body=Body(
                text="look",
                attachments=(
                    Attachment(name="image", mime_type="image/*", url=url, is_image=True),
                ),
            ),
        )
    )
    await s.deliver(event, MATRIX_ROOM)
    ((_, uploaded),) = s.matrix.calls.of("upload")
    assert (uploaded.name, uploaded.mime_type, uploaded.size) == ("image.png", "image/png", 72)
    ((sent, _),) = s.matrix.sent
    assert sent.event.body.attachments[0].url.startswith("mxc://hs/")


async def test_a_file_over_the_declared_limit_is_noted_and_never_downloaded(s: Scene) -> None:
    event = await a_matrix_image(s, image("mxc://hs/big", size=12 * 1024 * 1024), text="")
    await s.deliver(event, CHANNEL)
    assert s.matrix.calls.log == []
    ((sent, _),) = s.teams.sent
    assert sent.event.body.attachments == ()
    assert sent.event.body.text == "📎 shot.png (12 MB) could not be carried: larger than 4 KB"


async def test_a_file_found_too_large_while_downloading_is_noted(s: Scene) -> None:
    url = "https://files.example/report.pdf"
    s.teams.download_error = MediaTooLargeError(size=20_000, limit=1024)
    event = await s.receive(
        s.inbound(
            Kind.MESSAGE,
            teams_message(),
            DANA,
            parent_room=CHANNEL,
            body=Body(
                text="the report",
                html="<p>the report</p>",
                attachments=(Attachment(name="report.pdf", mime_type="application/pdf", url=url),),
            ),
        )
    )
    await s.deliver(event, MATRIX_ROOM)
    ((sent, _),) = s.matrix.sent
    notice = "📎 report.pdf (20 KB) could not be carried: larger than 1 KB"
    assert sent.event.body.text == f"the report\n{notice}"
    assert sent.event.body.html == f"<p>the report</p><br>{notice}"
    assert s.matrix.calls.of("upload") == []


async def test_a_refused_download_is_noted_and_a_retryable_one_retries(s: Scene) -> None:
    url = "https://files.example/x.bin"
    body = Body(text="", attachments=(Attachment(name="x.bin", mime_type="a/b", url=url),))
    event = await s.receive(
        s.inbound(Kind.MESSAGE, teams_message(), DANA, parent_room=CHANNEL, body=body)
    )
    s.teams.download_error = RetryableDeliveryError("429", retry_after=3)
    with pytest.raises(RetryableDeliveryError):
        await s.deliver(event, MATRIX_ROOM)
    assert s.matrix.sent == []
    s.teams.download_error = PermanentDeliveryError("HTTP 401")
    await s.deliver(event, MATRIX_ROOM)
    ((sent, _),) = s.matrix.sent
    assert (
        sent.event.body.text == "📎 x.bin could not be carried: the download was refused (HTTP 401)"
    )


async def test_a_retried_delivery_does_not_upload_the_same_file_again(s: Scene) -> None:
    s.matrix.files["mxc://hs/img"] = PNG
    event = await a_matrix_image(s, image("mxc://hs/img"))
    await s.deliver(event, CHANNEL)
    await s.deliver(event, CHANNEL)
    assert len(s.teams.calls.of("upload")) == 1
    assert len(s.teams.sent) == 2  # the sender's own idempotency keeps Teams to one message


async def test_an_edit_carries_text_only(s: Scene) -> None:
    message = await a_matrix_image(s, image("mxc://hs/img"), text="caption")
    await s.mirrored(message, CHANNEL, "1900")
    edit = await s.receive(
        s.inbound(
            Kind.EDIT,
            matrix_message("$edit"),
            ALICE,
            body=Body(text="better caption", attachments=(image("mxc://hs/img"),)),
            relations=(Relation(kind=RelationKind.EDIT, target=matrix_message("$img")),),
        )
    )
    await s.deliver(edit, CHANNEL)
    assert [m.event.body.attachments for _, m in s.teams.calls.of("edit")] == [()]
    assert s.matrix.calls.of("download") == []


# -- Teams threads in Matrix: threads or reply chains, by link --------------------------


async def _thread_reply_in_matrix(s: Scene) -> OutboundMessage:
    await a_teams_post_mirrored_in_matrix(s)
    answer = await s.receive(
        s.inbound(
            Kind.MESSAGE,
            teams_message("1702"),
            DANA,
            body=Body(text="failing over"),
            relations=(Relation(kind=RelationKind.THREAD, target=teams_message()),),
            parent_room=CHANNEL,
        )
    )
    await s.deliver(answer, MATRIX_ROOM)
    message, _ = s.matrix.sent[-1]
    return message


async def test_a_teams_thread_goes_to_a_matrix_thread_by_default(s: Scene) -> None:
    message = await _thread_reply_in_matrix(s)
    assert message.thread_root == "$post"
    assert message.reply_to is None


async def test_a_link_for_replies_makes_the_thread_a_reply_chain(s: Scene) -> None:
    (link,) = await s.store.links_for(MATRIX_ROOM)
    await s.store.save_link(replace(link, threads=ThreadStyle.REPLY))
    message = await _thread_reply_in_matrix(s)
    assert message.thread_root is None
    assert message.reply_to == "$post"
