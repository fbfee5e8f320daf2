"""Three replicas behind a round-robin load balancer stay correct; a crashed one's rooms
are taken over.

Three daemons share one MongoDB database, one Synapse and the Teams emulator behind a
``RoundRobinProxy`` (the Service), with two linked room pairs.

- A runbook command whose AS transaction reaches two replicas at once, whose answer is
  lost so that the homeserver sends it again, and which is then replayed to every
  replica: one run record, one execution.
- A two-way flood with replays across replicas: every fourth AS transaction goes to two
  replicas at once and a few answers are lost (the homeserver sends those again, to
  the next replica); every seventh Teams activity goes to two replicas at once and
  every tenth is delivered again, straight to another replica. Mid-flood the replica
  holding the most rooms is SIGKILLed and not restarted (the proxy skips it). Zero
  lost, zero duplicated, each room's order kept on each side, and the dead replica's
  rooms are taken over once its leases expire (``delivery.lease_ttl_s``: 10 s here,
  30 s by default).
"""

from __future__ import annotations

import asyncio
import collections
import re
import sys
import time
from pathlib import Path
from typing import Any, Final

import yaml

from devtools.teams_emulator import Delivery
from tests.e2e.observe import token
from tests.e2e.replicas import ReplicaStack, open_replicas
from tests.e2e.stack import Platforms, StackServers
from tests.e2e.two_way_load import TwoWayLoad, assert_once_and_in_order
from tests.support.http_proxy import Exchange, ProxiedRequest
from tests.support.waiting import eventually

REPLICAS: Final = 3
PAIRS: Final = 2
PER_PAIR: Final = 150
"""Messages each way in each pair."""
RATE: Final = 5.0
"""Messages per second each way in each pair."""
KILL_AT: Final = 40
"""The replica is killed after this Matrix message of the first pair."""
LEASE_TTL_S: Final = 10.0
TAKEOVER_WITHIN_S: Final = 60.0
"""A dead replica's leases last ``LEASE_TTL_S`` from their last renewal; the rest is
margin for a loaded machine."""
RECOVER_WITHIN_S: Final = 120.0
RUN_WITHIN_S: Final = 60.0
TRANSACTIONS: Final = "/_matrix/app/v1/transactions/"
TEAMS_ENDPOINT: Final = "/api/messages"
COMMAND: Final = "!runbook run count-once"
TEAMS_NUMBER: Final = re.compile(rb"t2m-rep\d-(\d{4})")
LOST_ANSWERS: Final = 3

APPEND_LINE: Final = "import sys\nwith open(sys.argv[1], 'a') as out:\n    out.write('ran\\n')\n"


def _write_catalog(directory: Path, executions: Path, operator: str) -> None:
    directory.mkdir()
    runbook = {
        "name": "count-once",
        "description": "Appends one line to a file, so that executions can be counted.",
        "access": {"mxids": [operator]},
        "timeout": "30s",
        "outside_incident": True,
        "executor": {
            "type": "exec",
            "argv": [sys.executable, "-c", APPEND_LINE, str(executions)],
        },
    }
    (directory / "count-once.yaml").write_text(yaml.safe_dump(runbook, sort_keys=False))


def _is_transaction(request: ProxiedRequest) -> bool:
    return request.method == "PUT" and request.path.startswith(TRANSACTIONS)


class Replays:
    """Which requests the proxy sends to two replicas, and which answers it loses."""

    def __init__(self) -> None:
        self._transactions: dict[str, int] = {}
        self.lost: set[str] = set()
        """Transaction paths whose first answer was lost."""

    def _number(self, request: ProxiedRequest) -> int:
        """Transactions numbered in the order first seen (a retry keeps its number)."""
        return self._transactions.setdefault(request.path, len(self._transactions))

    def duplicate(self, request: ProxiedRequest) -> bool:
        if _is_transaction(request):
            return self._number(request) % 4 == 1
        if request.path == TEAMS_ENDPOINT:
            found = TEAMS_NUMBER.search(request.body)
            return found is not None and int(found.group(1)) % 7 == 3
        return False

    def lose_answer(self, request: ProxiedRequest) -> bool:
        if not _is_transaction(request) or request.path in self.lost:
            return False
        if len(self.lost) < LOST_ANSWERS and self._number(request) % 15 == 7:
            self.lost.add(request.path)
            return True
        return False


