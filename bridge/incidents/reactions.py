"""Key events marked by reaction: the configured key (a pin) on any message of an incident room.

Offered every stored batch (duplicates too: the record is keyed on the reaction, so
a redelivery after a crash completes what the first delivery began and never records
twice). A ``StoreError`` propagates, so the platform delivers the reaction again.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from bridge.incidents.model import Action
from bridge.incidents.service import IncidentError, IncidentService, Source
from bridge.model import AppendResult, Kind, RelationKind, TimelineEvent

log = structlog.get_logger(__name__)

EXCERPT_CHARS = 200


class KeyEventReactions:
    def __init__(self, *, service: IncidentService, key: str) -> None:
        self._service = service
        self._key = key

    def wants(self, event: TimelineEvent) -> bool:
        relation = event.relation(RelationKind.REACTION)
        return (
            event.kind is Kind.REACTION
            and event.incident_id is not None
            and relation is not None
            and relation.key == self._key
            and not event.data.get("removed")
        )

    async def offer(self, results: Sequence[AppendResult]) -> None:
        for result in results:
            if self.wants(result.event):
                await self._mark(result.event)

    async def _mark(self, reaction: TimelineEvent) -> None:
        relation = reaction.relation(RelationKind.REACTION)
        if relation is None or reaction.incident_id is None:
            return
        if relation.event_id is None:
            log.info("key_event_target_unknown", event_id=reaction.id)
            return
        source = Source(
            sender=reaction.sender, at=reaction.occurred_at, key=f"reaction:{reaction.id}"
        )
        try:
            incident = await self._service.add_text(
                reaction.incident_id, source, Action.KEY_EVENT, "", marked_event=relation.event_id
            )
        except IncidentError as exc:
            log.info("key_event_not_recorded", event_id=reaction.id, reason=str(exc))
            return
        marked = await self._service.marked(relation.event_id)
        excerpt = ""
        if marked is not None and marked.body.text:
            text = marked.body.text
            short = text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"
            excerpt = f' ("{short}" by {marked.sender.display_name})'
        log.info("key_event_marked", incident_id=incident.id, event_id=relation.event_id)
        await self._service.notify_rooms(
            incident,
            key=f"key_event:{reaction.id}",
            text=f"📌 Key event marked by {reaction.sender.display_name}{excerpt}.",
        )
