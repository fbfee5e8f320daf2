"""``!runbook list | show | run | approve | deny | cancel | status`` on the command layer.

The command layer lets anyone in a bridged room reach these handlers; who may run,
approve, deny or cancel is the runbook's own ``Access`` (default deny), checked by the
service, which records every refusal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bridge.commands.registry import (
    CommandFailedError,
    CommandRegistry,
    CommandRequest,
    CommandSpec,
    Permission,
    UsageError,
)
from bridge.runbooks.model import ExecSpec, HttpSpec, KubernetesJobSpec, Runbook
from bridge.runbooks.ports import Actor
from bridge.runbooks.service import RunbookService, RunError, RunUsageError

MAX_LISTED = 50


def actor_of(request: CommandRequest) -> Actor:
    return Actor(
        sender=request.sender,
        room=request.room,
        event_id=request.event.id,
        links=tuple(request.links),
        event=request.event,
    )


class RunbookCommands:
    def __init__(self, *, service: RunbookService) -> None:
        self._service = service

    def register(self, registry: CommandRegistry) -> None:
        verbs: list[tuple[str, str, str, Callable[[CommandRequest], Awaitable[str]]]] = [
            ("list", "!runbook list", "the runbooks in the catalog", self.list),
            ("show", "!runbook show NAME", "a runbook's parameters and rules", self.show),
            (
                "run",
                "!runbook run NAME key=value ... [--dry-run]",
                "request a run (--dry-run: show what would run, run nothing)",
                self.run,
            ),
            ("approve", "!runbook approve RUN", "approve a requested run", self.approve),
            ("deny", "!runbook deny RUN", "deny a requested run", self.deny),
            ("cancel", "!runbook cancel RUN", "cancel a run", self.cancel),
            ("status", "!runbook status RUN", "a run's state and outcome", self.status),
        ]
        for verb, usage, summary, handler in verbs:
            registry.add(
                CommandSpec(
                    group="runbook",
                    verb=verb,
                    usage=usage,
                    summary=summary,
                    permission=Permission.ANYONE,
                    handler=_answering(handler),
                )
            )

    async def list(self, request: CommandRequest) -> str:
        _no_extra(request, 1)
        runbooks = sorted(self._service.catalog.runbooks(), key=lambda r: r.name)
        if not runbooks:
            return "There are no runbooks."
        lines = [f"{r.name} - {r.description}" for r in runbooks[:MAX_LISTED]]
        if len(runbooks) > MAX_LISTED:
            lines.append(f"... and {len(runbooks) - MAX_LISTED} more")
        return "\n".join(lines)

    async def show(self, request: CommandRequest) -> str:
        name = _one(request, "NAME")
        runbook = self._service.catalog.get(name)
        if runbook is None:
            raise RunUsageError(f"There is no runbook {name!r}; see !runbook list.")
        return describe_runbook(runbook)

    async def run(self, request: CommandRequest) -> str:
        command = request.command
        if len(command.args) != 2:
            raise UsageError("name one runbook")
        unknown = command.flags - {"dry-run"}
        if unknown:
            raise UsageError(f"unknown option --{sorted(unknown)[0]}")
        return await self._service.request(
            actor_of(request),
            command.args[1],
            dict(command.options),
            dry_run="dry-run" in command.flags,
        )

    async def approve(self, request: CommandRequest) -> str:
        return await self._service.approve(actor_of(request), _one(request, "RUN"))

    async def deny(self, request: CommandRequest) -> str:
        return await self._service.deny(actor_of(request), _one(request, "RUN"))

    async def cancel(self, request: CommandRequest) -> str:
        return await self._service.cancel(actor_of(request), _one(request, "RUN"))

    async def status(self, request: CommandRequest) -> str:
        return await self._service.status(_one(request, "RUN"))


def _answering(
    handler: Callable[[CommandRequest], Awaitable[str]],
) -> Callable[[CommandRequest], Awaitable[str]]:
    """The service's refusals as the command layer's usage errors and failures."""

    async def answer(request: CommandRequest) -> str:
        try:
            return await handler(request)
        except RunUsageError as exc:
            raise UsageError(str(exc)) from exc
        except RunError as exc:
            raise CommandFailedError(str(exc)) from exc

    return answer


def _no_extra(request: CommandRequest, words: int) -> None:
    if len(request.command.args) > words or request.command.options:
        raise UsageError("this takes no arguments")


def _one(request: CommandRequest, what: str) -> str:
    command = request.command
    if len(command.args) != 2 or command.options or command.flags:
        raise UsageError(f"name one {what}")
    return command.args[1]


def describe_runbook(runbook: Runbook) -> str:
    lines = [f"{runbook.name} - {runbook.description}"]
    for spec in runbook.params:
        rule = spec.type.value
        if spec.choices:
            rule += " (" + " | ".join(spec.choices) + ")"
        if spec.pattern:
            rule += f" matching {spec.pattern}"
        if spec.minimum is not None or spec.maximum is not None:
            rule += f" in {spec.minimum if spec.minimum is not None else ''}.."
            rule += f"{spec.maximum if spec.maximum is not None else ''}"
        need = "required" if spec.required else f"default {spec.default!r}"
        lines.append(
            f"  {spec.name}: {rule}, {need}"
            + (f" - {spec.description}" if spec.description else "")
        )
    approvals = runbook.approvals
    lines.append(
        f"approvals: {approvals.count}"
        + (f" within {approvals.expires_after}" if approvals.count else "")
    )
    lines.append(f"timeout: {runbook.timeout}; at most {runbook.concurrency} at once")
    lines.append(
        "runs outside incidents" if runbook.outside_incident else "runs in incident rooms only"
    )
    lines.append(f"executor: {_executor_name(runbook)}")
    return "\n".join(lines)


def _executor_name(runbook: Runbook) -> str:
    spec = runbook.executor
    if isinstance(spec, HttpSpec):
        return f"http {spec.method}"
    if isinstance(spec, ExecSpec):
        return "exec " + (spec.argv[0] if spec.argv else "")
    if isinstance(spec, KubernetesJobSpec):
        return f"kubernetes-job in {spec.namespace}"
    return "unknown"
