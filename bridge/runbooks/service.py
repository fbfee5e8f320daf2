"""Runs requested from chat: claimed once, permission-checked, approved, executed, recorded.

``RunbookService`` keeps each run as a persisted state machine (``RunStore``):

- a request is claimed by its command event (a unique index): a redelivered command or
  a second replica gets the existing run, never a second one;
- who may request and who may approve are the runbook's ``Access`` rules on platform
  ids; anyone unmapped is denied, and every denial or rejected approval is recorded;
- approvals count only from distinct approvers with the role, never the requester,
  said in the run's room or the room linked to it, before the request expires, for the
  same runbook definition and arguments (their digests);
- execution (``RunExecution``) is an owned task per run with a deadline; cancel stops it.

Every step is a ``Kind.RUNBOOK`` timeline event (``RunStep``), with the incident of the
run's room. Secrets are resolved just before execution and never leave it unredacted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Final

import structlog

from bridge.ids import UlidFactory
from bridge.model import (
    Body,
    EventID,
    IncidentID,
    Kind,
    MessageStyle,
    RemoteMessageID,
    RemoteRef,
    RemoteRoomID,
    RoomLink,
    RoomRef,
    Sender,
    TimelineEvent,
)
from bridge.notices import BRIDGE_BOT, BRIDGE_ROOM
from bridge.ports import Clock, TimelineStore
from bridge.runbooks.access import same_person
from bridge.runbooks.executors.base import MASK, Executor, ExecutorError, Invocation
from bridge.runbooks.model import (
    Approval,
    Run,
    Runbook,
    RunID,
    RunState,
    RunStep,
    StepKind,
    Value,
)
from bridge.runbooks.params import args_digest
from bridge.runbooks.ports import AccessRules, Actor, ArgumentSchema, RunbookCatalog, RunStarter
from bridge.runbooks.store import RunStore

log = structlog.get_logger(__name__)

SAVE_ATTEMPTS: Final = 20
DEFAULT_EXPIRY: Final = timedelta(minutes=30)
SUB_ROOM_MARKER: Final = ";"


class RunError(Exception):
    """The request, approval or change cannot be made; the message says why (and is safe
    to show: no secret values)."""


class RunUsageError(RunError):
    """The arguments are wrong (unknown runbook, bad parameter)."""


class RunRecorder:
    """Appends a run's steps to the timeline (recorded, not mirrored)."""

    def __init__(self, *, store: TimelineStore, clock: Clock, ids: UlidFactory) -> None:
        self._store = store
        self._clock = clock
        self._ids = ids

    async def step(
        self,
        step: StepKind,
        *,
        run_id: RunID,
        runbook: str,
        state: RunState,
        key: str,
        sender: Sender = BRIDGE_BOT,
        incident_id: IncidentID | None = None,
        detail: str = "",
    ) -> None:
        now = self._clock.now()
        data = RunStep(step=step, run_id=run_id, runbook=runbook, state=state, detail=detail)
        text = f"{run_id or runbook}: {step.value}" + (f" ({detail})" if detail else "")
        event = TimelineEvent(
            id=EventID(self._ids.new()),
            incident_id=incident_id,
            kind=Kind.RUNBOOK,
            origin=RemoteRef(room=BRIDGE_ROOM, message_id=RemoteMessageID(f"runbook:{key}")),
            origin_variant="",
            sender=sender,
            body=Body(text=text, style=MessageStyle.NOTICE),
            occurred_at=now,
            received_at=now,
            data=data.to_data(),
        )
        await self._store.append(event, [])

    async def of_run(
        self,
        step: StepKind,
        run: Run,
        *,
        key: str,
        detail: str = "",
        sender: Sender = BRIDGE_BOT,
        state: RunState | None = None,
    ) -> None:
        """``step`` for ``run`` (its id, runbook, incident and, unless given, state)."""
        await self.step(
            step,
            run_id=run.id,
            runbook=run.runbook,
            state=run.state if state is None else state,
            key=key,
            sender=sender,
            incident_id=run.incident_id,
            detail=detail,
        )


