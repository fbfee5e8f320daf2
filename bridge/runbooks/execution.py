"""Executing runs: one owned task per run, a deadline, cancel, heartbeats, orphans.

A run moves to ``running`` by a conditional save naming this process (its instance id)
as owner, and only then is its work started. While it runs, the process refreshes its
heartbeat every ``heartbeat_s``. A run whose heartbeat is older than ``stale_after_s``
(its process died), or one this instance owned before a restart, is marked ``unknown``
and announced in its rooms by the sweeper (at start-up and every ``sweep_s``), and never
run again. Shutting down cancels the tasks without recording anything: the heartbeat
stops, so the next start recognises the runs.

The concurrency limit of a runbook holds across replicas: after moving to running, a
run that is not among the first ``concurrency`` running runs of its runbook (oldest
first) is refused.
"""

from __future__ import annotations

import asyncio
import secrets as random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Final

import structlog

from bridge.ids import UlidFactory
from bridge.model import AppendResult, EventID, RemoteRoomID, RoomRef, Sender
from bridge.notices import bridge_notice
from bridge.ports import Clock, TimelineStore
from bridge.runbooks.executors.base import Executor, ExecutorError, Invocation
from bridge.runbooks.model import Run, Runbook, RunID, RunState, StepKind
from bridge.runbooks.output import (
    DEFAULT_MAX_OUTPUT,
    CapturedOutput,
    MessageTarget,
    RunMessage,
    edit_event,
    tail,
)
from bridge.runbooks.ports import RunbookCatalog, SecretResolver
from bridge.runbooks.secrets import SecretError
from bridge.runbooks.service import RunRecorder, describe_run
from bridge.runbooks.store import RunStore
from bridge.tasks import TaskOwner

log = structlog.get_logger(__name__)

SAVE_ATTEMPTS: Final = 20
OUTPUT_STEP_CHARS: Final = 4000
"""The most output one ``output`` timeline step holds (the run keeps it all, capped)."""

