"""What a fake pod's container does: a tiny built-in interpreter of its command and args.

The container's ``command + args`` is a sequence of steps, each a word and one argument:

- ``echo TEXT``: writes TEXT (each of its lines is a log line);
- ``env NAME``: writes the value of the container's environment variable NAME;
- ``log-lines N``: writes ``line 1`` .. ``line N``;
- ``sleep SECONDS``: waits;
- ``fail CODE``: exits with CODE at once;
- ``exit CODE``: the same, for a zero code too.

Reaching the end exits 0. An unknown word writes an error line and exits 127. Nothing is
ever given to a shell: the text is data. A test may instead give a ``Program`` of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

Write = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Container:
    """What a program sees of its container."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]


Program = Callable[[Container, Write], Awaitable[int]]
"""Runs the container: writes log lines, returns the exit code. Cancelled when the pod
is deleted or its Job's deadline passes."""


async def builtin_program(container: Container, write: Write) -> int:
    """The interpreter described in the module docstring."""
    steps = list(container.argv)
    while steps:
        word = steps.pop(0)
        argument = steps.pop(0) if steps else ""
        match word:
            case "echo":
                _write_text(write, argument)
            case "env":
                _write_text(write, container.env.get(argument, ""))
            case "log-lines":
                for number in range(1, _int(argument) + 1):
                    write(f"line {number}")
            case "sleep":
                await asyncio.sleep(max(0.0, _float(argument)))
            case "fail" | "exit":
                return _int(argument)
            case _:
                write(f"fake-kube: unknown step {word!r}")
                return 127
    return 0


def _write_text(write: Write, text: str) -> None:
    for line in text.split("\n"):
        write(line)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def container_argv(
    command: Sequence[object] | None, args: Sequence[object] | None
) -> tuple[str, ...]:
    return tuple(str(part) for part in (*(command or ()), *(args or ())))
