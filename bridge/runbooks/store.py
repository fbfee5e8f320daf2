"""The run store: where runs live (collection ``runbook_runs``), one contract for every
backend (the in-memory fake and MongoDB; ``tests/integration/test_run_store_contract.py``).

A run is created once per command event (a unique index): a redelivered command or a
second replica gets ``None`` and never creates a second run. Saves are conditional on
``version``. The heartbeat of a running run is written apart from saves (it never bumps
``version``, and a save never moves it backwards), so an owner refreshing it never
conflicts with a change being made.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from bridge.model import EventID
from bridge.runbooks.model import Run, RunID, RunState


class RunStore(Protocol):
    async def ensure_indexes(self) -> None: ...

    async def next_id(self) -> RunID:
        """A new, never reused ``R-<number>``."""

    async def create(self, run: Run) -> Run | None:
        """Store a new run (version 0); None when a run of ``run.command_event`` exists."""

    async def get(self, run_id: RunID) -> Run | None: ...

    async def by_command(self, command_event: EventID) -> Run | None: ...

    async def save(self, run: Run) -> Run | None:
        """Store ``run`` if the stored one still has ``run.version``; the stored result
        (version + 1), or None when another change came first."""

    async def find(
        self, states: Sequence[RunState], *, runbook: str | None = None, limit: int = 200
    ) -> list[Run]:
        """Runs in one of ``states`` (of one runbook), oldest first."""

    async def count(self, runbook: str, states: Sequence[RunState]) -> int: ...

    async def heartbeat(self, run_ids: Sequence[RunID], owner: str, at: datetime) -> set[RunID]:
        """Refresh the heartbeat of those of ``run_ids`` still running under ``owner``;
        the ids refreshed (a missing one was finished or orphaned by someone else)."""

    async def orphan(self, run: Run, *, stale_before: datetime, owner: str | None) -> Run | None:
        """Save ``run`` (its ``unknown`` state) only if the stored run still has its
        version, is running, and its heartbeat is older than ``stale_before`` (or it is
        owned by ``owner``: this process's own runs from before a restart)."""
