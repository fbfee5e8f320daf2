"""Every activity kind the bridge reads, from realistic payloads, into the core model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.teams.activity import ActivityParseError, parse_activity, parse_timestamp
from adapters.teams.convert import ActivityConverter, reaction_key
from bridge.model import InboundEvent, Kind, MessageStyle, Platform, RelationKind
from tests.support.fakes import FakeClock
from tests.unit.teams import support as s


def convert(document: dict[str, Any]) -> list[InboundEvent]:
    return ActivityConverter(app_id=s.APP_ID, clock=FakeClock()).convert(parse_activity(document))


def one(document: dict[str, Any]) -> InboundEvent:
    (event,) = convert(document)
    return event


def test_channel_root_post_is_a_message_in_its_thread_room() -> None:
    event = one(s.message())
    assert event.kind is Kind.MESSAGE
    assert event.origin.platform is Platform.TEAMS
    assert event.origin.room.room_id == s.THREAD
    assert event.origin.message_id == s.ROOT_ID
    assert event.origin_variant == ""
    assert event.sender.user_id == s.ALICE_AAD
    assert event.sender.display_name == "Alice Example"
    assert event.occurred_at == datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert event.relations == ()  # the root of its own thread
    assert event.body.text == "disk full on db-3"  # the leading bot mention addressed the bot
    assert event.data["addressed_to_bot"] is True
    assert event.body.html is not None
    assert "<b>db-3</b>" in event.body.html
    assert "Incident Bridge" not in event.body.html
    assert event.body.style is MessageStyle.TEXT
    assert event.body.mentions == ()  # the bot itself is not a mention
    assert event.data["teams_channel"] == s.CHANNEL
    assert event.data["teams_thread_root"] == s.ROOT_ID
    assert event.data["teams_account_id"] == s.ALICE_ID


def test_thread_reply_shares_the_room_and_points_at_the_root() -> None:
    event = one(s.message("<p>looking</p>", activity_id="1730462460000"))
    assert event.origin.room.room_id == s.THREAD
    assert event.origin.message_id == "1730462460000"
    (thread,) = event.relations
    assert thread.kind is RelationKind.THREAD
    assert thread.target.room.room_id == s.THREAD
    assert thread.target.message_id == s.ROOT_ID


def test_group_and_personal_chats_are_one_room_each() -> None:
    group = one(s.message("<p>hi</p>", conversation=s.GROUP_CHAT, activity_id="1730462500000"))
    assert group.origin.room.room_id == s.GROUP_CHAT
    assert group.relations == ()
    assert "teams_channel" not in group.data
    personal = one(
        s.message("<p>hi</p>", conversation=s.PERSONAL_CHAT, activity_id="17", mention_bot=False)
    )
    assert personal.origin.room.room_id == s.PERSONAL_CHAT
    assert personal.body.text == "hi"


def test_mentions_become_senders_keyed_on_aad_object_id_else_account_id() -> None:
    event = one(
        s.message(
            "<p>please look</p>",
            mentions=((s.BOB_ID, "Bob Builder", s.BOB_AAD), (s.ALICE_ID, "Alice Example", None)),
        )
    )
    assert [(m.user_id, m.display_name) for m in event.body.mentions] == [
        (s.BOB_AAD, "Bob Builder"),
        (s.ALICE_ID, "Alice Example"),
    ]
    assert all(m.platform is Platform.TEAMS for m in event.body.mentions)
    assert "Bob Builder" in event.body.text


def test_tag_and_channel_mentions_are_not_user_mentions() -> None:
    document = s.message("<p>all</p>")
    document["entities"].append(
        {
            "mentioned": {"id": s.CHANNEL, "name": "General"},
            "text": "<at>General</at>",
            "type": "mention",
        }
    )
    assert one(document).body.mentions == ()


def test_plain_text_without_html_stays_plain() -> None:
    document = s.base_activity("message", activity_id="42", conversation=s.PERSONAL_CHAT)
    document["text"] = "a < b && c > d"
    document["textFormat"] = "plain"
    event = one(document)
    assert event.body.text == "a < b && c > d"
    assert event.body.html is None


def test_hostile_html_is_sanitized() -> None:
    event = one(
        s.message('<p onclick="x()">hi<script>alert(1)</script><a href="javascript:x">l</a></p>')
    )
    assert event.body.html is not None
    assert "script" not in event.body.html
    assert "onclick" not in event.body.html
    assert "javascript" not in event.body.html
    assert "alert" not in event.body.text


def test_inline_images_and_files_become_attachment_metadata() -> None:
    image_url = "https://smba.trafficmanager.net/emea/v3/attachments/0-wus-d1-abc/views/original"
    file_info = {
        "contentType": "application/vnd.microsoft.teams.file.download.info",
        "contentUrl": "https://contoso.sharepoint.com/sites/ops/Shared%20Documents/report.pdf",
        "name": "report.pdf",
        "content": {
            "downloadUrl": "https://contoso.sharepoint.com/download.aspx?tempauth=SECRET",
            "uniqueId": "3f1c9a2b-6d4e-4b8a-9c1d-2e3f4a5b6c7d",
            "fileType": "pdf",
        },
    }
    image = {"contentType": "image/*", "contentUrl": image_url}
    event = one(
        s.message(
            f'<p>graph:</p><p><img src="{image_url}" alt="cpu graph" width="640" height="480"'
            ' itemtype="http://schema.skype.com/AMSImage"></p>',
            attachments=(image, file_info),
        )
    )
    images = [a for a in event.body.attachments if a.is_image]
    files = [a for a in event.body.attachments if not a.is_image]
    assert [(a.url, a.mime_type) for a in images] == [(image_url, "image/*")]
    assert [(f.name, f.mime_type, f.url) for f in files] == [
        ("report.pdf", "application/pdf", file_info["contentUrl"])
    ]
    assert "tempauth" not in repr(event)  # the pre-authenticated download URL is a credential


def test_inline_image_dimensions_are_kept_when_not_also_an_attachment() -> None:
    url = "https://us-api.asm.skype.com/v1/objects/0-wus-d1-xyz/views/imgo"
    event = one(s.message(f'<p><img src="{url}" alt="shot" width="320" height="200"></p>'))
    (image,) = event.body.attachments
    assert (image.url, image.name, image.width, image.height) == (url, "shot", 320, 200)


def test_non_https_and_card_attachments_are_skipped() -> None:
    card = {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "content": {"type": "AdaptiveCard"},
    }
    insecure = {"contentType": "image/png", "contentUrl": "http://169.254.169.254/latest"}
    event = one(s.message("<p>x</p>", attachments=(card, insecure)))
    assert event.body.attachments == ()


def test_quoted_reply_becomes_a_reply_relation_without_the_quote() -> None:
    quote = (
        '<blockquote itemscope="" itemtype="http://schema.skype.com/Reply" itemid="1730462400999">'
        '<strong itemprop="mri" itemid="8:orgid:abc">Bob</strong>'
        '<span itemprop="time" itemid="1730462400999"></span>'
        '<p itemprop="preview">is db-3 ok?</p></blockquote>'
    )
    event = one(
        s.message(quote + "<p>no, full</p>", conversation=s.GROUP_CHAT, activity_id="1730462401000")
    )
    (reply,) = event.relations
    assert reply.kind is RelationKind.REPLY
    assert reply.target.message_id == "1730462400999"
    assert reply.target.room.room_id == s.GROUP_CHAT
    assert "is db-3 ok" not in event.body.text
    assert event.body.text.endswith("no, full")


def test_edit_is_an_edit_relation_with_a_variant_per_edit() -> None:
    first = one(s.edit("<p>v2</p>"))
    assert first.kind is Kind.EDIT
    assert first.origin.message_id == s.ROOT_ID
    assert first.origin.room.room_id == s.THREAD
    (relation,) = first.relations
    assert relation.kind is RelationKind.EDIT
    assert relation.target == first.origin
    assert first.body.text.endswith("v2")
    assert first.occurred_at == datetime(2026, 11, 1, 12, 5, 0, 500000, tzinfo=UTC)
    again = one(s.edit("<p>v2</p>"))
    assert again.origin_variant == first.origin_variant  # a redelivery: same record
    later = one(s.edit("<p>v2</p>", timestamp="2026-11-01T12:06:00Z"))
    assert later.origin_variant != first.origin_variant  # A -> B -> A: another edit
    other = one(s.edit("<p>v3</p>"))
    assert other.origin_variant != first.origin_variant


def test_undelete_is_a_new_message_record_of_the_same_message() -> None:
    event = one(s.edit("<p>back</p>", event_type="undeleteMessage"))
    assert event.kind is Kind.MESSAGE
    assert event.origin.message_id == s.ROOT_ID
    assert event.origin_variant.startswith("undelete:")
    assert event.data["undelete"] is True
    assert event.body.text.endswith("back")


def test_soft_delete_is_a_redaction() -> None:
    event = one(s.delete())
    assert event.kind is Kind.REDACTION
    (relation,) = event.relations
    assert relation.kind is RelationKind.REDACTION
    assert relation.target.message_id == s.ROOT_ID
    assert relation.target.room.room_id == s.THREAD
    assert event.origin_variant == "delete:2026-11-01T12:10:00.000000+00:00"
    assert one(s.delete(timestamp="2026-11-01T13:00:00Z")).origin_variant != event.origin_variant


def test_unknown_update_and_delete_event_types_are_ignored() -> None:
    assert convert(s.edit(event_type="somethingNew")) == []
    document = s.delete()
    document["channelData"]["eventType"] = "hardDeleteMessage"
    assert convert(document) == []


@pytest.mark.parametrize(
    ("teams_type", "emoji"),
    [
        ("like", "👍"),
        ("heart", "❤️"),
        ("laugh", "😆"),
        ("surprised", "😮"),
        ("sad", "😢"),
        ("angry", "😡"),
        ("1f525_fire", "🔥"),
        ("weird", "weird"),
    ],
)
def test_reaction_types_map_to_emoji(teams_type: str, emoji: str) -> None:
    assert reaction_key(teams_type) == emoji


def test_reactions_added_and_removed() -> None:
    added = one(s.reaction(added=("heart",)))
    assert added.kind is Kind.REACTION
    assert added.origin.message_id == s.ROOT_ID
    (relation,) = added.relations
    assert (relation.kind, relation.key, relation.target.message_id) == (
        RelationKind.REACTION,
        "❤️",
        s.ROOT_ID,
    )
    assert "removed" not in added.data
    removed = one(
        s.reaction(
            added=(), removed=("heart",), activity_id="f:11111111-2222-4333-8444-555555555555"
        )
    )
    assert removed.data["removed"] is True
    assert removed.origin == added.origin
    assert removed.origin_variant != added.origin_variant
    re_added = one(s.reaction(added=("heart",), activity_id="f:another-event"))
    assert re_added.origin_variant != added.origin_variant  # add, remove, add again: 3 records
    assert one(s.reaction(added=("heart",))).origin_variant == added.origin_variant  # redelivery


def test_reactions_of_two_users_and_two_types_are_distinct() -> None:
    events = convert(s.reaction(added=("like", "heart")))
    assert len({e.origin_variant for e in events}) == 2
    bob = one(s.reaction(added=("like",), sender_id=s.BOB_ID, sender_aad=s.BOB_AAD))
    assert bob.origin_variant not in {e.origin_variant for e in events}


def test_reaction_without_its_own_id_is_told_apart_by_time() -> None:
    first = one(s.reaction(activity_id=None))
    second = one(s.reaction(activity_id=None, timestamp="2026-11-01T12:02:00Z"))
    assert first.origin_variant != second.origin_variant


def test_bot_added_to_a_team_is_membership() -> None:
    event = one(
        s.conversation_update(
            added=({"id": s.BOT_ID},),
            event_type="teamMemberAdded",
        )
    )
    assert event.kind is Kind.MEMBERSHIP
    assert event.origin.room.room_id == s.CHANNEL
    assert event.origin.message_id.startswith("f:")
    assert event.data["bot_added"] is True
    assert event.data["bot_removed"] is False
    assert event.data["event_type"] == "teamMemberAdded"
    assert event.data["members_added"][0]["is_bot_itself"] is True


def test_members_added_and_removed() -> None:
    event = one(
        s.conversation_update(
            added=({"id": s.BOB_ID, "aadObjectId": s.BOB_AAD},),
            removed=({"id": s.ALICE_ID, "aadObjectId": s.ALICE_AAD},),
            event_type="teamMemberRemoved",
        )
    )
    assert [m["user_id"] for m in event.data["members_added"]] == [s.BOB_AAD]
    assert [m["user_id"] for m in event.data["members_removed"]] == [s.ALICE_AAD]
    assert event.data["bot_added"] is False


def test_conversation_update_without_an_id_gets_a_stable_one() -> None:
    document = s.conversation_update(added=({"id": s.BOB_ID},), activity_id=None)
    first, second = one(document), one(document)
    assert first.origin == second.origin
    other = one(s.conversation_update(added=({"id": s.ALICE_ID},), activity_id=None))
    assert other.origin != first.origin


def test_installation_update_add_and_remove() -> None:
    added = one(s.installation_update(action="add"))
    assert added.kind is Kind.MEMBERSHIP
    assert added.data == {
        "activity": "installationUpdate",
        "action": "add",
        "bot_added": True,
        "bot_removed": False,
    }
    removed = one(s.installation_update(action="remove", activity_id="f:other"))
    assert removed.data["bot_removed"] is True


def test_other_activity_types_produce_nothing() -> None:
    assert convert(s.base_activity("typing", activity_id="1")) == []
    assert convert(s.base_activity("invoke", activity_id="2")) == []


def test_the_bots_own_message_keeps_its_28_id_for_echo_suppression() -> None:
    event = one(s.message(sender_id=s.BOT_ID, sender_aad=None, sender_name="Incident Bridge"))
    assert event.sender.user_id == s.BOT_ID


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"id": "1"},
        {"type": 3},
        {"type": "message", "from": "alice"},
        {"type": "message", "conversation": {"id": 7}},
        {"type": "message", "entities": {"a": 1}},
        {"type": "message", "timestamp": "yesterday"},
        {"type": "message", "membersAdded": [{"name": "no id"}]},
    ],
)
def test_malformed_activities_are_refused(document: Any) -> None:
    with pytest.raises(ActivityParseError):
        parse_activity(document)


def test_a_message_without_id_or_conversation_is_refused() -> None:
    document = s.message()
    del document["id"]
    with pytest.raises(ActivityParseError):
        convert(document)
    document = s.message()
    del document["conversation"]
    with pytest.raises(ActivityParseError):
        convert(document)
    reaction = s.reaction()
    del reaction["replyToId"]
    with pytest.raises(ActivityParseError):
        convert(reaction)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01T12:00:00.1234567Z", datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-01T12:00:00Z", datetime(2026, 11, 1, 12, 0, tzinfo=UTC)),
        ("2026-11-01T05:00:00.5-07:00", datetime(2026, 11, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        ("2026-11-01T12:00:00", datetime(2026, 11, 1, 12, 0, tzinfo=UTC)),
    ],
)
def test_timestamps_are_utc(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


def test_a_bot_mention_later_in_the_text_stays() -> None:
    document = s.message(mention_bot=False, activity_id="77")
    document["attachments"][0]["content"] = (
        '<p>ask <at id="0">Incident Bridge</at> for the runbook</p>'
    )
    document["entities"].append(
        {
            "mentioned": {"id": s.BOT_ID, "name": "Incident Bridge"},
            "text": "<at>Incident Bridge</at>",
            "type": "mention",
        }
    )
    event = one(document)
    assert event.body.text == "ask Incident Bridge for the runbook"
    assert "addressed_to_bot" not in event.data
    assert event.body.mentions == ()


def test_a_leading_at_mention_in_text_without_html_is_removed_too() -> None:
    document = s.base_activity("message", activity_id="78", conversation=s.GROUP_CHAT)
    document["text"] = "<at>Incident Bridge</at> incident open db-1"
    document["entities"].append(
        {
            "mentioned": {"id": s.BOT_ID, "name": "Incident Bridge"},
            "text": "<at>Incident Bridge</at>",
            "type": "mention",
        }
    )
    event = one(document)
    assert event.body.text == "incident open db-1"
    assert event.data["addressed_to_bot"] is True
