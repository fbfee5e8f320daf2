"""S5: approvals that must not count are rejected with a reason and recorded; a valid
approval by a second person with the role, in time, starts the run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import pytest

from bridge.runbooks.model import RunState, StepKind
from bridge.runbooks.ports import Actor
from bridge.runbooks.service import RunError
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM, FakeClock
from tests.unit.runbooks.run_rig import (
    BOB,
    CAROL,
    MALLORY,
    OTHER_MATRIX,
    OTHER_TEAMS,
    ControlledExecutor,
    RunRig,
    build_run_rig,
    runbook,
)


@pytest.fixture
async def rig() -> AsyncIterator[RunRig]:
    executor = ControlledExecutor()
    executor.release.set()
    async with build_run_rig(
        runbook(approvals=1, expires=timedelta(minutes=10)), executor=executor, clock=FakeClock()
    ) as built:
        await built.say("!runbook run restart service=checkout")
        assert "needs 1 approval" in await built.last_text()
        yield built


async def rejected(rig: RunRig, reason: str) -> None:
    run = await rig.run()
    assert run.state is RunState.AWAITING_APPROVAL
    assert run.approvals == ()
    steps = [s for s in await rig.steps() if s.step is StepKind.REJECTED]
    assert steps
    assert reason in steps[-1].detail


async def test_self_approval_is_rejected(rig: RunRig) -> None:
    await rig.say("!runbook approve R-1", sender=ALICE)
    assert "cannot approve" in await rig.last_text()
    await rejected(rig, "self-approval")


async def test_an_approver_without_the_role_is_rejected(rig: RunRig) -> None:
    await rig.say("!runbook approve R-1", sender=MALLORY, room=TEAMS_ROOM)
    assert "may not approve" in await rig.last_text()
    await rejected(rig, "may not approve")


@pytest.mark.parametrize("room", [OTHER_MATRIX, OTHER_TEAMS])
async def test_an_approval_from_an_unlinked_room_is_rejected(rig: RunRig, room: object) -> None:
    await rig.say("!runbook approve R-1", sender=BOB, room=room)  # type: ignore[arg-type]
    assert "only be approved in its own rooms" in await rig.last_text()
    await rejected(rig, "not linked")


async def test_an_approval_after_expiry_is_rejected_and_the_run_expires(rig: RunRig) -> None:
    assert isinstance(rig.clock, FakeClock)
    rig.clock.advance(601)
    await rig.say("!runbook approve R-1", sender=BOB, room=TEAMS_ROOM)
    assert "expired" in await rig.last_text()
    assert (await rig.run()).state is RunState.EXPIRED
    steps = [s for s in await rig.steps() if s.step is StepKind.REJECTED]
    assert "expired" in steps[-1].detail


async def test_a_replayed_approval_is_rejected(rig: RunRig) -> None:
    current = rig.catalog.books["restart"]
    rig.catalog.put(replace(current, approvals=replace(current.approvals, count=2)))
    event = await rig.say("!runbook approve R-1", sender=BOB, room=TEAMS_ROOM)
    assert "1 more needed" in await rig.last_text()
    actor = Actor(sender=BOB, room=TEAMS_ROOM, event_id=event.id)
    with pytest.raises(RunError, match="already counted"):
        await rig.service.approve(actor, "R-1")
    await rig.say("!runbook approve R-1", sender=BOB, room=TEAMS_ROOM)
    assert "already approved" in await rig.last_text()
    run = await rig.run()
    assert len(run.approvals) == 1
    details = [s.detail for s in await rig.steps() if s.step is StepKind.REJECTED]
    assert any("replayed" in d for d in details)
    assert any("same person" in d for d in details)


async def test_an_approval_after_the_arguments_or_definition_changed_is_rejected(
    rig: RunRig,
) -> None:
    rig.catalog.put(runbook(approvals=1, digest="d2"))  # the definition changed
    await rig.say("!runbook approve R-1", sender=BOB, room=TEAMS_ROOM)
    assert "changed" in await rig.last_text()
    await rejected(rig, "changed")


async def test_an_approval_for_tampered_arguments_is_rejected(rig: RunRig) -> None:
    run = await rig.run()
    tampered = await rig.runs.save(replace(run, args={"service": "payments"}))
    assert tampered is not None
    await rig.say("!runbook approve R-1", sender=BOB, room=TEAMS_ROOM)
    assert "changed" in await rig.last_text()
    await rejected(rig, "changed")


async def test_a_valid_second_person_in_time_starts_the_run(rig: RunRig) -> None:
    assert isinstance(rig.clock, FakeClock)
    rig.clock.advance(300)
    await rig.say("!runbook approve R-1", sender=BOB, room=TEAMS_ROOM)
    text = await rig.last_text()
    assert "approved by Bob" in text
    assert "started" in text
    run = await rig.settled()
    assert run.state is RunState.SUCCEEDED
    assert [a.by for a in run.approvals] == [BOB]
    assert StepKind.APPROVED in [s.step for s in await rig.steps()]


async def test_an_approval_in_the_runs_own_room_counts(rig: RunRig) -> None:
    await rig.say("!runbook approve R-1", sender=CAROL, room=MATRIX_ROOM)
    assert "approved by Carol" in await rig.last_text()
    await asyncio.wait_for(rig.settled(), 5)


async def test_deny_ends_the_request(rig: RunRig) -> None:
    await rig.say("!runbook deny R-1", sender=BOB, room=TEAMS_ROOM)
    assert "denied by Bob" in await rig.last_text()
    assert (await rig.run()).state is RunState.DENIED
    await rig.say("!runbook approve R-1", sender=CAROL)
    assert "not awaiting approval" in await rig.last_text()


async def test_a_denial_by_someone_without_the_role_is_rejected(rig: RunRig) -> None:
    await rig.say("!runbook deny R-1", sender=MALLORY, room=TEAMS_ROOM)
    assert "may not deny" in await rig.last_text()
    assert (await rig.run()).state is RunState.AWAITING_APPROVAL
