"""A run's one message: edited as output grows, at most once per interval, ending with
the outcome and duration; edits of the bridge's notice reach both rooms; secrets never
show."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from itertools import pairwise

import pytest

from bridge.model import Kind, Mirror, MirrorStatus, Platform, RelationKind, RemoteRef
from bridge.ports import OutboundMessage
from bridge.relay.dispatch import Dispatcher
from bridge.runbooks.execution import ExecutionSettings
from bridge.runbooks.executors.base import Invocation, Outcome, OutputSink
from bridge.runbooks.model import RunState, SecretRef
from bridge.runbooks.output import CapturedOutput
from tests.support.adapters import FakeAdapter
from tests.support.fakes import MATRIX_ROOM, TEAMS_ROOM
from tests.unit.runbooks.run_rig import build_run_rig, runbook

CANARY = "canary-7f3a9c1e-secret"


@dataclass
class Chatty:
    """Writes a line every few milliseconds for a while, the secret among them."""

    lines: int = 60
    gap_s: float = 0.01

    def plan(self, invocation: Invocation) -> str:
        return "chatty"

    async def run(self, invocation: Invocation, output: OutputSink) -> Outcome:
        token = invocation.secrets.get("token", "")
        for number in range(self.lines):
            if number == 10:
                output(f"token {token[:7]}")  # split across two pieces
                output(f"{token[7:]} used\n")
            output(f"line {number}\n")
            await asyncio.sleep(self.gap_s)
        return Outcome(state=RunState.FAILED, summary=f"exit 3 ({token})")


@dataclass
class EditingAdapter(FakeAdapter):
    edits: list[tuple[RemoteRef, OutboundMessage]] = field(default_factory=list)

    async def edit(
        self, target: RemoteRef, message: OutboundMessage, *, idempotency_key: str
    ) -> None:
        self.edits.append((target, message))


async def test_output_edits_are_rate_limited_and_end_with_the_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUN_RIG_TOKEN", CANARY)
    book = runbook(secrets=(SecretRef(name="token", env="RUN_RIG_TOKEN"),))
    settings = ExecutionSettings(instance_id="test-1", edit_interval_s=0.2)
    async with build_run_rig(book, executor=Chatty(), settings=settings) as rig:
        await rig.say("!runbook run restart service=checkout")
        run = await rig.settled(timeout_s=10)
        edits = await rig.events(Kind.EDIT)
        notices = [e for e in await rig.events(Kind.NOTICE) if e.data.get("run_id")]
    (notice,) = notices
    assert {m.room for m in notice.mirrors} == {MATRIX_ROOM, TEAMS_ROOM}
    assert len(edits) >= 2
    for edit in edits:
        relation = edit.relation(RelationKind.EDIT)
        assert relation is not None
        assert relation.event_id == notice.id
        assert {m.room for m in edit.mirrors} == {MATRIX_ROOM, TEAMS_ROOM}
    gaps = [(b.received_at - a.received_at).total_seconds() for a, b in pairwise(edits)]
    assert min(gaps) >= 0.19
    # 60 lines over ~0.6 s: far fewer edits than lines.
    assert len(edits) <= 8
    final = edits[-1].body.text
    assert final.startswith("❌ R-1 restart: failed in ")
    assert "line 59" in final
    assert run.state is RunState.FAILED
    assert "line 59" in run.output
    # S7 at the service level: the canary is nowhere.
    everything = [notice.body.text, run.output, run.outcome] + [e.body.text for e in edits]
    everything += [str(e.data) for e in await rig.events(Kind.RUNBOOK)]
    everything += [r.body.text for r in await rig.replies()]
    assert not [t for t in everything if CANARY in t or (CANARY[:7] + "" in t and CANARY[7:] in t)]
    assert "token ***" in run.output


def test_captured_output_keeps_the_newest_part_up_to_the_cap() -> None:
    captured = CapturedOutput(max_chars=100)
    captured.use_secrets(["s3cr3t-value"])
    for number in range(50):
        captured.write(f"line {number:02d} s3cr3t-")
        captured.write("value\n")
    captured.close()
    text = captured.text()
    assert len(text) <= 100
    assert captured.truncated
    assert text.endswith("line 49 ***\n")
    assert "s3cr3t" not in text


async def test_the_dispatcher_mirrors_edits_of_bridge_notices_to_both_rooms() -> None:
    async with build_run_rig(runbook(), executor=Chatty(lines=3, gap_s=0)) as rig:
        await rig.say("!runbook run restart service=checkout")
        await rig.settled()
        notice = next(e for e in await rig.events(Kind.NOTICE) if e.data.get("run_id"))
        edit = (await rig.events(Kind.EDIT))[-1]
        matrix = EditingAdapter(Platform.MATRIX)
        teams = EditingAdapter(Platform.TEAMS)
        dispatcher = Dispatcher(rig.store)
        for adapter, room in ((matrix, MATRIX_ROOM), (teams, TEAMS_ROOM)):
            sent = await dispatcher.dispatch(adapter, notice, room, f"k-{room.key}")
            assert sent is not None
            await rig.store.set_mirror(
                notice.id, Mirror(room=room, status=MirrorStatus.SENT, message_id=sent)
            )
            await dispatcher.dispatch(adapter, edit, room, f"e-{room.key}")
            ((target, message),) = adapter.edits
            assert target.room == room
            assert target.message_id == sent
            assert "failed" in message.event.body.text
