"""A rolling restart of three replicas under steady two-way load loses and duplicates
nothing.

The replicas are replaced one at a time as a Deployment rolls: a replacement starts (new
port, new instance id) and the proxy routes to it once its ``/readyz`` is 200; then an
old replica gets SIGTERM. Its ``/readyz`` must fail at once, the proxy stops routing to
it within ``shutdown.readiness_grace_s`` (set above the proxy's poll interval, as a
pod's grace covers endpoint propagation), and it exits 0 within the drain deadline.

A runbook run is in flight when the roll starts (its script waits for a file that only
appears at the end). The replica running it is stopped under it: the run must end
``unknown``, announced in the rooms, and never run again; its process must not outlive
the replica.

At the end: every Matrix message once in Teams, every Teams message once in Matrix (and
no Teams delivery failed: the proxy never sent one to a replica that had stopped
serving), each room's order kept.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml

from tests.e2e.observe import body_of, new_messages, room_history
from tests.e2e.replicas import PROXY_POLL_S, ReplicaStack, Stopped, open_replicas
from tests.e2e.stack import Platforms, StackServers
from tests.e2e.two_way_load import TwoWayLoad, assert_once_and_in_order
from tests.support.waiting import eventually

REPLICAS: Final = 3
PAIRS: Final = 2
RATE: Final = 5.0
"""Messages per second each way in each pair (10 each way in all)."""
GRACE_S: Final = 2.0
"""``shutdown.readiness_grace_s``: covers the proxy's poll interval and a slow probe."""
DRAIN_S: Final = 10.0
EXIT_SLACK_S: Final = 5.0
"""Process start-up and teardown around the drain, on a loaded machine."""
NOT_READY_WITHIN_S: Final = 1.0
""""At once": the first poll after the signal is handled."""
WARM_UP: Final = 10
"""Matrix messages into the first pair before the run is requested."""
AFTER_ROLL: Final = 10
"""Matrix messages into the first pair after the last old replica has stopped."""
RUN_WITHIN_S: Final = 60.0
HEARTBEAT_S: Final = 1.0
STALE_AFTER_S: Final = 6.0
SWEEP_S: Final = 1.0
UNKNOWN_WITHIN_S: Final = 60.0
"""A run whose owner stopped is ``unknown`` ``STALE_AFTER_S`` after its last heartbeat,
at the next sweep; the rest is margin for a loaded machine."""
RECOVER_WITHIN_S: Final = 120.0
ROLL_WITHIN_S: Final = 300.0
COMMAND: Final = "!runbook run wait-for-release"
TRANSACTIONS: Final = "/_matrix/app/v1/transactions/"

WAIT_FOR_RELEASE: Final = (
    "import os, sys, time\n"
    "with open(sys.argv[1], 'a') as out:\n"
    "    out.write('started ' + str(os.getpid()) + '\\n')\n"
    "deadline = time.monotonic() + 120\n"
    "while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:\n"
    "    time.sleep(0.05)\n"
    "with open(sys.argv[1], 'a') as out:\n"
    "    out.write('done\\n')\n"
)


