"""An in-memory ``RunStore`` with the MongoDB store's behaviour (tests, trials)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from bridge.model import EventID
from bridge.runbooks import codec
from bridge.runbooks.model import Run, RunID, RunState


class MemoryRunStore:
    def __init__(self) -> None:
        self._docs: dict[str, dict[str, Any]] = {}
        self._counter = 0

    async def ensure_indexes(self) -> None:
        return None

    async def next_id(self) -> RunID:
        self._counter += 1
        return RunID(f"R-{self._counter}")

    def _load(self, doc: dict[str, Any] | None) -> Run | None:
        return codec.run_from(copy.deepcopy(doc)) if doc is not None else None

    async def create(self, run: Run) -> Run | None:
        if run.id in self._docs or any(
            d["command_event"] == run.command_event for d in self._docs.values()
        ):
            return None
        self._docs[run.id] = codec.run_doc(replace(run, version=0))
        return self._load(self._docs[run.id])

    async def get(self, run_id: RunID) -> Run | None:
        return self._load(self._docs.get(run_id))

    async def by_command(self, command_event: EventID) -> Run | None:
        found = next((d for d in self._docs.values() if d["command_event"] == command_event), None)
        return self._load(found)

    async def save(self, run: Run) -> Run | None:
        stored = self._docs.get(run.id)
        if stored is None or stored["version"] != run.version:
            return None
        return self._write(run, stored)

    def _write(self, run: Run, stored: dict[str, Any]) -> Run | None:
        doc = codec.run_doc(replace(run, version=run.version + 1))
        kept = stored.get("heartbeat_at")
        if kept is not None and (doc["heartbeat_at"] is None or doc["heartbeat_at"] < kept):
            doc["heartbeat_at"] = kept
        self._docs[run.id] = doc
        return self._load(doc)

    async def find(
        self, states: Sequence[RunState], *, runbook: str | None = None, limit: int = 200
    ) -> list[Run]:
        wanted = {s.value for s in states}
        docs = sorted(
            (
                d
                for d in self._docs.values()
                if d["state"] in wanted and (runbook is None or d["runbook"] == runbook)
            ),
            key=lambda d: (d["created_at"], d["n"]),
        )
        return [r for d in docs[:limit] if (r := self._load(d)) is not None]

    async def count(self, runbook: str, states: Sequence[RunState]) -> int:
        wanted = {s.value for s in states}
        return sum(
            1 for d in self._docs.values() if d["runbook"] == runbook and d["state"] in wanted
        )

    async def heartbeat(self, run_ids: Sequence[RunID], owner: str, at: datetime) -> set[RunID]:
        done: set[RunID] = set()
        for run_id in run_ids:
            doc = self._docs.get(run_id)
            if doc is not None and doc["state"] == RunState.RUNNING and doc["owner"] == owner:
                doc["heartbeat_at"] = at
                done.add(run_id)
        return done

    async def orphan(self, run: Run, *, stale_before: datetime, owner: str | None) -> Run | None:
        stored = self._docs.get(run.id)
        if (
            stored is None
            or stored["version"] != run.version
            or stored["state"] != RunState.RUNNING
        ):
            return None
        beat = stored.get("heartbeat_at")
        stale = beat is None or beat < stale_before
        if not stale and (owner is None or stored.get("owner") != owner):
            return None
        doc = codec.run_doc(replace(run, version=run.version + 1))
        self._docs[run.id] = doc
        return self._load(doc)
