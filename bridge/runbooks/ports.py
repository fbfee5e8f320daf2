"""What the run service needs from the catalog, the parameter schema, access rules and
secrets (``catalog.py``, ``params.py``, ``access.py``, ``secrets.py`` provide them)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.model import EventID, RoomLink, RoomRef, Sender, TimelineEvent
from bridge.runbooks.model import Access, Run, Runbook, SecretRef, Value


class RunbookCatalog(Protocol):
    def get(self, name: str) -> Runbook | None: ...

    def runbooks(self) -> Sequence[Runbook]: ...


ArgumentSchema = Callable[[Runbook, Mapping[str, str]], Mapping[str, Value]]
"""Validated arguments with defaults; ``ValueError`` (a safe message) otherwise."""

SecretResolver = Callable[[Sequence[SecretRef]], Mapping[str, str]]
"""Secret name -> value; ``SecretError`` (naming no value) when one cannot be read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Actor:
    """Who asks for something, where, with which command message."""

    sender: Sender
    room: RoomRef
    event_id: EventID
    """The command's message: approvals and requests are keyed on it."""
    links: Sequence[RoomLink] = ()
    """Links of the room said in (or of the channel covering it)."""
    event: TimelineEvent | None = None


class AccessRules(Protocol):
    async def allows(self, access: Access, actor: Actor) -> bool:
        """Whether ``actor`` matches ``access`` (platform ids only; unmapped: False)."""


class RunStarter(Protocol):
    """Runs the work (``RunExecution``)."""

    async def start(self, run: Run, runbook: Runbook) -> str:
        """Start an approved (or approval-free) run; the answer for chat."""

    async def cancel(self, run: Run, by: Sender) -> str:
        """Stop a run (running or still waiting); the answer for chat."""