Announce = Callable[[Sequence[AppendResult]], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutionSettings:
    instance_id: str
    heartbeat_s: float = 2.0
    stale_after_s: float = 30.0
    sweep_s: float = 10.0
    edit_interval_s: float = 2.0
    max_output_chars: int = DEFAULT_MAX_OUTPUT


ICONS: Final = {
    RunState.SUCCEEDED: "✅",
    RunState.FAILED: "❌",
    RunState.TIMED_OUT: "⏱",
    RunState.CANCELLED: "⏹",
    RunState.UNKNOWN: "⚠",
}


class RunExecution:
    """Starts, watches and stops runs on this process (see the module doc)."""

    def __init__(
        self,
        *,
        runs: RunStore,
        store: TimelineStore,
        catalog: RunbookCatalog,
        executors: Mapping[type, Executor],
        secrets: SecretResolver,
        recorder: RunRecorder,
        clock: Clock,
        ids: UlidFactory,
        settings: ExecutionSettings,
        on_stored: Announce | None = None,
        run_link: Callable[[Run], str | None] | None = None,
    ) -> None:
        """``run_link``: where a run's whole output can be read (the run's API route)."""
        self._run_link = run_link
        self._runs = runs
        self._store = store
        self._catalog = catalog
        self._executors = executors
        self._secrets = secrets
        self._recorder = recorder
        self._clock = clock
        self._ids = ids
        self._settings = settings
        self._on_stored = on_stored
        self._tasks = TaskOwner("runbooks")
        self._running: dict[RunID, asyncio.Task[None]] = {}
        self._cancels: dict[RunID, str] = {}
        self._active: set[RunID] = set()
        self._loops = TaskOwner("runbook-watch")

    @property
    def owner(self) -> str:
        return self._settings.instance_id

    @property
    def running(self) -> frozenset[RunID]:
        """Runs whose work or its recording is still in progress on this process."""
        return frozenset(self._active)

    # -- lifecycle --------------------------------------------------------------------
    async def recover(self) -> list[Run]:
        """At start-up: this instance's runs from before, and stale ones, are unknown."""
        return await self.sweep(startup=True)

    def start_watching(self) -> None:
        self._loops.start(self._heartbeat_loop(), name="heartbeat")
        self._loops.start(self._sweep_loop(), name="sweeper")

    async def close(self) -> None:
        """Stop watching and stop the runs' work without recording anything: their
        heartbeat stops, so they are recognised as orphans by the next process."""
        await self._loops.close()
        await self._tasks.close()

    # -- starting ---------------------------------------------------------------------
    async def start(self, run: Run, runbook: Runbook) -> str:
        limit = max(1, runbook.concurrency)
        if await self._runs.count(runbook.name, [RunState.RUNNING]) >= limit:
            return await self._refuse(run, limit)
        rooms = await self._rooms(run)
        message = RunMessage(
            run_key=run.id,
            store=self._store,
            clock=self._clock,
            ids=self._ids,
            on_stored=self._on_stored,
            min_interval_s=self._settings.edit_interval_s,
        )
        now = self._clock.now()
        target = await message.post(
            f"▶ {run.id} {runbook.name}: starting (requested by {run.requested_by.display_name})",
            rooms,
            run.incident_id,
        )
        started = await self._runs.save(
            replace(
                run,
                state=RunState.RUNNING,
                started_at=now,
                owner=self.owner,
                heartbeat_at=now,
                message=target.notice,
            )
        )
        if started is None:
            current = await self._runs.get(run.id)
            state = current.state.value if current else "gone"
            return f"{run.id} was changed meanwhile ({state}); not started here."
        first = await self._runs.find([RunState.RUNNING], runbook=runbook.name, limit=limit)
        if started.id not in {r.id for r in first}:
            return await self._refuse(started, limit)
        await self._recorder.of_run(
            StepKind.STARTED,
            started,
            key=f"{started.id}:started",
            detail=f"on {self.owner}",
        )
        log.info("runbook_started", run_id=started.id, runbook=runbook.name)
        task = self._tasks.start(self._execute(started, runbook, message), name=str(started.id))
        self._running[started.id] = task
        self._active.add(started.id)
        task.add_done_callback(lambda _: self._active.discard(started.id))
        return f"{started.id} started: {runbook.name}."

    async def _refuse(self, run: Run, limit: int) -> str:
        reason = f"refused: {limit} run(s) of {run.runbook} already running (its limit)"
        saved = await self._runs.save(
            replace(run, state=RunState.FAILED, finished_at=self._clock.now(), outcome=reason)
        )
        if saved is not None:
            await self._recorder.of_run(
                StepKind.FINISHED,
                saved,
                key=f"{saved.id}:refused",
                detail=reason,
            )
        return f"{run.id} {reason}; request it again when one has finished."

    async def _rooms(self, run: Run) -> list[RoomRef]:
        links = await self._store.links_for(run.room)
        if not links and ";" in run.room.room_id:
            outer = replace(run.room, room_id=RemoteRoomID(run.room.room_id.split(";", 1)[0]))
            links = await self._store.links_for(outer)
        return [run.room, *(link.other(run.room) for link in links)]

    # -- running ----------------------------------------------------------------------
    async def _execute(self, run: Run, runbook: Runbook, message: RunMessage) -> None:
        captured = CapturedOutput(max_chars=self._settings.max_output_chars)
        flusher = self._tasks.start(self._flush(run, runbook, message, captured), name="output")
        state, summary = RunState.FAILED, ""
        try:
            state, summary = await self._work(run, runbook, captured)
        except asyncio.CancelledError:
            reason = self._cancels.pop(run.id, None)
            if reason is None:
                flusher.cancel()
                raise  # shutting down: leave the run for the next process to recognise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            state, summary = RunState.CANCELLED, reason
        finally:
            self._running.pop(run.id, None)
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        captured.close()
        summary = captured.redact(summary)
        await self._finish(
            run, runbook, state=state, summary=summary, captured=captured, message=message
        )

    async def _work(
        self, run: Run, runbook: Runbook, captured: CapturedOutput
    ) -> tuple[RunState, str]:
        executor = self._executors.get(type(runbook.executor))
        if executor is None:
            return RunState.FAILED, f"no executor for {type(runbook.executor).__name__}"
        timeout = runbook.timeout.total_seconds()
        try:
            values = dict(self._secrets(runbook.executor.secrets))
            captured.use_secrets(values.values())
            invocation = Invocation(run_id=run.id, runbook=runbook, args=run.args, secrets=values)
            async with asyncio.timeout(timeout):
                outcome = await executor.run(invocation, captured.write)
        except TimeoutError:
            return RunState.TIMED_OUT, f"timed out after {timeout:g} s"
        except (ExecutorError, SecretError) as exc:
            return RunState.FAILED, f"could not run: {exc}"
        except Exception as exc:  # noqa: BLE001 - any executor fault ends the run as failed
            reference = random.token_hex(4)
            log.warning("runbook_executor_crashed", run_id=run.id, error_type=type(exc).__name__)
            return RunState.FAILED, f"internal error (reference {reference})"
        return outcome.state, outcome.summary

    async def _flush(
        self, run: Run, runbook: Runbook, message: RunMessage, captured: CapturedOutput
    ) -> None:
        """Edit the run's message as output comes (the message waits out its rate limit)."""
        sent = 0
        while True:
            await captured.changed.wait()
            captured.changed.clear()
            text = captured.text()
            await message.edit(self._render(run, runbook, "running", text))
            new = text[sent:] if len(text) >= sent else text
            sent = len(text)
            if new:
                await self._recorder.of_run(
                    StepKind.OUTPUT,
                    run,
                    key=f"{run.id}:output:{self._ids.new()}",
                    detail=new[-OUTPUT_STEP_CHARS:],
                    state=RunState.RUNNING,
                )

    def _render(self, run: Run, runbook: Runbook, status: str, output: str) -> str:
        head = f"▶ {run.id} {runbook.name}: {status}"
        shown = tail(output)
        return f"{head}\n{shown}" if shown else head

    async def _finish(
        self,
        run: Run,
        runbook: Runbook,
        *,
        state: RunState,
        summary: str,
        captured: CapturedOutput,
        message: RunMessage,
    ) -> None:
        now = self._clock.now()
        output = captured.text()
        final = run
        for _ in range(SAVE_ATTEMPTS):
            current = await self._runs.get(run.id)
            if current is None:
                return
            if current.state is not RunState.RUNNING or current.owner != self.owner:
                final = current  # ended elsewhere (orphaned, cancelled by another replica)
                break
            saved = await self._runs.save(
                replace(
                    current,
                    state=state,
                    finished_at=now,
                    outcome=summary,
                    output=output,
                    output_truncated=captured.truncated,
                )
            )
            if saved is not None:
                final = saved
                break
        await self._recorder.of_run(
            StepKind.FINISHED,
            run,
            key=f"{run.id}:finished",
            detail=final.outcome or summary,
            state=final.state,
        )
        log.info("runbook_finished", run_id=run.id, state=final.state.value)
        took = (now - (run.started_at or now)).total_seconds()
        icon = ICONS.get(final.state, "")
        text = f"{icon} {run.id} {runbook.name}: {final.state.value} in {took:.1f} s"
        if final.outcome:
            text += f" ({final.outcome})"
        shown = tail(output)
        link = self._run_link(final) if self._run_link is not None else None
        if link:
            shown = f"{shown}\nFull output: {link}" if shown else f"Full output: {link}"
        await message.edit(f"{text}\n{shown}" if shown else text, final=True)

    # -- cancelling -------------------------------------------------------------------
    async def cancel(self, run: Run, by: Sender) -> str:
        reason = f"cancelled by {by.display_name}"
        task = self._running.get(run.id)
        if task is not None:
            self._cancels[run.id] = reason
            task.cancel()
            await asyncio.wait({task}, timeout=10.0)
            current = await self._runs.get(run.id)
            state = current.state.value if current else "gone"
            return f"{run.id} {state}."
        for _ in range(SAVE_ATTEMPTS):
            current = await self._runs.get(run.id)
            if current is None or current.state.final:
                return f"{run.id} already ended."
            saved = await self._runs.save(
                replace(
                    current,
                    state=RunState.CANCELLED,
                    finished_at=self._clock.now(),
                    outcome=reason,
                )
            )
            if saved is not None:
                await self._recorder.of_run(
                    StepKind.FINISHED,
                    saved,
                    key=f"{saved.id}:finished",
                    detail=reason,
                )
                if current.state is RunState.RUNNING:
                    return f"{run.id} cancelled; its process stops it within seconds."
                return f"{run.id} cancelled."
        return f"{run.id} kept changing; try again."

    # -- heartbeats and orphans -------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        ids = list(self._running)
        if not ids:
            return
        try:
            alive = await self._runs.heartbeat(ids, self.owner, self._clock.now())
        except Exception as exc:  # noqa: BLE001 - a failed beat is retried at the next one
            log.warning("runbook_heartbeat_failed", error_type=type(exc).__name__)
            return
        for run_id in ids:
            task = self._running.get(run_id)
            if run_id not in alive and task is not None and not task.done():
                log.warning("runbook_ended_elsewhere", run_id=run_id)
                self._cancels[run_id] = "ended elsewhere"
                task.cancel()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_s)
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.warning("runbook_sweep_failed", error_type=type(exc).__name__)

    async def sweep(self, *, startup: bool = False) -> list[Run]:
        """Mark orphaned runs ``unknown`` (announced) and expire unapproved requests."""
        now = self._clock.now()
        cutoff = now - timedelta(seconds=self._settings.stale_after_s)
        orphaned: list[Run] = []
        for run in await self._runs.find([RunState.RUNNING], limit=1000):
            if run.id in self._running:
                continue
            mine = startup and run.owner == self.owner
            if not mine and run.heartbeat_at is not None and run.heartbeat_at >= cutoff:
                continue
            since = f"{run.heartbeat_at:%H:%M:%S} UTC" if run.heartbeat_at else "its start"
            marked = await self._runs.orphan(
                replace(
                    run,
                    state=RunState.UNKNOWN,
                    finished_at=now,
                    outcome=f"its process stopped (no heartbeat since {since}); not re-run",
                ),
                stale_before=cutoff,
                owner=self.owner if startup else None,
            )
            if marked is not None:
                orphaned.append(marked)
                await self._announce_orphan(marked)
        for run in await self._runs.find([RunState.AWAITING_APPROVAL], limit=1000):
            runbook = self._catalog.get(run.runbook)
            expiry = runbook.approvals.expires_after if runbook else timedelta(minutes=30)
            if now >= run.created_at + expiry:
                await self._expire(run)
        return orphaned

    async def _expire(self, run: Run) -> None:
        saved = await self._runs.save(
            replace(
                run,
                state=RunState.EXPIRED,
                finished_at=self._clock.now(),
                outcome="not approved in time",
            )
        )
        if saved is not None:
            await self._recorder.of_run(
                StepKind.FINISHED,
                saved,
                key=f"{saved.id}:finished",
                detail="expired",
            )

    async def _announce_orphan(self, run: Run) -> None:
        log.warning("runbook_run_orphaned", run_id=run.id, owner=run.owner)
        await self._recorder.of_run(
            StepKind.ORPHANED,
            run,
            key=f"{run.id}:orphaned",
            detail=run.outcome,
        )
        rooms = await self._rooms(run)
        text = (
            f"⚠ {run.id} {run.runbook}: unknown. The process running it stopped; "
            "it will not be run again. Check the system it acts on before requesting "
            "it again.\n" + describe_run(run)
        )
        notice = bridge_notice(
            ids=self._ids,
            now=self._clock.now(),
            key=f"run:{run.id}:orphaned",
            text=text,
            incident_id=run.incident_id,
            data={"run_id": run.id},
        )
        stored = [await self._store.append(notice, rooms)]
        if run.message is not None:
            original = await self._store.get(EventID(run.message))
            if original is not None:
                target = MessageTarget(
                    notice=original.id,
                    origin=original.origin,
                    rooms=tuple(rooms),
                    incident_id=run.incident_id,
                )
                edit = edit_event(
                    ids=self._ids,
                    target=target,
                    key=f"run:{run.id}:edit:orphaned",
                    text=f"⚠ {run.id} {run.runbook}: unknown (its process stopped)",
                    now=self._clock.now(),
                )
                stored.append(await self._store.append(edit, rooms))
        if self._on_stored is not None:
            self._on_stored([s for s in stored if not s.duplicate])