async def test_three_replicas_lose_and_duplicate_nothing_when_one_dies(
    servers: StackServers, tmp_path: Path
) -> None:
    began = time.monotonic()
    catalog, executions = tmp_path / "runbooks", tmp_path / "executions.txt"

    def overrides(platforms: Platforms) -> dict[str, Any]:
        _write_catalog(catalog, executions, operator=platforms.matrix.user_id)
        return {
            "runbooks": {"catalog_dir": str(catalog)},
            "delivery": {"lease_ttl_s": LEASE_TTL_S},
        }

    async with open_replicas(servers, replicas=REPLICAS, chats=PAIRS, overrides=overrides) as stack:
        ready = time.monotonic()
        await _a_command_replayed_across_replicas_runs_once(stack, executions)
        await _a_flood_survives_a_crashed_replica(stack)
        assert "Traceback" not in stack.log_text()
    print(
        f"e2e-measure: replicas test took {time.monotonic() - began:.0f} s "
        f"({ready - began:.0f} s to start {REPLICAS} replicas)"
    )


async def _a_command_replayed_across_replicas_runs_once(
    stack: ReplicaStack, executions: Path
) -> None:
    pair = stack.pairs[0]
    wanted = COMMAND.encode()

    def carries_command(request: ProxiedRequest) -> bool:
        return _is_transaction(request) and wanted in request.body

    lost: set[str] = set()

    def lose_first_answer(request: ProxiedRequest) -> bool:
        if carries_command(request) and request.path not in lost:
            lost.add(request.path)
            return True
        return False

    stack.proxy.duplicate_when(carries_command)
    stack.proxy.drop_answer_when(lose_first_answer)
    await stack.matrix.send(pair.matrix_room, {"msgtype": "m.text", "body": COMMAND})

    def command_exchanges() -> list[Exchange]:
        return [e for e in stack.proxy.exchanges if carries_command(e.request)]

    async def answered_again() -> bool:
        return any(e.status == 200 for e in command_exchanges())

    await eventually(
        answered_again, within=RUN_WITHIN_S, what="the homeserver to send the command again"
    )
    stack.proxy.duplicate_when(None)
    stack.proxy.drop_answer_when(None)
    runs = stack.database["runbook_runs"]

    async def finished() -> bool:
        docs = await runs.find({}).to_list()
        return bool(docs) and all(d["state"] not in ("requested", "running") for d in docs)

    await eventually(finished, within=RUN_WITHIN_S, interval=0.2, what="the run to finish")
    request = command_exchanges()[0].request
    replayed = [await stack.proxy.send_to(name, request) for name in stack.live]
    assert [a.status for a in replayed] == [200] * len(stack.live), replayed

    reached = {a.upstream for e in command_exchanges() for a in e.answers}
    deliveries = sum(len(e.answers) for e in command_exchanges()) + len(replayed)
    docs = await runs.find({}).to_list()
    claims = await stack.database["timeline"].count_documents({"kind": "command"})
    lines = (await asyncio.to_thread(executions.read_text)).splitlines()
    print(
        f"e2e-measure: runbook command delivered {deliveries} times to {len(reached)} "
        f"replicas: {len(docs)} run record(s), {claims} claim(s), {len(lines)} execution(s)"
    )
    assert len(reached) == REPLICAS, reached
    assert [d["state"] for d in docs] == ["succeeded"], docs
    assert claims == 1
    assert lines == ["ran"]


