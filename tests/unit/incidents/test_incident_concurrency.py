"""Two changes of one incident at once (two replicas, two workers): both are kept."""

from __future__ import annotations

import asyncio

from bridge.incidents.memory_store import MemoryIncidentStore
from bridge.incidents.model import Action, Incident, Severity
from bridge.incidents.service import Source
from tests.support.fakes import EPOCH
from tests.unit.incidents.rig import BOB, CAROL, build_rig


class RacingStore(MemoryIncidentStore):
    """Holds the next ``racers`` saves until all of them are saving: every one of those
    changes was made from the same version, and all but one lose."""

    def __init__(self) -> None:
        super().__init__()
        self.racers = 0
        self.gate: asyncio.Barrier | None = None
        self.conflicts = 0

    def race(self, racers: int) -> None:
        self.racers = racers
        self.gate = asyncio.Barrier(racers)

    async def save(self, incident: Incident) -> Incident | None:
        if self.gate is not None and self.racers > 0:
            self.racers -= 1
            await asyncio.wait_for(self.gate.wait(), timeout=5)
        saved = await super().save(incident)
        if saved is None:
            self.conflicts += 1
        return saved


async def test_a_version_conflict_is_retried_and_both_changes_are_kept() -> None:
    store = RacingStore()
    async with build_rig(incidents=store) as rig:
        await rig.say("!incident declare sev2 Checkout errors")
        before = await rig.incident()
        store.race(2)
        await asyncio.wait_for(
            asyncio.gather(
                rig.service.set_severity(
                    before.id, Source(sender=BOB, at=EPOCH, key="one"), Severity.SEV1
                ),
                rig.service.add_text(
                    before.id, Source(sender=CAROL, at=EPOCH, key="two"), Action.ACTION_ITEM,
                    "write the runbook",
                ),
            ),
            timeout=10,
        )  # fmt: skip
        assert store.conflicts == 1
        after = await rig.incident()
        assert after.severity is Severity.SEV1
        assert [a.text for a in after.action_items] == ["write the runbook"]
        # Each change recorded once, the headers show the last state.
        assert (await rig.actions())[1:] in (
            [Action.SEVERITY, Action.ACTION_ITEM],
            [Action.ACTION_ITEM, Action.SEVERITY],
        )
        assert "SEV1" in rig.matrix.headers_in(rig.matrix_room)[-1].text


async def test_two_commands_handled_at_once_are_both_kept() -> None:
    store = RacingStore()
    async with build_rig(incidents=store) as rig:
        await rig.say("!incident declare sev2 Checkout errors")
        store.race(2)
        # Both stored in one request; the command workers run them concurrently.
        first = rig.say("!incident severity sev1", room=rig.matrix_room)
        second = rig.say("!incident impact customers=40", room=rig.matrix_room)
        await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
        assert store.conflicts == 1
        after = await rig.incident()
        assert after.severity is Severity.SEV1
        assert after.impact == {"customers": "40"}
