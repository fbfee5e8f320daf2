"""Runbook runs as the daemon builds them, on in-memory stores, fake adapters and a
controllable executor (or a real one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from bridge.clock import SystemClock
from bridge.commands.permissions import Authorizer
from bridge.commands.processor import CommandProcessor
from bridge.commands.queue import CommandQueue
from bridge.commands.registry import CommandRegistry
from bridge.config.core import CommandSettings
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.model import (
    AppendResult,
    Body,
    InboundEvent,
    IncidentID,
    Kind,
    Platform,
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
from bridge.ports import Clock, TimelineStore
from bridge.relay.intake import Intake
from bridge.runbooks.commands import RunbookCommands
from bridge.runbooks.execution import ExecutionSettings, RunExecution
from bridge.runbooks.executors.base import Executor, Invocation, Outcome, OutputSink
from bridge.runbooks.memory_store import MemoryRunStore
from bridge.runbooks.model import (
    Access,
    ApprovalPolicy,
    ExecSpec,
    ParamSpec,
    ParamType,
    Run,
    Runbook,
    RunID,
    RunState,
    RunStep,
    SecretRef,
    StepKind,
)
from bridge.runbooks.params import validate_args
from bridge.runbooks.rules import RoleAccess
from bridge.runbooks.secrets import resolve_secrets
from bridge.runbooks.service import RunbookService, RunRecorder
from bridge.runbooks.store import RunStore
from bridge.timeline.memory import MemoryTimelineStore
from tests.support.adapters import FakeAdapter
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM

BOB = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-bob"), display_name="Bob")
CAROL = Sender(
    platform=Platform.MATRIX, user_id=RemoteUserID("@carol:example.org"), display_name="Carol"
)
MALLORY = Sender(platform=Platform.TEAMS, user_id=RemoteUserID("aad-mallory"), display_name="Bob")
"""Unmapped, with an approver's display name: names never count."""
INCIDENT = IncidentID("INC-7")
OTHER_MATRIX = RoomRef(platform=Platform.MATRIX, room_id=RemoteRoomID("!elsewhere:example.org"))
OTHER_TEAMS = RoomRef(platform=Platform.TEAMS, room_id=RemoteRoomID("19:other@thread.tacv2"))

REQUESTERS = Access(mxids=(ALICE.user_id, CAROL.user_id), aad_object_ids=(BOB.user_id,))
APPROVERS = Access(roles=("sre",))
ROLES = {"sre": Access(aad_object_ids=(BOB.user_id,), mxids=(CAROL.user_id,))}


def runbook(
    name: str = "restart",
    *,
    approvals: int = 0,
    timeout_s: float = 30.0,
    concurrency: int = 1,
    outside_incident: bool = False,
    argv: tuple[str, ...] = ("/bin/echo", "{service}"),
    secrets: tuple[SecretRef, ...] = (),
    env: Mapping[str, str] | None = None,
    digest: str = "d1",
    expires: timedelta = timedelta(minutes=30),
) -> Runbook:
    return Runbook(
        name=name,
        description=f"the {name} runbook",
        params=(
            ParamSpec(name="service", type=ParamType.STRING, required=True, pattern=r"[a-z-]+"),
        ),
        access=REQUESTERS,
        approvals=ApprovalPolicy(count=approvals, approvers=APPROVERS, expires_after=expires),
        timeout=timedelta(seconds=timeout_s),
        concurrency=concurrency,
        outside_incident=outside_incident,
        executor=ExecSpec(argv=argv, secrets=secrets, env=dict(env or {})),
        digest=digest,
    )


class FakeCatalog:
    def __init__(self, *books: Runbook) -> None:
        self.books = {b.name: b for b in books}

    def get(self, name: str) -> Runbook | None:
        return self.books.get(name)

    def runbooks(self) -> Sequence[Runbook]:
        return list(self.books.values())

    def put(self, book: Runbook) -> None:
        self.books[book.name] = book


@dataclass
class ControlledExecutor:
    """Runs until released; records invocations; writes what it is told to."""

    started: list[Invocation] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    began: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: list[str] = field(default_factory=list)
    lines: tuple[str, ...] = ("working\n",)
    outcome: Outcome = field(
        default_factory=lambda: Outcome(state=RunState.SUCCEEDED, summary="exit 0")
    )

    def plan(self, invocation: Invocation) -> str:
        return f"would run {dict(invocation.args)} with {dict(invocation.secrets)}"

    async def run(self, invocation: Invocation, output: OutputSink) -> Outcome:
        self.started.append(invocation)
        for line in self.lines:
            output(line)
        self.began.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(invocation.run_id)
            raise
        return self.outcome


