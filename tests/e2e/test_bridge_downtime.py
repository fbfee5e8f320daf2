"""The bridge is down for a while as both sides chat, then starts again (R10).

Matrix: the homeserver keeps every transaction the bridge did not take and retries it
on its own backoff (2, 4, 8 ... 512 s); the bridge pings it when it starts, which makes
it retry at once, so every Matrix message of the downtime is in the timeline and in
Teams once, in order, a few seconds after the start, however long the downtime was.

Teams: an activity sent while the bot is down is gone (the emulator's delivery fails
and, as Teams does, nobody sends it again). The bridge cannot fetch it back, so at
start-up it records an explicit gap marker for the linked Teams conversation: a
``gap`` event whose window runs from the last liveness beat of the stopped process
(beats every 10 s) to the start, shown as a notice by the bot in the linked Matrix
room. Every lost message was sent inside that window. A later edit of a lost message
is evidence of it, and gets a marker of its own naming it.

The downtime is ``E2E_DOWNTIME_S`` seconds (default 90: twice the 45 s after which the
bridge counts downtime as a gap, and past five of the homeserver's retries; the bar's
5 minutes only makes the test longer, since the start-up ping ends the homeserver's
backoff whatever it has grown to).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from bridge.gaps import GapRecorder
from tests.e2e.observe import (
    body_of,
    bot_messages,
    duplicates,
    room_history,
    teams_tokens_in_order,
    token,
)
from tests.e2e.stack import Pair, Stack
from tests.e2e.tally import tally, timeline_message_counts
from tests.support.waiting import eventually

DOWNTIME_S: Final = float(os.environ.get("E2E_DOWNTIME_S") or 90.0)
LEAD_S: Final = 10.0
TAIL_S: Final = 10.0
RATE: Final = 1.0
"""Messages per second each way."""
_RECORDER: Final = inspect.signature(GapRecorder).parameters
HEARTBEAT: Final[timedelta] = _RECORDER["heartbeat"].default
"""How often a running bridge records that it is alive (the recorder's default, not a
setting)."""
THRESHOLD: Final[timedelta] = _RECORDER["threshold"].default
"""Downtime longer than this is a gap."""
RECOVER_WITHIN_S: Final = 90.0
GAP_KIND: Final = "gap"


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamsPost:
    marker: str
    activity_id: str
    sent_at: datetime
    taken: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Downtime:
    """Wall-clock marks (UTC) of the downtime."""

    stopping: datetime
    starting: datetime
    ready: datetime


def _now() -> datetime:
    return datetime.now(UTC)


async def _gap_markers(stack: Stack, pair: Pair) -> list[dict[str, Any]]:
    return await stack.timeline({"kind": GAP_KIND, "origin.room_id": pair.teams_id})


def _bot_notices(history: list[dict[str, Any]], stack: Stack) -> list[Mapping[str, Any]]:
    notices: list[Mapping[str, Any]] = []
    for event in history:
        content = event.get("content")
        if (
            event.get("type") == "m.room.message"
            and event.get("sender") == stack.bot_mxid
            and isinstance(content, Mapping)
            and content.get("msgtype") == "m.notice"
        ):
            notices.append(event)
    return notices


def _offset(at: datetime | None, since: datetime) -> str:
    return "?" if at is None else f"{(at - since).total_seconds():+.2f}"


def _shown_once(notices: list[Mapping[str, Any]], text: str) -> bool:
    return sum(1 for n in notices if body_of(n) == text) == 1


async def test_bridge_down_recovers_matrix_and_marks_the_teams_gap(chat_stack: Stack) -> None:
    stack = chat_stack
    pair = stack.pairs[0]
    assert timedelta(seconds=DOWNTIME_S) > THRESHOLD, "the downtime must count as a gap"
    traffic_done = asyncio.Event()
    downtime: list[Downtime] = []
    started = time.monotonic() + 0.2

    async def matrix_traffic() -> list[str]:
        sent: list[str] = []
        for n in itertools.count():
            await asyncio.sleep(max(0.0, started + n / RATE - time.monotonic()))
            if traffic_done.is_set():
                return sent
            marker = token("m2t", "down", n)
            await stack.matrix.send(pair.matrix_room, {"msgtype": "m.text", "body": marker})
            sent.append(marker)
        raise AssertionError("unreachable")

    async def teams_traffic() -> list[TeamsPost]:
        sent: list[TeamsPost] = []
        for n in itertools.count():
            await asyncio.sleep(max(0.0, started + (n + 0.5) / RATE - time.monotonic()))
            if traffic_done.is_set():
                return sent
            marker = token("t2m", "down", n)
            sent_at = _now()
            delivery = await stack.emulator.post_message(
                pair.teams, stack.teams_users[n % 2], marker
            )
            sent.append(
                TeamsPost(
                    marker=marker,
                    activity_id=delivery.activity_id,
                    sent_at=sent_at,
                    taken=delivery.ok,
                )
            )
        raise AssertionError("unreachable")

    async def down_and_up() -> None:
        await asyncio.sleep(max(0.0, started + LEAD_S - time.monotonic()))
        stopping = _now()
        code = await stack.daemon.stop()
        assert code == 0, f"the bridge stopped with code {code}\n{stack.daemon.tail()}"
        await asyncio.sleep(max(0.0, DOWNTIME_S - (_now() - stopping).total_seconds()))
        starting = _now()
        await stack.daemon.start(stack.session)
        downtime.append(Downtime(stopping=stopping, starting=starting, ready=_now()))
        await asyncio.sleep(TAIL_S)
        traffic_done.set()

    async with asyncio.timeout(LEAD_S + DOWNTIME_S + TAIL_S + 120):
        async with asyncio.TaskGroup() as group:
            matrix_task = group.create_task(matrix_traffic())
            teams_task = group.create_task(teams_traffic())
            group.create_task(down_and_up())
    (marks,) = downtime
    m2t = matrix_task.result()
    posts = teams_task.result()

    async def all_matrix_messages_in_teams() -> bool:
        stack.daemon.ensure_alive()
        stored = await timeline_message_counts(stack, pair)
        in_teams = set(teams_tokens_in_order(stack.emulator, pair.teams_id))
        return all(stored[m] >= 1 and m in in_teams for m in m2t)

    await eventually(
        all_matrix_messages_in_teams,
        within=RECOVER_WITHIN_S,
        interval=0.5,
        what="every Matrix message in the timeline and in Teams",
    )
    recovered = _now()
    await stack.settled()

    # A lost message edited later: evidence of what the bridge never received.
    lost = [p for p in posts if not p.taken]
    assert lost, "no Teams message was sent while the bridge was down"
    edited = lost[len(lost) // 2]
    edit = await stack.emulator.edit_message(edited.activity_id, f"{edited.marker} (edited)")
    assert edit.ok, edit.status

    async def evidence_marker() -> dict[str, Any] | None:
        markers = await _gap_markers(stack, pair)
        found = [m for m in markers if m.get("data", {}).get("gap") == "missing"]
        return found[0] if found else None

    await eventually(evidence_marker, within=30, what="the evidence gap marker")
    await stack.settled()
    missing = await evidence_marker()
    assert missing is not None

    counts = await tally(stack, pair)
    history = await room_history(stack.matrix, pair.matrix_room)
    notices = _bot_notices(history, stack)
    markers = await _gap_markers(stack, pair)
    down_markers = [m for m in markers if m.get("data", {}).get("gap") == "downtime"]
    taken = [p.marker for p in posts if p.taken]
    window_from = datetime.fromisoformat(down_markers[0]["data"]["from"]) if down_markers else None
    window_to = datetime.fromisoformat(down_markers[0]["data"]["to"]) if down_markers else None
    told_in_teams = [
        m.text for m in bot_messages(stack.emulator, pair.teams_id) if "could not be" in m.text
    ]
    print(
        f"e2e-measure: bridge downtime: down "
        f"{(marks.starting - marks.stopping).total_seconds():.1f} s, start took "
        f"{(marks.ready - marks.starting).total_seconds():.1f} s; {len(m2t)} Matrix and "
        f"{len(posts)} Teams messages, {len(lost)} of them lost; every Matrix message in "
        f"Teams {(recovered - marks.ready).total_seconds():.1f} s after the bridge was ready; "
        f"gap window from {_offset(window_from, marks.stopping)} s after SIGTERM to "
        f"{_offset(window_to, marks.starting)} s after the start began "
        f"({_offset(window_to, marks.ready)} s from ready); markers: "
        f"{[(m['data'], m['body']['text']) for m in markers]}; told in Teams: {told_in_teams}"
    )

    # Matrix: fully recovered through the homeserver's retries, in order, once.
    assert duplicates(counts.timeline_messages) == {}
    assert duplicates(counts.teams_by_bot) == {}
    assert duplicates(counts.matrix_by_bridge) == {}
    assert sorted(m for m in m2t if counts.timeline_messages[m] != 1) == []
    assert sorted(m for m in m2t if counts.teams_by_bot[m] != 1) == []
    in_teams = [t for t in teams_tokens_in_order(stack.emulator, pair.teams_id) if t in set(m2t)]
    assert in_teams == m2t, "Matrix messages out of order in Teams"
    # Teams: what the bridge took is in Matrix once; what it did not take is not made up.
    assert sorted(m for m in taken if counts.timeline_messages[m] != 1) == []
    assert sorted(m for m in taken if counts.matrix_by_bridge[m] != 1) == []
    assert sorted(p.marker for p in lost if counts.timeline_messages[p.marker] != 0) == []

    # ... and the loss is on record: one downtime marker, bounding every lost message.
    assert len(down_markers) == 1, down_markers
    (marker,) = down_markers
    assert window_from is not None
    assert window_to is not None
    assert marks.stopping - HEARTBEAT - timedelta(seconds=2) <= window_from <= marks.stopping
    assert marks.starting <= window_to <= marks.ready
    outside = [p.marker for p in lost if not window_from <= p.sent_at <= window_to]
    assert outside == [], "Teams messages lost outside the gap marker's window"
    assert [m["room_key"] for m in marker["mirrors"]] == [f"matrix|{pair.matrix_room}"]
    assert [m["status"] for m in marker["mirrors"]] == ["sent"]
    assert f"{window_from:%Y-%m-%d %H:%M:%S}" in marker["body"]["text"]
    assert f"{window_to:%H:%M:%S}" in marker["body"]["text"]
    assert _shown_once(notices, marker["body"]["text"]), [body_of(n) for n in notices]
    # The edit of a lost message: a marker naming it, shown once too.
    assert missing["data"]["teams_message"] == edited.activity_id
    assert [m["status"] for m in missing["mirrors"]] == ["sent"]
    assert _shown_once(notices, missing["body"]["text"]), [body_of(n) for n in notices]
    stack.daemon.ensure_alive()
    assert "Traceback" not in stack.daemon.log_text()
