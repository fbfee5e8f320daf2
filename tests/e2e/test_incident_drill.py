"""An incident drill through the whole daemon: declared from Teams, run from both chats,
resolved, written up and read back over the API.

The stack: a Matrix room linked to a Teams channel ("ops"), an "Incidents" channel in the
same team where incident threads start, the Matrix user as the on-call responder, the
first Teams user (Avery) an operator. Avery declares; Blake (Teams) acknowledges; Avery
makes the Matrix user (Mara, no operator) commander, who then runs the incident from
Matrix. Pauses between the steps are measured by the test's own clock, so the durations
in the postmortem are seconds apart; they must equal the differences of the recorded
incident events' times.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote

import pytest

from adapters.teams.render import LINE_SEPARATOR
from bridge.incidents.markdown import escape
from devtools.teams_emulator import Message, User
from tests.e2e.arrivals import ARRIVE_WITHIN_S, has_body, matrix_event, teams_message
from tests.e2e.daemon import ROOT
from tests.e2e.observe import (
    body_of,
    bot_messages,
    is_edit,
    matrix_token_counts,
    relation,
    room_history,
    token,
    tokens_in,
)
from tests.e2e.stack import Stack, StackServers, open_stack
from tests.support.waiting import eventually

PAUSE_S: Final = 2.0
"""At least this long (by the test's clock) between the steps whose times are measured."""
CLI_WITHIN_S: Final = 60.0
TITLE: Final = "Checkout errors"
KEY_TEXT: Final = "Checkout pods restarted"
PIN: Final = "📌"
"""The bridge's default ``incidents.key_event_reaction``."""
INCIDENT_ID: Final = "INC-1"
FROM_MATRIX: Final = "<i>(Matrix)</i>: "
"""How the bot attributes a line it mirrors from Matrix."""
_TAG: Final = re.compile(r"<[^>]+>")
_DURATION: Final = re.compile(r"^- Time to (?P<what>\w+): .*\((?P<seconds>-?\d+) s, at .*\)$")


@pytest.fixture
async def stack(servers: StackServers) -> AsyncIterator[Stack]:
    async with open_stack(servers, chats=0, channels=1, incidents=True) as running:
        yield running


class Pace:
    """The test's clock between steps: ``wait`` holds until ``PAUSE_S`` has passed since
    the last ``mark``."""

    def __init__(self) -> None:
        self._mark = time.monotonic()

    def mark(self) -> None:
        self._mark = time.monotonic()

    async def wait(self) -> None:
        left = PAUSE_S - (time.monotonic() - self._mark)
        if left > 0:
            await asyncio.sleep(left)  # a pause is the point: nothing to await


async def test_incident_drill(stack: Stack) -> None:
    ops = stack.pairs[0]
    avery, blake = stack.teams_users
    incident_channel = stack.incident_channel
    assert incident_channel is not None
    pace = Pace()

    # 1. An operator declares from the linked ops channel.
    declared = await stack.emulator.post_message(
        ops.teams, avery, f"!incident declare sev2 {TITLE}", mention_bot=True
    )
    assert declared.ok, declared
    pace.mark()

    # 2. The incident's rooms: a Matrix room with the responder invited, a Teams thread.
    link = await _incident_link(stack)
    matrix_room = str(link["matrix_room"]["room_id"])
    thread = str(link["teams_room"]["room_id"])
    channel_id, _, root_id = thread.partition(";messageid=")
    assert channel_id == incident_channel.conversation_id, thread
    assert root_id, thread
    rooms = IncidentRooms(matrix_room=matrix_room, thread=thread)
    incident = await _incident(stack)
    assert incident["title"] == TITLE
    assert incident["severity"] == "sev2"
    assert incident["status"] == "investigating"
    assert incident["room_keys"] == [f"matrix|{matrix_room}", f"teams|{thread}"]
    assert incident["declared_by"]["user_id"] == avery.aad_object_id

    invite_state = await _invited(stack, matrix_room)
    creation = _stripped(invite_state, "m.room.create")
    assert creation["sender"] == stack.bot_mxid, creation
    invitation = _stripped(invite_state, "m.room.member", stack.matrix.user_id)
    assert invitation["sender"] == stack.bot_mxid, invitation
    assert invitation["content"]["membership"] == "invite"
    assert INCIDENT_ID in str(_stripped(invite_state, "m.room.name")["content"]["name"])

    root = _thread_root(stack, thread)
    assert root.from_bot, root
    assert root.thread_root == root.activity_id == root_id
    await _teams_header_shows(stack, thread, INCIDENT_ID, "SEV2", "investigating", TITLE)

    answer = f"{INCIDENT_ID} declared (SEV2): {TITLE}"
    await teams_message(stack, ops.teams_id, lambda m: answer in m.text, what="the ops answer")
    await matrix_event(stack, ops.matrix_room, has_body(answer), what="the ops answer (Matrix)")

    # 3. The responder joins; messages flow both ways in the incident's rooms.
    await stack.matrix.call("POST", f"/_matrix/client/v3/rooms/{_q(matrix_room)}/join", json={})
    pinned = await _pinned_header(stack, matrix_room)
    for shown in (INCIDENT_ID, "SEV2", "investigating", TITLE):
        assert shown in body_of(pinned), body_of(pinned)
    assert pinned["sender"] == stack.bot_mxid

    t2m, m2t = token("t2m", "drill", 1), token("m2t", "drill", 1)
    posted = await stack.emulator.post_message(
        incident_channel, blake, f"checkout 500s since 10:02 {t2m}", thread_root=root_id
    )
    assert posted.ok, posted
    await stack.matrix.send(matrix_room, {"msgtype": "m.text", "body": f"looking {m2t}"})
    mirrored = await matrix_event(stack, matrix_room, has_body(t2m), what="the Teams line")
    assert mirrored["sender"] == stack.ghost_of(blake)
    await teams_message(stack, thread, lambda m: m2t in m.text, what="the Matrix line")

    # An acknowledgement (anyone in the incident's rooms), a while after the declaration.
    await pace.wait()
    await _teams_command(stack, rooms, blake, "!incident ack", f"acknowledged {INCIDENT_ID}")
    pace.mark()

    # 4. An operator makes the Matrix user commander (by MXID); the header names them.
    mara = stack.matrix.user_id
    await _teams_command(
        stack, rooms, avery, f"!incident assign commander {mara}", "is now commander"
    )
    # Named by id only, they are shown by the name Matrix gives them.
    await _matrix_header_shows(stack, matrix_room, pinned, "Commander: Mara Matrix")
    await _teams_header_shows(stack, thread, "Commander: Mara Matrix")

    # 5. Key events: one by command, one by the reaction on a message.
    await _matrix_command(stack, rooms, f"!incident key {KEY_TEXT}", "Key event recorded")
    marked_token = token("t2m", "drill", 2)
    posted = await stack.emulator.post_message(
        incident_channel,
        blake,
        f"rollback of checkout deployed {marked_token}",
        thread_root=root_id,
    )
    assert posted.ok, posted
    marked = await matrix_event(stack, matrix_room, has_body(marked_token), what="the marked line")
    await stack.matrix.send(
        matrix_room,
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": marked["event_id"], "key": PIN}},
        event_type="m.reaction",
    )
    await matrix_event(
        stack, matrix_room, _notice("Key event marked by"), what="the key event notice"
    )
    await _incident_events(stack, "key_event", count=2)

    # The commander moves the status, each step a while after the one before.
    await pace.wait()
    await _matrix_command(stack, rooms, "!incident status identified", "is now identified")
    pace.mark()
    await pace.wait()
    await _matrix_command(stack, rooms, "!incident status monitoring", "is now monitoring")
    pace.mark()
    await pace.wait()
    await _matrix_command(stack, rooms, "!incident resolve", f"{INCIDENT_ID} resolved")
    await _matrix_header_shows(stack, matrix_room, pinned, "resolved")
    await _teams_header_shows(stack, thread, "resolved")
    resolved = await _incident(stack)
    assert resolved["status"] == "resolved"
    assert resolved["roles"]["commander"]["user_id"] == mara

    # 6. The postmortem: posted to both rooms, and from the command line.
    heading = f"# Postmortem: {escape(INCIDENT_ID)} {escape(TITLE)}"
    await _matrix_command(stack, rooms, "!incident postmortem", "Postmortem of")
    await matrix_event(stack, matrix_room, _notice(heading), what="the postmortem (Matrix)")
    await teams_message(stack, thread, lambda m: "Postmortem: INC" in m.text, what="postmortem")
    markdown = await _cli_postmortem(stack)
    assert markdown.startswith(heading + "\n"), markdown[:200]
    assert "- Status: **resolved**" in markdown
    assert (await _incident(stack))["postmortem"], "the postmortem was not stored"
    statuses = [line.split(" by ")[0] for line in _section(markdown, "Status history")]
    assert [s.split(": ", 1)[1] for s in statuses] == [
        "declared, status investigating",
        "investigating → identified (status)",
        "identified → monitoring (status)",
        "monitoring → resolved (resolve)",
    ], statuses
    await _assert_durations(stack, markdown)
    _assert_key_events(markdown, marked_token=marked_token)
    _assert_participants(stack, markdown)

    # Everything said in the incident's rooms arrived once on the other side.
    await stack.settled()
    await _assert_once(stack, matrix_room, thread, t2m, marked_token, m2t)
    # Replies in the thread refer to its root, the bridge's own header: no gap.
    gaps = await stack.timeline({"kind": "gap"})
    assert not gaps, [g["body"]["text"] for g in gaps]

    # 7. The API: the incident with the token; 401 and nothing else without it.
    await _assert_api(stack)


# -- the incident as stored ---------------------------------------------------------------


async def _incident_link(stack: Stack) -> Mapping[str, Any]:
    async def probe() -> Mapping[str, Any] | None:
        stack.daemon.ensure_alive()
        return await stack.database["room_links"].find_one({"incident_id": INCIDENT_ID})

    return await eventually(
        probe, within=ARRIVE_WITHIN_S, interval=0.1, what="the incident's room link"
    )


async def _incident(stack: Stack) -> Mapping[str, Any]:
    found = await stack.database["incidents"].find_one({"_id": INCIDENT_ID})
    assert found is not None, "no incident stored"
    return found


async def _incident_events(stack: Stack, action: str, *, count: int = 1) -> list[dict[str, Any]]:
    """The incident's recorded ``action`` events, once there are ``count`` of them."""

    async def probe() -> list[dict[str, Any]] | None:
        stack.daemon.ensure_alive()
        found = await stack.timeline(
            {"kind": "incident", "incident_id": INCIDENT_ID, "data.action": action}
        )
        return found if len(found) >= count else None

    found = await eventually(
        probe, within=ARRIVE_WITHIN_S, interval=0.1, what=f"{count} {action} event(s)"
    )
    assert len(found) == count, found
    return sorted(found, key=lambda doc: (doc["occurred_at"], doc["_id"]))


# -- Matrix ---------------------------------------------------------------------------------


def _q(value: str) -> str:
    return quote(value, safe="")


async def _invited(stack: Stack, room_id: str) -> list[Mapping[str, Any]]:
    """The stripped state of the user's invite to ``room_id``, as their /sync shows it."""
    sync_filter = json.dumps({"room": {"timeline": {"limit": 1}}})

    async def probe() -> list[Mapping[str, Any]] | None:
        stack.daemon.ensure_alive()
        body = await stack.matrix.call(
            "GET", "/_matrix/client/v3/sync", params={"filter": sync_filter, "timeout": "0"}
        )
        invite = body.get("rooms", {}).get("invite", {}).get(room_id)
        if not isinstance(invite, Mapping):
            return None
        events = invite.get("invite_state", {}).get("events", [])
        return list(events) if events else None

    return await eventually(probe, within=ARRIVE_WITHIN_S, interval=0.2, what="the invite")


def _stripped(
    events: list[Mapping[str, Any]], event_type: str, state_key: str = ""
) -> Mapping[str, Any]:
    found = [e for e in events if e.get("type") == event_type and e.get("state_key") == state_key]
    assert len(found) == 1, (event_type, state_key, events)
    return found[0]


async def _pinned_header(stack: Stack, room_id: str) -> Mapping[str, Any]:
    """The one pinned event of the room (the bot's header), once it is pinned."""
    state = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.pinned_events"

    async def probe() -> list[str] | None:
        stack.daemon.ensure_alive()
        async with stack.session.get(
            stack.matrix.base + state,
            headers={"Authorization": f"Bearer {stack.matrix_token}"},
        ) as response:
            if response.status == 404:
                return None
            body = await response.json()
            assert response.status == 200, body
            pinned = body.get("pinned")
            return list(pinned) if pinned else None

    pinned = await eventually(probe, within=ARRIVE_WITHIN_S, interval=0.1, what="the pin")
    assert len(pinned) == 1, pinned
    return await stack.matrix.call(
        "GET", f"/_matrix/client/v3/rooms/{_q(room_id)}/event/{_q(pinned[0])}"
    )


async def _matrix_header_shows(
    stack: Stack, room_id: str, pinned: Mapping[str, Any], *shown: str
) -> None:
    """Wait until the pinned header (as last edited by the bot) shows ``shown``."""

    async def probe() -> str | None:
        stack.daemon.ensure_alive()
        text = body_of(pinned)
        for event in await room_history(stack.matrix, room_id):
            rel = relation(event)
            if (
                is_edit(event)
                and rel.get("event_id") == pinned["event_id"]
                and event.get("sender") == stack.bot_mxid
            ):
                text = str(event["content"].get("m.new_content", {}).get("body", ""))
        return text if all(s in text for s in shown) else None

    await eventually(probe, within=ARRIVE_WITHIN_S, interval=0.1, what=f"the header: {shown}")


def _notice(fragment: str) -> Any:
    """A bridge notice (``m.notice``) whose body contains ``fragment``."""

    def match(event: Mapping[str, Any]) -> bool:
        content = event.get("content")
        return (
            has_body(fragment)(event)
            and isinstance(content, Mapping)
            and content.get("msgtype") == "m.notice"
        )

    return match


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentRooms:
    matrix_room: str
    thread: str
    """The Teams thread's conversation id (``<channel>;messageid=<root>``)."""

    @property
    def root(self) -> str:
        return self.thread.partition(";messageid=")[2]


async def _answered(stack: Stack, rooms: IncidentRooms, command: str, answer: str) -> None:
    """The answer to ``command`` in both of the incident's rooms."""
    what = f"the answer to {command!r}"
    await matrix_event(stack, rooms.matrix_room, _notice(answer), what=f"{what} (Matrix)")
    await teams_message(
        stack, rooms.thread, lambda m: answer in m.text and m.activity_id != rooms.root,
        what=f"{what} (Teams)",
    )  # fmt: skip


async def _matrix_command(stack: Stack, rooms: IncidentRooms, command: str, answer: str) -> None:
    """Say ``command`` in the incident's Matrix room; wait for the answer in both rooms."""
    await stack.matrix.send(rooms.matrix_room, {"msgtype": "m.text", "body": command})
    await _answered(stack, rooms, command, answer)


async def _teams_command(
    stack: Stack, rooms: IncidentRooms, user: User, command: str, answer: str
) -> None:
    """Say ``command`` in the incident's Teams thread; wait for the answer in both rooms."""
    posted = await stack.emulator.post_message(rooms.thread, user, command, thread_root=rooms.root)
    assert posted.ok, posted
    await _answered(stack, rooms, command, answer)


# -- Teams ----------------------------------------------------------------------------------


def _thread_root(stack: Stack, thread: str) -> Message:
    messages = stack.emulator.messages(thread)
    assert messages, f"no messages in {thread}"
    return messages[0]


def _plain(teams_html: str) -> str:
    """The text of a Teams message as people read it (tags dropped, entities decoded)."""
    return html.unescape(_TAG.sub("", teams_html))


async def _teams_header_shows(stack: Stack, thread: str, *shown: str) -> None:
    """Wait until the thread's root (the header, updated in place) shows ``shown``."""

    async def probe() -> Message | None:
        stack.daemon.ensure_alive()
        root = _thread_root(stack, thread)
        text = _plain(root.text)
        return root if all(s in text for s in shown) else None

    await eventually(probe, within=ARRIVE_WITHIN_S, interval=0.1, what=f"the root: {shown}")


# -- the postmortem -------------------------------------------------------------------------


async def _cli_postmortem(stack: Stack) -> str:
    """``incident-bridge postmortem INC-1`` with the daemon's settings file: its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE__")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "postmortem", INCIDENT_ID,
        "--config", str(stack.daemon.config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_WITHIN_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("incident-bridge postmortem did not finish") from None
    assert proc.returncode == 0, (proc.returncode, err.decode(errors="replace"))
    return out.decode()


async def _assert_durations(stack: Stack, markdown: str) -> None:
    """Each duration equals (to the second) the difference of the recorded events' times."""
    (declare,) = await _incident_events(stack, "declare")
    acknowledged = [
        *await _incident_events(stack, "acknowledge"),
        *await _incident_events(stack, "assign"),
    ]
    statuses = await _incident_events(stack, "status", count=2)
    (resolve,) = await _incident_events(stack, "resolve")
    monitoring = [s for s in statuses if s["data"].get("after") == "monitoring"]
    start: datetime = declare["occurred_at"]
    expected = {
        "acknowledge": min(e["occurred_at"] for e in acknowledged),
        "mitigate": monitoring[0]["occurred_at"],
        "resolve": resolve["occurred_at"],
    }
    seconds = {what: int((end - start).total_seconds()) for what, end in expected.items()}
    found = {
        m.group("what"): int(m.group("seconds"))
        for line in markdown.splitlines()
        if (m := _DURATION.match(line))
    }
    assert found == seconds, (found, seconds)
    assert PAUSE_S <= seconds["acknowledge"] < seconds["mitigate"] < seconds["resolve"], seconds


def _section(markdown: str, title: str) -> list[str]:
    lines = markdown.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line.strip()]