@dataclass
class RunRig:
    clock: Clock
    store: MemoryTimelineStore
    runs: RunStore
    catalog: FakeCatalog
    service: RunbookService
    execution: RunExecution
    intake: Intake
    queue: CommandQueue
    matrix: FakeAdapter
    teams: FakeAdapter
    counter: list[int]

    async def say(
        self, text: str, *, sender: Sender = ALICE, room: RoomRef = MATRIX_ROOM
    ) -> TimelineEvent:
        event = await self.arrive(text, sender=sender, room=room)
        await self.queue.drain()
        return event

    async def arrive(
        self,
        text: str,
        *,
        sender: Sender = ALICE,
        room: RoomRef = MATRIX_ROOM,
        message_id: str | None = None,
    ) -> TimelineEvent:
        self.counter[0] += 1
        (result,) = await self.intake.accept(
            [
                InboundEvent(
                    kind=Kind.MESSAGE,
                    origin=RemoteRef(
                        room=room, message_id=RemoteMessageID(message_id or f"m{self.counter[0]}")
                    ),
                    sender=sender,
                    occurred_at=self.clock.now(),
                    body=Body(text=text),
                )
            ]
        )
        assert result is not None
        return result.event

    async def replies(self) -> list[TimelineEvent]:
        events = (await self.store.timeline(room=BRIDGE_ROOM, limit=5000)).events
        return [e for e in events if "in_reply_to" in e.data]

    async def last_text(self) -> str:
        return (await self.replies())[-1].body.text

    async def steps(self) -> list[RunStep]:
        events = (await self.store.timeline(room=BRIDGE_ROOM, limit=5000)).events
        return [
            RunStep(
                step=StepKind(e.data["step"]),
                run_id=RunID(e.data["run_id"]),
                runbook=e.data["runbook"],
                state=RunState(e.data["state"]),
                detail=e.data["detail"],
            )
            for e in events
            if e.kind is Kind.RUNBOOK
        ]

    async def events(self, kind: Kind) -> list[TimelineEvent]:
        events = (await self.store.timeline(room=BRIDGE_ROOM, limit=5000)).events
        return [e for e in events if e.kind is kind]

    async def run(self, number: int = 1) -> Run:
        found = await self.runs.get(RunID(f"R-{number}"))
        assert found is not None
        return found

    async def settled(self, number: int = 1, *, timeout_s: float = 10.0) -> Run:
        """The run once it has ended (its task finished)."""
        async with asyncio.timeout(timeout_s):
            while True:
                run = await self.run(number)
                if run.state.final and run.id not in self.execution.running:
                    return run
                await asyncio.sleep(0.01)


def build_service(
    *,
    store: TimelineStore,
    runs: RunStore,
    catalog: FakeCatalog,
    executor: Executor,
    clock: Clock,
    ids: UlidFactory,
    settings: ExecutionSettings,
    on_stored: Callable[[Sequence[AppendResult]], None] | None = None,
) -> tuple[RunbookService, RunExecution]:
    """The service and its execution, as the daemon wires them."""
    executors: dict[type, Executor] = {ExecSpec: executor}
    execution = RunExecution(
        runs=runs,
        store=store,
        catalog=catalog,
        executors=executors,
        secrets=resolve_secrets,
        recorder=RunRecorder(store=store, clock=clock, ids=ids),
        clock=clock,
        ids=ids,
        settings=settings,
        on_stored=on_stored,
    )
    service = RunbookService(
        runs=runs,
        store=store,
        catalog=catalog,
        schema=validate_args,
        access=RoleAccess(ROLES, None),
        executors=executors,
        execution=execution,
        clock=clock,
        ids=ids,
    )
    return service, execution


@asynccontextmanager
async def build_run_rig(
    *books: Runbook,
    executor: Executor | None = None,
    clock: Clock | None = None,
    runs: RunStore | None = None,
    incident: bool = True,
    settings: ExecutionSettings | None = None,
) -> AsyncIterator[RunRig]:
    clock = clock or SystemClock()
    store = MemoryTimelineStore(clock=clock)
    run_store = runs or MemoryRunStore()
    ids = UlidFactory()
    metrics = BridgeMetrics()
    matrix = FakeAdapter(Platform.MATRIX, own_user_prefix="@teams_")
    teams = FakeAdapter(Platform.TEAMS, own_user_prefix="bridge-bot")
    adapters = [matrix, teams]
    catalog = FakeCatalog(*(books or (runbook(),)))
    service, execution = build_service(
        store=store,
        runs=run_store,
        catalog=catalog,
        executor=executor or ControlledExecutor(),
        clock=clock,
        ids=ids,
        settings=settings or ExecutionSettings(instance_id="test-1", edit_interval_s=0.05),
    )
    registry = CommandRegistry()
    RunbookCommands(service=service).register(registry)
    processor = CommandProcessor(
        store=store,
        clock=clock,
        ids=ids,
        registry=registry,
        authorizer=Authorizer(CommandSettings(), {a.platform: a for a in adapters}),
        metrics=metrics,
    )
    queue = CommandQueue(processor)

    async def on_stored(results: Sequence[AppendResult]) -> None:
        await queue.offer(results)

    intake = Intake(
        store=store, clock=clock, ids=ids, metrics=metrics, adapters=adapters, on_stored=on_stored
    )
    await store.save_link(
        RoomLink(
            matrix_room=MATRIX_ROOM,
            teams_room=TEAMS_ROOM,
            incident_id=INCIDENT if incident else None,
            created_at=clock.now(),
        )
    )
    await store.save_link(
        RoomLink(matrix_room=OTHER_MATRIX, teams_room=OTHER_TEAMS, created_at=clock.now())
    )
    queue.start()
    try:
        yield RunRig(
            clock=clock,
            store=store,
            runs=run_store,
            catalog=catalog,
            service=service,
            execution=execution,
            intake=intake,
            queue=queue,
            matrix=matrix,
            teams=teams,
            counter=[0],
        )
    finally:
        await queue.stop()
        await execution.close()
