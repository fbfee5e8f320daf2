"""``!runbook`` through the real command processor: answers, usage errors (never a
traceback), and S4: unmapped identities denied by default, every denial recorded."""

from __future__ import annotations

from bridge.model import Kind
from bridge.runbooks.model import RunState, StepKind
from tests.support.fakes import ALICE, MATRIX_ROOM, TEAMS_ROOM
from tests.unit.runbooks.run_rig import MALLORY, ControlledExecutor, build_run_rig, runbook


async def test_list_and_show_describe_the_catalog() -> None:
    async with build_run_rig(runbook(), runbook("flush", outside_incident=True)) as rig:
        await rig.say("!runbook list")
        text = await rig.last_text()
        assert "flush - the flush runbook" in text
        assert "restart - the restart runbook" in text
        await rig.say("!runbook show restart")
        text = await rig.last_text()
        assert "service: string" in text
        assert "required" in text
        assert "executor: exec /bin/echo" in text


async def test_replies_go_to_both_rooms_of_the_link() -> None:
    async with build_run_rig() as rig:
        await rig.say("!runbook list")
        (reply,) = await rig.replies()
        assert {m.room for m in reply.mirrors} == {MATRIX_ROOM, TEAMS_ROOM}


async def test_usage_errors_say_how_never_a_traceback() -> None:
    async with build_run_rig() as rig:
        for text, expected in [
            ("!runbook run", "name one runbook"),
            ("!runbook run nope", "no runbook 'nope'"),
            ("!runbook run restart", "service"),
            ("!runbook run restart service=Bad;rm", "service"),
            ("!runbook run restart service=a --force", "unknown option --force"),
            ("!runbook show", "name one NAME"),
            ("!runbook approve", "name one RUN"),
            ("!runbook status R-99", "no run R-99"),
            ('!runbook run "restart', "quote is not closed"),
        ]:
            await rig.say(text)
            reply = (await rig.replies())[-1]
            assert expected in reply.body.text, (text, reply.body.text)
            assert reply.data["outcome"] == "usage", text
            assert "Traceback" not in reply.body.text


async def test_an_unmapped_identity_is_denied_and_the_denial_recorded() -> None:
    executor = ControlledExecutor()
    async with build_run_rig(executor=executor) as rig:
        await rig.say("!runbook run restart service=checkout", sender=MALLORY, room=TEAMS_ROOM)
        reply = (await rig.replies())[-1]
        assert "may not run restart" in reply.body.text
        assert reply.data["outcome"] == "failed"
        assert executor.started == []
        (denial,) = [s for s in await rig.steps() if s.step is StepKind.REJECTED]
        assert denial.state is RunState.DENIED
        assert MALLORY.user_id in denial.detail
        (event,) = await rig.events(Kind.RUNBOOK)
        assert event.sender == MALLORY


async def test_status_and_cancel_of_a_waiting_run() -> None:
    async with build_run_rig(runbook(approvals=1)) as rig:
        await rig.say("!runbook run restart service=checkout")
        await rig.say("!runbook status r-1")
        assert "R-1: restart service=checkout is awaiting_approval" in await rig.last_text()
        await rig.say("!runbook cancel R-1", sender=MALLORY, room=TEAMS_ROOM)
        assert "may not cancel" in await rig.last_text()
        await rig.say("!runbook cancel R-1", sender=ALICE)
        assert "R-1 cancelled" in await rig.last_text()
        assert (await rig.run()).state is RunState.CANCELLED
