"""An in-memory ``IncidentStore`` with the MongoDB store's behaviour (tests, trials)."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from bridge.errors import StoreError
from bridge.incidents import codec
from bridge.incidents.model import Incident, IncidentFilter, IncidentPage
from bridge.model import IncidentID


class MemoryIncidentStore:
    def __init__(self) -> None:
        self._docs: dict[str, dict[str, Any]] = {}
        self._counter = 0

    async def ensure_indexes(self) -> None:
        return None

    async def next_id(self) -> IncidentID:
        self._counter += 1
        return IncidentID(f"INC-{self._counter}")

    async def create(self, incident: Incident) -> None:
        if incident.id in self._docs:
            raise StoreError(f"incident {incident.id} exists")
        self._docs[incident.id] = codec.incident_doc(replace(incident, version=0))

    async def get(self, incident_id: IncidentID) -> Incident | None:
        doc = self._docs.get(incident_id)
        return codec.incident_from(copy.deepcopy(doc)) if doc is not None else None

    async def save(self, incident: Incident) -> Incident | None:
        stored = self._docs.get(incident.id)
        if stored is None or stored["version"] != incident.version:
            return None
        saved = replace(incident, version=incident.version + 1)
        self._docs[incident.id] = codec.incident_doc(saved)
        return await self.get(incident.id)

    async def find(
        self, query: IncidentFilter, *, cursor: str | None = None, limit: int = 50
    ) -> IncidentPage:
        wanted = codec.filter_query(query)
        docs = sorted(
            (d for d in self._docs.values() if _matches(d, wanted)),
            key=lambda d: (d["declared_at"], d["_id"]),
            reverse=True,
        )
        if cursor is not None:
            after = codec.decode_cursor(cursor)
            docs = [d for d in docs if (d["declared_at"], d["_id"]) < after]
        page = docs[: limit + 1]
        incidents = tuple(codec.incident_from(copy.deepcopy(d)) for d in page[:limit])
        next_cursor = (
            codec.encode_cursor(incidents[-1].declared_at, incidents[-1].id)
            if len(page) > limit
            else None
        )
        return IncidentPage(incidents=incidents, next_cursor=next_cursor)


def _matches(doc: dict[str, Any], wanted: dict[str, Any]) -> bool:
    for key, condition in wanted.items():
        value = doc[key]
        if isinstance(condition, dict):
            if "$gte" in condition and not value >= condition["$gte"]:
                return False
            if "$lt" in condition and not value < condition["$lt"]:
                return False
        elif value != condition:
            return False
    return True
