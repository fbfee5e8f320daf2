"""What commands exist: their usage, help, who may run them, and their handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from bridge.commands.parse import ParsedCommand
from bridge.model import RoomLink, RoomRef, Sender, TimelineEvent


class Permission(StrEnum):
    ANYONE = "anyone"
    """Any person in a bridged room (read-only or harmless commands)."""
    OPERATOR = "operator"
    """Allow-listed operators, or Matrix users at or above the configured power level."""
    COMMANDER = "operator or incident commander"
    """Operators, or the commander of the incident the command is about."""


class UsageError(Exception):
    """The command is known but its arguments are wrong; the message says how."""


class CommandFailedError(Exception):
    """The command ran and could not do what was asked; the message is for the user."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandRequest:
    command: ParsedCommand
    event: TimelineEvent
    """The message that carried the command (already stored)."""
    room: RoomRef
    sender: Sender
    links: Sequence[RoomLink]
    """Links of the room the command was said in."""


Handler = Callable[[CommandRequest], Awaitable[str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandSpec:
    group: str
    verb: str | None
    usage: str
    summary: str
    permission: Permission
    handler: Handler

    @property
    def name(self) -> str:
        return f"{self.group} {self.verb}" if self.verb else self.group


class CommandRegistry:
    def __init__(self) -> None:
        self._specs: dict[tuple[str, str | None], CommandSpec] = {}

    def add(self, spec: CommandSpec) -> None:
        key = (spec.group, spec.verb)
        if key in self._specs:
            raise ValueError(f"command {spec.name} registered twice")
        self._specs[key] = spec

    def groups(self) -> list[str]:
        return sorted({group for group, _ in self._specs})

    def knows(self, group: str) -> bool:
        return any(g == group for g, _ in self._specs)

    def find(self, command: ParsedCommand) -> CommandSpec | None:
        verb = command.verb.lower() if command.verb else None
        return self._specs.get((command.group, verb)) or self._specs.get((command.group, None))

    def help(self, group: str | None = None) -> str:
        specs = sorted(
            (s for s in self._specs.values() if group is None or s.group == group),
            key=lambda s: s.name,
        )
        if not specs:
            return f"unknown command group {group!r}; try !help"
        return "\n".join(f"{s.usage} - {s.summary}" for s in specs)