async def _a_flood_survives_a_crashed_replica(stack: ReplicaStack) -> None:
    replays = Replays()
    stack.proxy.duplicate_when(replays.duplicate)
    stack.proxy.drop_answer_when(replays.lose_answer)
    kill_point = asyncio.Event()

    async def after_matrix(index: int, n: int) -> None:
        if index == 0 and n == KILL_AT:
            kill_point.set()

    load: TwoWayLoad

    async def after_teams(index: int, n: int, delivery: Delivery) -> None:
        if n % 10 == 5 and delivery.ok:
            marker = token("t2m", f"rep{index}", n)
            load.redelivered(marker, await _redeliver_elsewhere(stack, delivery))

    load = TwoWayLoad(
        stack,
        stream="rep",
        rate=RATE,
        count=PER_PAIR,
        after_matrix=after_matrix,
        after_teams=after_teams,
    )
    crash = Crash(stack)

    async def crasher() -> None:
        await kill_point.wait()
        await crash.kill_the_busiest()
        await crash.taken_over()

    started = time.monotonic()
    async with asyncio.timeout(PER_PAIR / RATE + TAKEOVER_WITHIN_S + 30), asyncio.TaskGroup() as g:
        g.create_task(load.run())
        g.create_task(crasher())
    stack.proxy.duplicate_when(None)
    stack.proxy.drop_answer_when(None)

    context = f"{crash.victim} killed holding {len(crash.rooms)} room(s)"
    verdict = await assert_once_and_in_order(stack, load, within=RECOVER_WITHIN_S, context=context)
    exchanges = stack.proxy.exchanges
    duplicated_txns = sum(1 for e in exchanges if e.duplicated and _is_transaction(e.request))
    duplicated_teams = sum(
        1 for e in exchanges if e.duplicated and e.request.path == TEAMS_ENDPOINT
    )
    resent = {e.request.path for e in exchanges if _is_transaction(e.request) and e.status == 200}
    skipped = sum(e.skipped.count(crash.victim) for e in exchanges)
    redelivered = sum(1 for _, d in load.redeliveries if d.ok)
    as_acks = [e.elapsed_s for e in exchanges if _is_transaction(e.request) and e.status == 200]
    print(
        f"e2e-measure: replicas flood of {verdict.m2t}+{verdict.t2m} messages in "
        f"{time.monotonic() - started:.0f} s; {context}, taken over in "
        f"{crash.took_over_s:.1f} s; AS transactions to two replicas {duplicated_txns}, "
        f"answers lost {len(replays.lost)}; Teams activities to two replicas "
        f"{duplicated_teams}, delivered again elsewhere {redelivered}; proxy skipped the "
        f"dead replica {skipped} time(s); requests per replica {dict(stack.proxy.requests)}; "
        f"{verdict.t2m_unacknowledged} Teams deliveries failed "
        f"({verdict.t2m_unacknowledged_stored} stored anyway); max ack Teams "
        f"{verdict.max_teams_ack_s * 1000:.0f} ms, AS {max(as_acks) * 1000:.0f} ms"
    )
    assert crash.rooms, "the killed replica held no room"
    assert duplicated_txns > 0
    assert duplicated_teams > 0
    assert redelivered > 0
    assert replays.lost, "no answer was lost"
    assert replays.lost <= resent, "the homeserver did not send a transaction again"


async def _redeliver_elsewhere(stack: ReplicaStack, delivery: Delivery) -> Delivery:
    """The same activity again, straight to a live replica that did not answer it first."""
    activity_id = delivery.activity_id.encode()
    first = next(
        (
            a.upstream
            for e in reversed(stack.proxy.exchanges)
            if activity_id in e.request.body
            for a in e.answers
        ),
        None,
    )
    other = next(name for name in stack.live if name != first)
    endpoint = f"{stack.replicas[other].url}{TEAMS_ENDPOINT}"
    return await stack.emulator.deliver(delivery.activity, endpoint=endpoint)


class Crash:
    """SIGKILL of the replica holding the most rooms, and the takeover of its rooms."""

    def __init__(self, stack: ReplicaStack) -> None:
        self._stack = stack
        self.victim = ""
        self.rooms: list[str] = []
        self._killed_at = 0.0
        self.took_over_s = 0.0

    async def kill_the_busiest(self) -> None:
        stack = self._stack

        async def held() -> dict[str, str] | None:
            owners = await stack.lease_owners()
            live = {room: o for room, o in owners.items() if o in stack.live}
            return live or None

        owners = await eventually(held, within=10, interval=0.05, what="a room leased")
        self.victim = collections.Counter(owners.values()).most_common(1)[0][0]
        self.rooms = sorted(room for room, owner in owners.items() if owner == self.victim)
        self._killed_at = time.monotonic()
        await stack.kill(self.victim)

    async def taken_over(self) -> None:
        """Until no lease names the dead replica: another one has leased its rooms."""
        leases = self._stack.database["outbox_leases"]

        async def free() -> bool:
            query = {"_id": {"$in": self.rooms}, "owner": self.victim}
            return await leases.count_documents(query) == 0

        await eventually(
            free,
            within=TAKEOVER_WITHIN_S,
            interval=0.2,
            what=f"the rooms of {self.victim} taken over",
        )
        self.took_over_s = time.monotonic() - self._killed_at