def _write_catalog(directory: Path, journal: Path, release: Path, operator: str) -> None:
    directory.mkdir()
    runbook = {
        "name": "wait-for-release",
        "description": "Writes its pid, then waits until a file appears (two minutes at most).",
        "access": {"mxids": [operator]},
        "timeout": "5m",
        "outside_incident": True,
        "executor": {
            "type": "exec",
            "argv": [sys.executable, "-c", WAIT_FOR_RELEASE, str(journal), str(release)],
        },
    }
    (directory / "wait-for-release.yaml").write_text(yaml.safe_dump(runbook, sort_keys=False))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_rolling_restart_under_load_loses_and_duplicates_nothing(
    servers: StackServers, tmp_path: Path
) -> None:
    assert PROXY_POLL_S < GRACE_S
    began = time.monotonic()
    catalog, journal = tmp_path / "runbooks", tmp_path / "journal.txt"
    release = tmp_path / "release"

    def overrides(platforms: Platforms) -> dict[str, Any]:
        _write_catalog(catalog, journal, release, operator=platforms.matrix.user_id)
        return {
            "runbooks": {
                "catalog_dir": str(catalog),
                # Production: heartbeat 2 s, stale after 30 s, swept every 10 s.
                "heartbeat_interval_s": HEARTBEAT_S,
                "stale_after_s": STALE_AFTER_S,
                "sweep_interval_s": SWEEP_S,
            },
            "shutdown": {"readiness_grace_s": GRACE_S, "drain_timeout_s": DRAIN_S},
        }

    async with open_replicas(servers, replicas=REPLICAS, chats=PAIRS, overrides=overrides) as stack:
        warmed = asyncio.Event()

        async def after_matrix(index: int, n: int) -> None:
            if index == 0 and n == WARM_UP:
                warmed.set()

        load = TwoWayLoad(stack, stream="roll", rate=RATE, after_matrix=after_matrix)
        roll = Roll(stack, journal)
        stop = asyncio.Event()

        async def roll_under_load() -> None:
            await warmed.wait()
            await roll.request_run()
            await roll.replace_all()
            await roll.run_ended()
            await roll.more_messages(load, AFTER_ROLL)
            stop.set()

        rolled = time.monotonic()
        async with asyncio.timeout(ROLL_WITHIN_S), asyncio.TaskGroup() as group:
            group.create_task(load.run(stop))
            group.create_task(roll_under_load())
        rolled = time.monotonic() - rolled

        verdict = await assert_once_and_in_order(
            stack, load, within=RECOVER_WITHIN_S, context="rolling restart"
        )
        await roll.assert_announced_and_not_run_again(release)
        exchanges = stack.proxy.exchanges
        as_calls = [
            e
            for e in exchanges
            if e.request.path.startswith(TRANSACTIONS) and e.started >= roll.began
        ]
        as_failed = [
            f"{e.status} from {', '.join(f'{a.upstream} {a.status or a.error}' for a in e.answers)}"
            for e in as_calls
            if e.status != 200
        ]
        as_max = max((e.elapsed_s for e in as_calls if e.status == 200), default=0.0)
        for stopped in roll.stopped:
            print(
                f"e2e-measure: {stopped.name} after SIGTERM: /readyz failed in "
                f"{stopped.not_ready_after_s * 1000:.0f} ms, unrouted in "
                f"{stopped.unrouted_after_s * 1000:.0f} ms, exited {stopped.exit_code} in "
                f"{stopped.exited_after_s:.1f} s"
            )
        print(
            f"e2e-measure: rolling restart of {REPLICAS} replicas under "
            f"{RATE * PAIRS:.0f} msg/s each way took {rolled:.0f} s: {verdict.m2t}+"
            f"{verdict.t2m} messages ({verdict.m2t / rolled:.1f} and {verdict.t2m / rolled:.1f} "
            f"msg/s achieved), {verdict.t2m_unacknowledged} Teams deliveries failed, "
            f"{len(as_failed)} of {len(as_calls)} AS transactions answered non-200 and sent "
            f"again {as_failed}; "
            f"max ack Teams {verdict.max_teams_ack_s * 1000:.0f} ms, AS {as_max * 1000:.0f} ms; "
            f"run {roll.run_id} on {roll.run_owner} unknown {roll.unknown_after_s:.1f} s "
            f"after its replica got SIGTERM; requests per replica {dict(stack.proxy.requests)}"
        )
        print(f"e2e-measure: rolling restart test took {time.monotonic() - began:.0f} s")

        assert verdict.t2m_unacknowledged == 0, "a Teams delivery failed during the roll"
        for stopped in roll.stopped:
            log = stack.replicas[stopped.name].daemon.log_text()
            assert "delivery_drain_deadline" not in log, f"{stopped.name} did not drain"
            assert stopped.exit_code == 0, stopped
            assert stopped.not_ready_after_s < NOT_READY_WITHIN_S, stopped
            assert stopped.unrouted_after_s < GRACE_S, stopped
            assert stopped.exited_after_s < GRACE_S + DRAIN_S + EXIT_SLACK_S, stopped
        assert "Traceback" not in stack.log_text()