class RunbookService:
    """Requests, approvals, denials, cancels and status of runs (see the module doc)."""

    def __init__(
        self,
        *,
        runs: RunStore,
        store: TimelineStore,
        catalog: RunbookCatalog,
        schema: ArgumentSchema,
        access: AccessRules,
        executors: Mapping[type, Executor],
        execution: RunStarter,
        clock: Clock,
        ids: UlidFactory,
    ) -> None:
        """``executors`` maps an executor spec type (``ExecSpec`` ...) to its executor."""
        self._runs = runs
        self._store = store
        self._catalog = catalog
        self._schema = schema
        self._access = access
        self._executors = executors
        self._execution = execution
        self._clock = clock
        self._ids = ids
        self.recorder = RunRecorder(store=store, clock=clock, ids=ids)

    @property
    def catalog(self) -> RunbookCatalog:
        return self._catalog

    async def get(self, run_id: str) -> Run | None:
        return await self._runs.get(RunID(run_id.strip().upper()))

    async def rooms_of(self, room: RoomRef) -> list[RoomRef]:
        """``room`` and the rooms linked to it (or to the channel covering it)."""
        links = await self._links(room)
        others = [link.other(room) for link in links]
        return [room, *(o for o in others if o != room)]

    async def _links(self, room: RoomRef) -> list[RoomLink]:
        links = await self._store.links_for(room)
        if not links and SUB_ROOM_MARKER in room.room_id:
            outer = replace(room, room_id=RemoteRoomID(room.room_id.split(SUB_ROOM_MARKER, 1)[0]))
            links = await self._store.links_for(outer)
        return links

    # -- requesting -------------------------------------------------------------------
    async def request(
        self, actor: Actor, name: str, raw: Mapping[str, str], *, dry_run: bool = False
    ) -> str:
        """Request a run of ``name``; the answer for chat. ``RunError`` when refused."""
        existing = await self._runs.by_command(actor.event_id)
        if existing is not None:
            return f"{existing.id} was already requested by this command ({existing.state.value})."
        runbook = self._catalog.get(name)
        if runbook is None:
            raise RunUsageError(f"There is no runbook {name!r}; see !runbook list.")
        incident_id = next((link.incident_id for link in actor.links if link.incident_id), None)
        if not await self._access.allows(runbook.access, actor):
            await self.recorder.step(
                StepKind.REJECTED,
                run_id=RunID(""),
                runbook=runbook.name,
                state=RunState.DENIED,
                key=f"denied:{actor.event_id}",
                sender=actor.sender,
                incident_id=incident_id,
                detail=f"{actor.sender.platform.value} user {actor.sender.user_id} may not run it",
            )
            log.info("runbook_request_denied", runbook=runbook.name)
            raise RunError(f"{actor.sender.display_name} may not run {runbook.name}.")
        if incident_id is None and not runbook.outside_incident:
            raise RunError(
                f"{runbook.name} runs only in an incident's rooms (declare one, or run it there)."
            )
        try:
            args = dict(self._schema(runbook, raw))
        except ValueError as exc:
            raise RunUsageError(str(exc)) from exc
        run = Run(
            id=await self._runs.next_id(),
            runbook=runbook.name,
            runbook_digest=runbook.digest,
            args=args,
            args_digest=args_digest(runbook, args),
            command_event=actor.event_id,
            requested_by=actor.sender,
            room=actor.room,
            incident_id=incident_id,
            state=RunState.AWAITING_APPROVAL if runbook.approvals.count else RunState.REQUESTED,
            created_at=self._clock.now(),
            dry_run=dry_run,
        )
        if dry_run:
            return await self._dry_run(run)
        created = await self._runs.create(run)
        if created is None:
            again = await self._runs.by_command(actor.event_id)
            state = again.state.value if again is not None else "unknown"
            return f"{again.id if again else 'The run'} was already requested ({state})."
        await self._step(created, StepKind.REQUESTED, actor.sender, f"args {_show_args(args)}")
        log.info("runbook_requested", run_id=created.id, runbook=runbook.name)
        if runbook.approvals.count:
            return (
                f"{created.id}: {runbook.name} {_show_args(args)} needs "
                f"{runbook.approvals.count} approval(s): !runbook approve {created.id}"
            )
        return await self._execution.start(created, runbook)

    async def _dry_run(self, run: Run) -> str:
        runbook = self._catalog.get(run.runbook)
        if runbook is None:
            raise RunError(f"There is no runbook {run.runbook!r}.")
        executor = self._executor_for(runbook.executor)
        masked = {ref.name: MASK for ref in runbook.executor.secrets}
        try:
            plan = executor.plan(
                Invocation(run_id=run.id, runbook=runbook, args=run.args, secrets=masked)
            )
        except ExecutorError as exc:
            raise RunError(f"{run.runbook} cannot run: {exc}") from exc
        done = replace(
            run,
            state=RunState.SUCCEEDED,
            finished_at=self._clock.now(),
            outcome="dry run: nothing executed",
            output=plan,
        )
        created = await self._runs.create(done)
        if created is None:
            raise RunError("This command was already handled.")
        await self._step(created, StepKind.REQUESTED, created.requested_by, "dry run")
        await self._step(created, StepKind.FINISHED, BRIDGE_BOT, "dry run: nothing executed")
        return f"{created.id} (dry run, nothing executed): {run.runbook} would run:\n{plan}"

    def _executor_for(self, spec: object) -> Executor:
        executor = self._executors.get(type(spec))
        if executor is None:
            raise RunError(f"no executor for {type(spec).__name__}")
        return executor

    # -- approving and denying --------------------------------------------------------
    async def approve(self, actor: Actor, run_id: str) -> str:
        for _ in range(SAVE_ATTEMPTS):
            run = await self._awaiting(actor, run_id, StepKind.APPROVED)
            runbook = await self._check_approver(actor, run)
            approval = Approval(by=actor.sender, at=self._clock.now(), event_id=actor.event_id)
            approvals = (*run.approvals, approval)
            enough = len(approvals) >= runbook.approvals.count
            saved = await self._runs.save(replace(run, approvals=approvals))
            if saved is None:
                continue
            await self._step(saved, StepKind.APPROVED, actor.sender, f"{len(approvals)}")
            log.info("runbook_approved", run_id=saved.id, approvals=len(approvals))
            if not enough:
                missing = runbook.approvals.count - len(approvals)
                return f"{saved.id} approved by {actor.sender.display_name}; {missing} more needed."
            started = await self._execution.start(saved, runbook)
            return f"{saved.id} approved by {actor.sender.display_name}. {started}"
        raise RunError(f"{run_id} kept changing; try again.")

    async def deny(self, actor: Actor, run_id: str) -> str:
        for _ in range(SAVE_ATTEMPTS):
            run = await self._awaiting(actor, run_id, StepKind.DENIED)
            await self._check_approver(actor, run, denying=True)
            saved = await self._runs.save(
                replace(
                    run,
                    state=RunState.DENIED,
                    finished_at=self._clock.now(),
                    outcome=f"denied by {actor.sender.display_name}",
                )
            )
            if saved is None:
                continue
            await self._step(saved, StepKind.DENIED, actor.sender, "denied")
            return f"{saved.id} denied by {actor.sender.display_name}; it will not run."
        raise RunError(f"{run_id} kept changing; try again.")

    async def _awaiting(self, actor: Actor, run_id: str, step: StepKind) -> Run:
        run = await self.get(run_id)
        if run is None:
            raise RunUsageError(f"There is no run {run_id}.")
        if run.state is not RunState.AWAITING_APPROVAL:
            await self._reject(run, actor, f"{step.value} of a run that is {run.state.value}")
            raise RunError(f"{run.id} is {run.state.value}, not awaiting approval.")
        return run

    async def _check_approver(self, actor: Actor, run: Run, *, denying: bool = False) -> Runbook:
        """The run's runbook, once ``actor`` is shown to be a valid approver of ``run``."""
        what = "deny" if denying else "approve"
        if any(a.event_id == actor.event_id for a in run.approvals):
            await self._reject(run, actor, "replayed approval (same command)")
            raise RunError(f"That approval of {run.id} was already counted.")
        if same_person(actor.sender, run.requested_by) and not denying:
            await self._reject(run, actor, "self-approval")
            raise RunError(f"{actor.sender.display_name} requested {run.id} and cannot approve it.")
        if any(same_person(a.by, actor.sender) for a in run.approvals) and not denying:
            await self._reject(run, actor, "second approval by the same person")
            raise RunError(f"{actor.sender.display_name} already approved {run.id}.")
        if not await self._in_run_rooms(actor, run):
            await self._reject(run, actor, "said in a room not linked to the run's room")
            raise RunError(f"{run.id} can only be {what}d in its own rooms.")
        runbook = self._catalog.get(run.runbook)
        expiry = runbook.approvals.expires_after if runbook is not None else DEFAULT_EXPIRY
        if self._clock.now() >= run.created_at + expiry:
            await self._reject(run, actor, "the request expired")
            await self.expire(run)
            raise RunError(f"{run.id} expired before it was approved; request it again.")
        if (
            runbook is None
            or runbook.digest != run.runbook_digest
            or args_digest(runbook, run.args) != run.args_digest
        ):
            await self._reject(run, actor, "the runbook or its arguments changed since the request")
            raise RunError(f"{run.id}'s runbook changed since it was requested; request it again.")
        if not await self._access.allows(runbook.approvals.approvers, actor):
            await self._reject(run, actor, f"{actor.sender.user_id} may not {what}")
            raise RunError(f"{actor.sender.display_name} may not {what} {run.id}.")
        return runbook

    async def _in_run_rooms(self, actor: Actor, run: Run) -> bool:
        if actor.room == run.room:
            return True
        linked = {r for link in actor.links for r in (link.matrix_room, link.teams_room)}
        if run.room in linked:
            return True
        return actor.room in await self.rooms_of(run.room)

    async def expire(self, run: Run) -> Run | None:
        saved = await self._runs.save(
            replace(
                run,
                state=RunState.EXPIRED,
                finished_at=self._clock.now(),
                outcome="not approved in time",
            )
        )
        if saved is not None:
            await self._step(saved, StepKind.FINISHED, BRIDGE_BOT, "expired")
        return saved

    # -- cancel and status ------------------------------------------------------------
    async def cancel(self, actor: Actor, run_id: str) -> str:
        run = await self.get(run_id)
        if run is None:
            raise RunUsageError(f"There is no run {run_id}.")
        runbook = self._catalog.get(run.runbook)
        may = same_person(actor.sender, run.requested_by) or (
            runbook is not None
            and (
                await self._access.allows(runbook.access, actor)
                or await self._access.allows(runbook.approvals.approvers, actor)
            )
        )
        if not may:
            await self._reject(run, actor, "cancel by someone who may neither run nor approve it")
            raise RunError(f"{actor.sender.display_name} may not cancel {run.id}.")
        if run.state.final:
            return f"{run.id} already ended: {run.state.value}."
        await self._step(run, StepKind.CANCEL_REQUESTED, actor.sender, "")
        return await self._execution.cancel(run, actor.sender)

    async def status(self, run_id: str) -> str:
        run = await self.get(run_id)
        if run is None:
            raise RunUsageError(f"There is no run {run_id}.")
        return describe_run(run)

    # -- recording --------------------------------------------------------------------
    async def _reject(self, run: Run, actor: Actor, reason: str) -> None:
        log.info("runbook_step_rejected", run_id=run.id, reason=reason)
        await self.recorder.of_run(
            StepKind.REJECTED,
            run,
            key=f"{run.id}:rejected:{actor.event_id}",
            detail=reason,
            sender=actor.sender,
        )

    async def _step(self, run: Run, step: StepKind, sender: Sender, detail: str) -> None:
        await self.recorder.of_run(
            step,
            run,
            key=f"{run.id}:{step.value}:{run.version}",
            detail=detail,
            sender=sender,
        )


def _show_args(args: Mapping[str, Value]) -> str:
    return " ".join(f"{k}={v}" for k, v in args.items()) or "(no arguments)"


def describe_run(run: Run) -> str:
    lines = [f"{run.id}: {run.runbook} {_show_args(run.args)} is {run.state.value}"]
    lines.append(f"requested by {run.requested_by.display_name} at {run.created_at:%H:%M:%S} UTC")
    if run.approvals:
        lines.append("approved by " + ", ".join(a.by.display_name for a in run.approvals))
    if run.outcome:
        lines.append(f"outcome: {run.outcome}")
    if run.started_at and run.finished_at:
        seconds = (run.finished_at - run.started_at).total_seconds()
        lines.append(f"took {seconds:.1f} s")
    return "\n".join(lines)
