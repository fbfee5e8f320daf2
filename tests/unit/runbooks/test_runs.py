"""Runs as a persisted state machine: claimed once, executed once, timed out, cancelled,
refused over the concurrency limit, orphans marked unknown and never re-run."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from bridge.ids import UlidFactory
from bridge.model import Kind
from bridge.runbooks.execution import ExecutionSettings
from bridge.runbooks.memory_store import MemoryRunStore
from bridge.runbooks.model import RunID, RunState, StepKind
from bridge.runbooks.ports import Actor
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM
from tests.unit.runbooks.run_rig import (
    INCIDENT,
    ControlledExecutor,
    build_run_rig,
    build_service,
    runbook,
)


async def test_a_run_without_approvals_starts_succeeds_and_is_recorded() -> None:
    executor = ControlledExecutor()
    async with build_run_rig(executor=executor) as rig:
        await rig.say("!runbook run restart service=checkout")
        assert "R-1 started" in await rig.last_text()
        await asyncio.wait_for(executor.began.wait(), 5)
        run = await rig.run()
        assert run.state is RunState.RUNNING
        assert run.owner == "test-1"
        assert run.incident_id == INCIDENT
        assert dict(executor.started[0].args) == {"service": "checkout"}
        executor.release.set()
        run = await rig.settled()
        assert run.state is RunState.SUCCEEDED
        assert run.outcome == "exit 0"
        assert run.output == "working\n"
        steps = [s.step for s in await rig.steps() if s.run_id == "R-1"]
        assert steps[0] is StepKind.REQUESTED
        assert StepKind.STARTED in steps
        assert StepKind.OUTPUT in steps
        assert steps[-1] is StepKind.FINISHED
        runbook_events = await rig.events(Kind.RUNBOOK)
        assert {e.incident_id for e in runbook_events} == {INCIDENT}


async def test_the_same_command_twice_makes_one_run() -> None:
    executor = ControlledExecutor()
    executor.release.set()
    async with build_run_rig(executor=executor) as rig:
        event = await rig.say("!runbook run restart service=checkout")
        actor = Actor(sender=ALICE, room=MATRIX_ROOM, event_id=event.id)
        again = await rig.service.request(actor, "restart", {"service": "checkout"})
        assert "already requested" in again
        await rig.settled()
        assert len(executor.started) == 1
        assert await rig.runs.get(RunID("R-2")) is None


async def test_dry_run_shows_the_plan_and_executes_nothing() -> None:
    executor = ControlledExecutor()
    async with build_run_rig(executor=executor) as rig:
        await rig.say("!runbook run restart service=checkout --dry-run")
        text = await rig.last_text()
        assert "dry run" in text
        assert "would run {'service': 'checkout'}" in text
        assert executor.started == []
        run = await rig.run()
        assert run.dry_run
        assert run.state is RunState.SUCCEEDED
        assert "nothing executed" in run.outcome


async def test_the_timeout_ends_the_run_as_timed_out() -> None:
    executor = ControlledExecutor()
    async with build_run_rig(runbook(timeout_s=0.2), executor=executor) as rig:
        started = asyncio.get_running_loop().time()
        await rig.say("!runbook run restart service=checkout")
        run = await rig.settled()
        took = asyncio.get_running_loop().time() - started
        assert run.state is RunState.TIMED_OUT
        assert took < 1.2
        assert executor.cancelled == ["R-1"]


async def test_cancel_stops_the_work_and_records_who() -> None:
    executor = ControlledExecutor()
    async with build_run_rig(executor=executor) as rig:
        await rig.say("!runbook run restart service=checkout")
        await asyncio.wait_for(executor.began.wait(), 5)
        await rig.say("!runbook cancel R-1")
        run = await rig.settled()
        assert run.state is RunState.CANCELLED
        assert run.outcome == "cancelled by Alice"
        assert executor.cancelled == ["R-1"]
        assert StepKind.CANCEL_REQUESTED in [s.step for s in await rig.steps()]


async def test_a_runbook_at_its_concurrency_limit_refuses_another_run() -> None:
    executor = ControlledExecutor()
    async with build_run_rig(executor=executor) as rig:
        await rig.say("!runbook run restart service=checkout")
        await rig.say("!runbook run restart service=search")
        assert "refused" in await rig.last_text()
        second = await rig.run(2)
        assert second.state is RunState.FAILED
        assert "limit" in second.outcome
        assert len(executor.started) == 1
        executor.release.set()
        await rig.settled()


async def test_outside_an_incident_only_runbooks_that_allow_it_run() -> None:
    async with build_run_rig(
        runbook(), runbook("status", outside_incident=True), incident=False
    ) as rig:
        await rig.say("!runbook run restart service=checkout")
        assert "only in an incident" in await rig.last_text()
        assert await rig.runs.get(RunID("R-1")) is None
        await rig.say("!runbook run status service=checkout")
        assert "R-1 started" in await rig.last_text()


async def test_a_run_whose_process_died_is_unknown_announced_and_not_rerun() -> None:
    runs = MemoryRunStore()
    first_executor = ControlledExecutor()
    settings = ExecutionSettings(instance_id="pod-a", stale_after_s=0.3, edit_interval_s=0.05)
    async with build_run_rig(executor=first_executor, runs=runs, settings=settings) as rig:
        await rig.say("!runbook run restart service=checkout")
        await asyncio.wait_for(first_executor.began.wait(), 5)
        await rig.execution.close()  # the process dies: no cleanup, no more heartbeats

        second_executor = ControlledExecutor()
        _, second = build_service(
            store=rig.store,
            runs=runs,
            catalog=rig.catalog,
            executor=second_executor,
            clock=rig.clock,
            ids=UlidFactory(),
            settings=replace(settings, instance_id="pod-b"),
        )
        assert await second.recover() == []  # the heartbeat is still fresh
        await asyncio.sleep(0.35)
        (orphan,) = await second.sweep()
        assert orphan.state is RunState.UNKNOWN
        assert "not re-run" in orphan.outcome
        assert second_executor.started == []
        assert len(first_executor.started) == 1
        notices = [e for e in await rig.events(Kind.NOTICE) if "unknown" in e.body.text]
        assert notices
        assert {m.room for m in notices[0].mirrors} == {MATRIX_ROOM, TEAMS_ROOM}
        assert StepKind.ORPHANED in [s.step for s in await rig.steps()]
        assert await second.sweep() == []


async def test_a_restart_with_the_same_instance_id_recognises_its_runs_at_once() -> None:
    runs = MemoryRunStore()
    settings = ExecutionSettings(instance_id="pod-a", edit_interval_s=0.05)
    executor = ControlledExecutor()
    async with build_run_rig(executor=executor, runs=runs, settings=settings) as rig:
        await rig.say("!runbook run restart service=checkout")
        await asyncio.wait_for(executor.began.wait(), 5)
        await rig.execution.close()
        _, restarted = build_service(
            store=rig.store,
            runs=runs,
            catalog=rig.catalog,
            executor=ControlledExecutor(),
            clock=rig.clock,
            ids=UlidFactory(),
            settings=settings,
        )
        (orphan,) = await restarted.recover()
        assert orphan.id == "R-1"
        assert orphan.state is RunState.UNKNOWN


async def test_requests_not_approved_in_time_expire() -> None:
    async with build_run_rig(runbook(approvals=1, expires=timedelta(seconds=0))) as rig:
        await rig.say("!runbook run restart service=checkout")
        await rig.execution.sweep()
        run = await rig.run()
        assert run.state is RunState.EXPIRED