class Roll:
    """The run in flight, and the replacement of every original replica in turn."""

    def __init__(self, stack: ReplicaStack, journal: Path) -> None:
        self._stack = stack
        self._journal = journal
        self.stopped: list[Stopped] = []
        self.began = time.monotonic()
        self.run_id = ""
        self.run_owner = ""
        self.run_pid = 0
        self._owner_stopped_at = 0.0
        self._owner_stopped_wall = datetime.now(UTC)
        self.unknown_after_s = 0.0

    async def _journal_lines(self) -> list[str]:
        if not await asyncio.to_thread(self._journal.exists):
            return []
        return (await asyncio.to_thread(self._journal.read_text)).splitlines()

    async def request_run(self) -> None:
        """Ask for the run from Matrix; return once its script runs."""
        stack = self._stack
        self.began = time.monotonic()
        await stack.matrix.send(stack.pairs[0].matrix_room, {"msgtype": "m.text", "body": COMMAND})

        async def running() -> dict[str, Any] | None:
            doc = await stack.database["runbook_runs"].find_one({"state": "running"})
            return doc if doc is not None and await self._journal_lines() else None

        run = await eventually(running, within=RUN_WITHIN_S, interval=0.1, what="the run")
        self.run_id, self.run_owner = str(run["_id"]), str(run["owner"])
        (line,) = await self._journal_lines()
        self.run_pid = int(line.split()[1])

    async def replace_all(self) -> None:
        """Each original replica in turn: a replacement routed to, then SIGTERM."""
        for old in list(self._stack.live):
            await self._stack.add_replica()
            if old == self.run_owner:
                self._owner_stopped_at = time.monotonic()
                self._owner_stopped_wall = datetime.now(UTC)
            self.stopped.append(
                await self._stack.terminate(
                    old,
                    not_ready_within=NOT_READY_WITHIN_S * 5,
                    exit_within=GRACE_S + DRAIN_S + EXIT_SLACK_S * 2,
                )
            )

    async def more_messages(self, load: TwoWayLoad, count: int) -> None:
        target = len(load.matrix_sent[0]) + count

        async def sent() -> bool:
            return len(load.matrix_sent[0]) >= target

        await eventually(sent, within=count / RATE + 30, interval=0.05, what="more messages")

    async def run_ended(self) -> None:
        """Until the run is no longer ``running`` (bounded from its replica's SIGTERM)."""
        runs = self._stack.database["runbook_runs"]

        async def ended() -> dict[str, Any] | None:
            doc = await runs.find_one({"_id": self.run_id})
            return doc if doc is not None and doc["state"] != "running" else None

        remaining = UNKNOWN_WITHIN_S - (time.monotonic() - self._owner_stopped_at)
        run = await eventually(
            ended, within=max(1.0, remaining), interval=0.2, what=f"{self.run_id} to end"
        )
        assert run["state"] == "unknown", run
        assert "not re-run" in str(run.get("outcome")), run
        self.unknown_after_s = (run["finished_at"] - self._owner_stopped_wall).total_seconds()

    async def assert_announced_and_not_run_again(self, release: Path) -> None:
        """Announced in the Matrix room; its process gone; never run again."""
        stack = self._stack
        assert not _alive(self.run_pid), "the run's process outlived its replica"

        async def announced() -> bool:
            events = new_messages(await room_history(stack.matrix, stack.pairs[0].matrix_room))
            return any(
                self.run_id in body_of(e) and "unknown" in body_of(e)
                for e in events
                if stack.is_bridge_user(str(e.get("sender")))
            )

        await eventually(announced, within=30, interval=0.2, what="the run announced unknown")
        await asyncio.to_thread(release.touch)
        assert await stack.database["runbook_runs"].count_documents({}) == 1
        assert len(await self._journal_lines()) == 1, "the run was started again"
