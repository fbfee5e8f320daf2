"""MongoDB stops for a minute under two-way traffic, then comes back (R5).

While its store is down the bridge can keep nothing, so it takes nothing: it answers
the Teams channel's activity posts and the homeserver's transactions with an error,
and ``/readyz`` turns false. The platforms keep what was sent: Synapse keeps every
transaction and retries it on its own backoff (``as_retries``); on the Teams side an
activity the bot refused is posted again, same activity id, until the bot takes it.
The emulator hands the bot's answer back to whoever posted and never retries by
itself, so this test's Teams sender re-posts on a non-2xx answer, as the channel does
for a bot that fails (Teams gives up after a few tries; what it then drops is the
gap marker's concern, R10). Once MongoDB is back, every message of the whole test is
in the timeline once and on the other side once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Final

from devtools.teams_emulator import Delivery
from tests.e2e.as_retries import AsRetries
from tests.e2e.observe import duplicates, teams_tokens_in_order, token
from tests.e2e.readiness_watch import ReadinessWatch
from tests.e2e.stack import Stack
from tests.e2e.tally import tally, timeline_message_counts
from tests.support.waiting import eventually

RATE: Final = 5.0
"""Messages per second each way (10 per second in all)."""
LEAD_S: Final = 10.0
"""Traffic before MongoDB stops."""
OUTAGE_S: Final = 60.0
TAIL_S: Final = 10.0
"""Traffic after MongoDB is back."""
READY_FALSE_WITHIN_S: Final = 10.0
READY_AGAIN_WITHIN_S: Final = 30.0
RESEND_FIRST_S: Final = 1.0
RESEND_CAP_S: Final = 5.0
RESEND_FOR_S: Final = OUTAGE_S + 120.0
"""How long the Teams side keeps re-posting one activity."""
AFTERMATH_S: Final = 5.0
"""A request sent this long after MongoDB answered again may still have met the outage
(the bridge's driver finds the server again within its selection timeout)."""
RECOVER_WITHIN_S: Final = 240.0
"""Synapse's retries after a 60 s outage: 2+4+8+16+32 s, then 64 s, or 128 s more when
the 64 s retry comes just before MongoDB answers again; then the backlog."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    sent_at: float
    """``time.monotonic()`` when the post began."""
    status: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamsPost:
    marker: str
    attempts: tuple[Attempt, ...]

    @property
    def taken(self) -> bool:
        return bool(self.attempts) and _ok(self.attempts[-1].status)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outage:
    """``time.monotonic()`` marks of the outage."""

    stopping: float
    stopped: float
    stopped_wall: float
    """``stopped`` as ``time.time()``."""
    starting: float
    back: float
    back_wall: float
    """``back`` as ``time.time()``, to compare with the homeserver's log."""


def _ok(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _not_stored_transactions(log_text: str) -> int:
    count = 0
    for line in log_text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "transaction_not_stored":
            count += 1
    return count


async def _post_until_taken(stack: Stack, n: int) -> TeamsPost:
    """Post one Teams message, and post the same activity again while the bot refuses it."""
    pair = stack.pairs[0]
    marker = token("t2m", "mongo", n)
    sent_at = time.monotonic()
    first = await stack.emulator.post_message(pair.teams, stack.teams_users[n % 2], marker)
    attempts = [Attempt(sent_at=sent_at, status=first.status)]
    delivery: Delivery = first
    pause = RESEND_FIRST_S
    while not delivery.ok and time.monotonic() - attempts[0].sent_at < RESEND_FOR_S:
        await asyncio.sleep(pause)  # the channel's own pause between tries
        pause = min(RESEND_CAP_S, pause * 2)
        sent_at = time.monotonic()
        delivery = await stack.emulator.redeliver(first)
        attempts.append(Attempt(sent_at=sent_at, status=delivery.status))
    return TeamsPost(marker=marker, attempts=tuple(attempts))


async def test_mongodb_down_for_a_minute_loses_and_duplicates_nothing(chat_stack: Stack) -> None:
    stack = chat_stack
    pair = stack.pairs[0]
    mongo = stack.servers.mongo
    synapse_retries = AsRetries(
        stack.servers.synapse.log_path, stack.servers.appservice.registration.as_id
    )
    traffic_done = asyncio.Event()
    outage: list[Outage] = []
    started = time.monotonic() + 0.2

    async def matrix_traffic() -> list[str]:
        sent: list[str] = []
        for n in itertools.count():
            await asyncio.sleep(max(0.0, started + n / RATE - time.monotonic()))
            if traffic_done.is_set():
                return sent
            marker = token("m2t", "mongo", n)
            await stack.matrix.send(pair.matrix_room, {"msgtype": "m.text", "body": marker})
            sent.append(marker)
        raise AssertionError("unreachable")

    async def teams_traffic() -> list[TeamsPost]:
        async with asyncio.TaskGroup() as posts:
            tasks = []
            for n in itertools.count():
                await asyncio.sleep(max(0.0, started + (n + 0.5) / RATE - time.monotonic()))
                if traffic_done.is_set():
                    break
                tasks.append(posts.create_task(_post_until_taken(stack, n)))
        return [t.result() for t in tasks]

    async def outage_of_mongodb() -> None:
        await asyncio.sleep(max(0.0, started + LEAD_S - time.monotonic()))
        stopping = time.monotonic()
        await asyncio.to_thread(mongo.stop)
        stopped, stopped_wall = time.monotonic(), time.time()
        await asyncio.sleep(max(0.0, stopped + OUTAGE_S - time.monotonic()))
        starting = time.monotonic()
        await asyncio.to_thread(mongo.start)
        back, back_wall = time.monotonic(), time.time()
        outage.append(
            Outage(
                stopping=stopping,
                stopped=stopped,
                stopped_wall=stopped_wall,
                starting=starting,
                back=back,
                back_wall=back_wall,
            )
        )
        await asyncio.sleep(TAIL_S)
        traffic_done.set()

    async with ReadinessWatch(stack.session, stack.daemon.base_url) as readiness:
        async with asyncio.timeout(LEAD_S + OUTAGE_S + TAIL_S + RESEND_FOR_S + 60):
            async with asyncio.TaskGroup() as group:
                matrix_task = group.create_task(matrix_traffic())
                teams_task = group.create_task(teams_traffic())
                group.create_task(outage_of_mongodb())
        (marks,) = outage
        not_ready = await readiness.wait_for(
            ready=False, after=marks.stopping, within=READY_FALSE_WITHIN_S
        )
        ready_again = await readiness.wait_for(
            ready=True, after=marks.back, within=READY_AGAIN_WITHIN_S
        )
    m2t = matrix_task.result()
    posts = teams_task.result()

    async def all_matrix_messages_stored() -> bool:
        stack.daemon.ensure_alive()
        stored = await timeline_message_counts(stack, pair)
        return all(stored[m] >= 1 for m in m2t)

    await eventually(
        all_matrix_messages_stored,
        within=RECOVER_WITHIN_S,
        interval=0.5,
        what="every Matrix message in the timeline",
    )
    matrix_stored = time.monotonic()
    await stack.settled(within=RECOVER_WITHIN_S)
    settled = time.monotonic()
    counts = await tally(stack, pair)
    retries = synapse_retries.read()

    refused = [a for p in posts for a in p.attempts if not _ok(a.status)]
    backlog_taken = max(p.attempts[-1].sent_at for p in posts if len(p.attempts) > 1)
    retried_after = [t - marks.back_wall for t in retries.started if t >= marks.back_wall]
    print(
        f"e2e-measure: mongodb outage: stop took {marks.stopped - marks.stopping:.1f} s, down "
        f"{marks.back - marks.stopped:.1f} s (start took {marks.back - marks.starting:.1f} s); "
        f"{len(m2t)} Matrix and {len(posts)} Teams messages; readiness false "
        f"{not_ready.at - marks.stopped:.2f} s after the server exited "
        f"({not_ready.at - marks.stopping:.2f} s after the stop began), ready again "
        f"{ready_again.at - marks.back:.2f} s after it answered; "
        f"{len(refused)} Teams posts refused ({dict(Counter(a.status for a in refused))}) "
        f"in {sum(1 for p in posts if len(p.attempts) > 1)} messages, the last of them taken "
        f"{backlog_taken - marks.back:.1f} s after MongoDB was back; Synapse scheduled "
        f"retries after {[r.delay_s for r in retries.scheduled]} s, retried "
        f"{[round(r, 1) for r in retried_after[:1]]} s after MongoDB was back; every Matrix "
        f"message stored {matrix_stored - marks.back:.1f} s and everything delivered "
        f"{settled - marks.back:.1f} s after MongoDB was back"
    )

    # While MongoDB was down the bridge took nothing, and said so.
    assert not_ready.at - marks.stopped <= READY_FALSE_WITHIN_S
    assert refused, "no Teams post was refused while MongoDB was down"
    assert all(a.status is not None and a.status >= 500 for a in refused), [
        a.status for a in refused
    ]
    assert all(marks.stopping <= a.sent_at <= marks.back + AFTERMATH_S for a in refused)
    assert _not_stored_transactions(stack.daemon.log_text()) >= 1
    assert any(marks.stopped_wall <= r.at <= marks.back_wall for r in retries.scheduled), (
        "Synapse never had to retry a transaction while MongoDB was down"
    )

    # Afterwards every message is everywhere it belongs, exactly once.
    assert all(p.taken for p in posts), [p.marker for p in posts if not p.taken]
    t2m = [p.marker for p in posts]
    assert duplicates(counts.timeline_messages) == {}
    assert duplicates(counts.matrix_by_bridge) == {}
    assert duplicates(counts.teams_by_bot) == {}
    assert sorted(m for m in m2t if counts.timeline_messages[m] != 1) == []
    assert sorted(m for m in m2t if counts.teams_by_bot[m] != 1) == []
    assert sorted(m for m in t2m if counts.timeline_messages[m] != 1) == []
    assert sorted(m for m in t2m if counts.matrix_by_bridge[m] != 1) == []
    assert counts.misplaced() == {k: [] for k in counts.misplaced()}
    in_teams = [t for t in teams_tokens_in_order(stack.emulator, pair.teams_id) if t in m2t]
    assert in_teams == m2t, "Matrix messages out of order in Teams"
    stack.daemon.ensure_alive()
    assert "Traceback" not in stack.daemon.log_text()