def _assert_key_events(markdown: str, *, marked_token: str) -> None:
    keys = [line for line in _section(markdown, "Timeline") if "**Key event**" in line]
    assert len(keys) == 2, keys
    by_command, by_reaction = keys
    assert f"**Key event**: {escape(KEY_TEXT)}, by " in by_command, by_command
    assert "marked by Mara Matrix" in by_reaction, by_reaction
    assert escape(marked_token) in by_reaction, by_reaction
    assert "Blake Teams" in by_reaction, by_reaction


def _assert_participants(stack: Stack, markdown: str) -> None:
    lines = _section(markdown, "Participants")
    matrix_at, teams_at = lines.index("- Matrix: 1"), lines.index("- Teams: 2")
    matrix_people = " ".join(lines[matrix_at + 1 : teams_at])
    teams_people = " ".join(lines[teams_at + 1 :])
    assert stack.matrix.user_id in matrix_people, lines
    avery, blake = stack.teams_users
    for user in (avery, blake):
        assert user.aad_object_id in teams_people, lines


# -- once, each way -------------------------------------------------------------------------


async def _assert_once(stack: Stack, matrix_room: str, thread: str, *tokens: str) -> None:
    """Each token once on the other side (by a ghost, or by the bot in a line attributed to
    Matrix: bridge notices may quote a message), and once in the timeline."""
    history = await room_history(stack.matrix, matrix_room)
    ghosts = frozenset(
        sender
        for e in history
        if stack.is_bridge_user(sender := str(e.get("sender"))) and sender != stack.bot_mxid
    )
    in_matrix = matrix_token_counts(history, senders=ghosts)
    in_teams: Counter[str] = Counter()
    for message in bot_messages(stack.emulator, thread):
        if not message.deleted:
            for line in message.text.split(LINE_SEPARATOR):
                if FROM_MATRIX in line:
                    in_teams.update(tokens_in(line))
    for t in tokens:
        mirrored = in_matrix if t.startswith("t2m") else in_teams
        assert mirrored[t] == 1, f"{t} mirrored {mirrored[t]} times"
        records = await stack.timeline({"kind": "message", "body.text": {"$regex": t}})
        assert len(records) == 1, f"{t} has {len(records)} records"
    echoed = [t for t in in_teams if t.startswith("t2m")]
    assert not echoed, f"Teams lines mirrored back into Teams: {echoed}"


# -- the API --------------------------------------------------------------------------------


async def _assert_api(stack: Stack) -> None:
    url = f"{stack.daemon.base_url}/api/v1/incidents/{INCIDENT_ID}"
    async with stack.session.get(
        url, headers={"Authorization": f"Bearer {stack.api_token}"}
    ) as response:
        body = await response.json()
        assert response.status == 200, body
    assert body["id"] == INCIDENT_ID
    assert body["status"] == "resolved"
    assert body["title"] == TITLE
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        async with stack.session.get(url, headers=headers) as response:
            text = await response.text()
            assert response.status == 401, (headers, response.status, text)
        assert INCIDENT_ID not in text, text
        assert TITLE not in text, text
        assert json.loads(text) == {"error": "a valid bearer token is required"}, text
