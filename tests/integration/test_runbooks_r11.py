"""R11, R12 and S7 through the run service, on SecantusDB with real processes.

- R11: the same command delivered twice (and claimed by two replicas) starts one run;
  a run whose process dies is ``unknown`` within 60 s and never run again.
- R12: the ``exec`` executor's timeout is enforced within 1 s and cancel within 5 s,
  with no process left and nothing left ``running``.
- S7: a canary secret given to a runbook is nowhere in MongoDB, the logs, chat notices
  or error messages.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.write_concern import WriteConcern

from bridge.clock import SystemClock
from bridge.ids import UlidFactory
from bridge.model import EventID, RoomLink
from bridge.runbooks.execution import ExecutionSettings, RunExecution
from bridge.runbooks.executors.exec import ExecExecutor
from bridge.runbooks.model import Run, RunID, RunState, SecretRef
from bridge.runbooks.mongo_store import MongoRunStore
from bridge.runbooks.ports import Actor
from bridge.runbooks.service import RunbookService, RunError
from bridge.timeline.mongo import MongoTimelineStore
from devtools.servers import MongoServer
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM
from tests.support.waiting import eventually
from tests.unit.runbooks.run_rig import INCIDENT, FakeCatalog, build_service, runbook

CANARY = "canary-3b9f0e6d41"
LINK = RoomLink(
    matrix_room=MATRIX_ROOM,
    teams_room=TEAMS_ROOM,
    incident_id=INCIDENT,
    created_at=SystemClock().now(),
)


@dataclass
class Replica:
    service: RunbookService
    execution: RunExecution


@dataclass
class Cluster:
    database: AsyncDatabase[dict[str, Any]]
    store: MongoTimelineStore
    runs: MongoRunStore
    catalog: FakeCatalog
    clock: SystemClock
    counter: list[int]

    def replica(self, name: str, **settings: Any) -> Replica:
        service, execution = build_service(
            store=self.store,
            runs=self.runs,
            catalog=self.catalog,
            executor=ExecExecutor(term_grace_s=0.5),
            clock=self.clock,
            ids=UlidFactory(),
            settings=ExecutionSettings(instance_id=name, edit_interval_s=0.1, **settings),
        )
        return Replica(service=service, execution=execution)

    def actor(self) -> Actor:
        self.counter[0] += 1
        return Actor(
            sender=ALICE,
            room=MATRIX_ROOM,
            event_id=EventID(f"cmd-{self.counter[0]}"),
            links=(LINK,),
        )

    async def run(self, run_id: str) -> Run:
        found = await self.runs.get(RunID(run_id))
        assert found is not None
        return found

    async def ended(self, run_id: str, *, within_s: float) -> Run:
        async with asyncio.timeout(within_s):
            while True:
                run = await self.run(run_id)
                if run.state.final:
                    return run
                await asyncio.sleep(0.02)


@pytest.fixture
async def cluster(mongo_server: MongoServer) -> AsyncIterator[Cluster]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri, tz_aware=True)
    name = f"runbooks_{uuid.uuid4().hex[:12]}"
    clock = SystemClock()
    store = MongoTimelineStore(client, name, clock=clock, write_concern=WriteConcern(w=1, j=True))
    await store.ensure_indexes()
    runs = MongoRunStore(store.database)
    await runs.ensure_indexes()
    await store.save_link(LINK)
    yield Cluster(
        database=store.database,
        store=store,
        runs=runs,
        catalog=FakeCatalog(),
        clock=clock,
        counter=[0],
    )
    await client.drop_database(name)
    await client.close()


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def _exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await asyncio.to_thread(_has_text, path)

    return probe


def _has_text(path: Path) -> bool:
    return path.exists() and bool(path.read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_command_delivered_twice_to_two_replicas_runs_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "runs.txt"
    cluster.catalog.put(runbook(argv=python(f"open({str(marker)!r}, 'a').write('ran\\n')")))
    first, second = cluster.replica("pod-a"), cluster.replica("pod-b")
    actor = cluster.actor()
    try:
        answers = await asyncio.gather(
            first.service.request(actor, "restart", {"service": "checkout"}),
            second.service.request(actor, "restart", {"service": "checkout"}),
            first.service.request(actor, "restart", {"service": "checkout"}),
            return_exceptions=True,
        )
        assert sum("started" in str(a) for a in answers) == 1, answers
        (run,) = await cluster.runs.find(list(RunState))
        ended = await cluster.ended(run.id, within_s=10)
        assert ended.state is RunState.SUCCEEDED, ended.outcome
        await asyncio.sleep(0.2)
        assert marker.read_text() == "ran\n"
    finally:
        await first.execution.close()
        await second.execution.close()


async def test_a_run_whose_process_died_is_unknown_within_60_s_and_not_rerun(
    cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "runs.txt"
    code = f"import time; open({str(marker)!r}, 'a').write('ran\\n'); time.sleep(30)"
    cluster.catalog.put(runbook(argv=python(code), timeout_s=120))
    dying = cluster.replica("pod-a", heartbeat_s=0.2)
    dying.execution.start_watching()
    answer = await dying.service.request(cluster.actor(), "restart", {"service": "checkout"})
    assert "started" in answer
    await eventually(_exists(marker), within=10, interval=0.02, what="the process to start")
    await dying.execution.close()  # the process dies: no state written, heartbeats stop
    died = cluster.clock.monotonic()

    survivor = cluster.replica("pod-b", heartbeat_s=0.2, stale_after_s=2.0, sweep_s=0.2)
    assert await survivor.execution.recover() == []  # its heartbeat is still fresh
    survivor.execution.start_watching()
    try:
        run = await cluster.ended("R-1", within_s=60)
        took = cluster.clock.monotonic() - died
        assert run.state is RunState.UNKNOWN
        assert took < 60
        print(f"orphan marked unknown {took:.1f} s after its process died")
        await asyncio.sleep(0.5)  # more sweeps: nothing is run again
        assert marker.read_text() == "ran\n"
        notices = (
            await cluster.database["timeline"]
            .find({"kind": "notice", "body.text": {"$regex": "unknown"}})
            .to_list()
        )
        assert notices
    finally:
        await survivor.execution.close()


async def test_exec_timeout_is_enforced_within_1_s_and_nothing_is_left(
    cluster: Cluster, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    cluster.catalog.put(runbook(argv=python(code), timeout_s=1.0))
    replica = cluster.replica("pod-a")
    try:
        started = cluster.clock.monotonic()
        await replica.service.request(cluster.actor(), "restart", {"service": "checkout"})
        run = await cluster.ended("R-1", within_s=10)
        late = cluster.clock.monotonic() - started - 1.0
        assert run.state is RunState.TIMED_OUT
        assert late < 1.0, late
        print(f"timeout enforced {late:.2f} s after the deadline")
        assert not alive(int(pid_file.read_text()))
        assert await cluster.runs.count("restart", [RunState.RUNNING]) == 0
    finally:
        await replica.execution.close()


async def test_exec_cancel_takes_effect_within_5_s(cluster: Cluster, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    cluster.catalog.put(runbook(argv=python(code), timeout_s=120))
    replica = cluster.replica("pod-a")
    try:
        await replica.service.request(cluster.actor(), "restart", {"service": "checkout"})
        await eventually(_exists(pid_file), within=10, interval=0.02, what="the process")
        started = cluster.clock.monotonic()
        answer = await replica.service.cancel(cluster.actor(), "R-1")
        took = cluster.clock.monotonic() - started
        run = await cluster.run("R-1")
        assert run.state is RunState.CANCELLED, answer
        assert took < 5.0
        print(f"cancel took effect in {took:.2f} s")
        assert not alive(int(pid_file.read_text()))
        assert await cluster.runs.count("restart", [RunState.RUNNING]) == 0
    finally:
        await replica.execution.close()


async def test_canary_secrets_are_nowhere(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNBOOK_TOKEN", CANARY)
    secret_file = tmp_path / "secret"
    secret_file.write_text(CANARY + "-file\n")
    refs = (
        SecretRef(name="token", env="RUNBOOK_TOKEN"),
        SecretRef(name="other", file=str(secret_file)),
    )
    code = (
        "import os, sys; t = os.environ['TOKEN']; print('token', t); print(t[:4], end='');"
        "sys.stdout.flush(); print(t[4:]); print(os.environ['OTHER']); "
        "sys.stderr.write('failed with ' + t + '\\n'); sys.exit(3)"
    )
    cluster.catalog.put(
        runbook(
            argv=python(code),
            secrets=refs,
            env={"TOKEN": "{secret:token}", "OTHER": "{secret:other}"},
        )
    )
    cluster.catalog.put(
        replace(
            runbook("broken", secrets=(SecretRef(name="missing", env="RUNBOOK_NOT_SET"),)),
            outside_incident=True,
        )
    )
    replica = cluster.replica("pod-a")
    errors: list[str] = []
    try:
        with structlog.testing.capture_logs() as logs:
            await replica.service.request(cluster.actor(), "restart", {"service": "checkout"})
            run = await cluster.ended("R-1", within_s=10)
            await asyncio.sleep(0.3)  # the final edit
            answer = await replica.service.request(
                cluster.actor(), "restart", {"service": "checkout"}, dry_run=True
            )
            errors.append(answer)
            await replica.service.request(cluster.actor(), "broken", {"service": "x"})
            broken = await cluster.ended("R-3", within_s=10)
            errors.append(broken.outcome)
            try:
                await replica.service.approve(cluster.actor(), "R-1")
            except RunError as exc:
                errors.append(str(exc))
    finally:
        await replica.execution.close()
    assert run.state is RunState.FAILED
    assert "token ***" in run.output
    assert "***" in run.outcome or "exit" in run.outcome
    found = [
        name
        for name in await cluster.database.list_collection_names()
        for doc in await cluster.database[name].find({}).to_list()
        if CANARY in repr(doc)
    ]
    assert found == []
    assert not [entry for entry in logs if CANARY in repr(entry)]
    assert not [e for e in errors if CANARY in e]
    notices = (
        await cluster.database["timeline"].find({"kind": {"$in": ["notice", "edit"]}}).to_list()
    )
    assert notices
    assert any("token ***" in str(n["body"]) for n in notices)
