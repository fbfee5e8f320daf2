"""The executor seam: what the run service needs from an ``http``, ``exec`` or
``kubernetes-job`` executor.

An executor gets an ``Invocation``: the runbook, its validated arguments and the
resolved secret values. ``plan`` says exactly what would be executed (the dry run;
secrets masked). ``run`` does it, handing output to ``output`` as it comes, and
returns the ``Outcome``. The service enforces the timeout and cancel by cancelling
the task running ``run``: on ``asyncio.CancelledError`` an executor stops the work
for good (kills the process group, aborts the request, deletes the Job) within 5 s,
then re-raises. Nothing here ever goes through a shell.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from bridge.runbooks.model import ExecutorSpec, Runbook, RunID, RunState, Value

OutputSink = Callable[[str], None]
"""Receives output text as it comes (the service redacts, caps and posts it)."""

MASK = "***"
"""What a secret's value is shown as in a plan."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Invocation:
    run_id: RunID
    runbook: Runbook
    args: Mapping[str, Value]
    """Validated against the runbook's parameters, defaults filled in."""
    secrets: Mapping[str, str] = field(default_factory=dict)
    """Secret name -> value, resolved for this run only; never logged or stored."""

    @property
    def spec(self) -> ExecutorSpec:
        return self.runbook.executor


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    state: RunState
    """SUCCEEDED or FAILED (timeouts and cancels are the service's to record)."""
    summary: str
    """One line: the exit code, the HTTP status, the Job's condition, or the error."""


class Executor(Protocol):
    def plan(self, invocation: Invocation) -> str:
        """Exactly what ``run`` would execute (resolved argv, request, or Job manifest),
        with secret values masked as ``MASK``."""

    async def run(self, invocation: Invocation, output: OutputSink) -> Outcome:
        """Execute once; see the module docstring for cancellation."""


class ExecutorError(Exception):
    """The executor could not even start (bad template, missing secret, refused config);
    the message is safe to show (no secret values)."""
