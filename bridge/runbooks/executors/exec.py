"""The ``exec`` executor: one process, started from an argv list, never through a shell.

An argv element that is exactly ``{param}`` is that parameter's value, whole (booleans
as ``true``/``false``): a value is always exactly one argv element, whatever it holds.
An element that is exactly ``{secret:NAME}`` is that secret; a secret anywhere else in
an element is refused. Every other element is literal text, passed unchanged. The
environment is exactly the spec's ``env`` (values rendered as templates) plus the
variables ``inherit_env`` names, taken from the daemon's environment; nothing else.

The process runs in a session (and process group) of its own, with stdin closed and
stdout and stderr merged into one pipe, read as it comes and capped at
``max_output_bytes``. The run ends when the process exits; anything it left in its
process group is killed then. On cancellation the group gets SIGTERM, then SIGKILL
after a short grace, and is reaped before ``CancelledError`` propagates.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import structlog

from bridge.runbooks.executors.base import (
    MASK,
    ExecutorError,
    Invocation,
    Outcome,
    OutputSink,
)
from bridge.runbooks.model import ExecSpec, RunState
from bridge.runbooks.templates import format_value, mask, render_masked, render_text
from bridge.tasks import finish_despite_cancel

log = structlog.get_logger(__name__)

_READ_CHUNK: Final = 64 * 1024
_REAP_TIMEOUT_S: Final = 2.0
"""How long a killed process may take to be reaped (SIGKILL cannot be ignored)."""
_MAX_ARG_BYTES: Final = 128 * 1024 - 1
"""Linux refuses a single argv element or environment string of 128 KiB or more."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Command:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None


class ExecExecutor:
    """Runs ``ExecSpec`` runbooks as local processes."""

    def __init__(
        self,
        *,
        term_grace_s: float = 0.5,
        drain_timeout_s: float = 1.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``term_grace_s``: how long a cancelled process group has between SIGTERM and
        SIGKILL; ``drain_timeout_s``: how long output is still read after the process
        ended; ``environ``: where ``inherit_env`` names are looked up (the daemon's
        environment when None)."""
        self._term_grace_s = term_grace_s
        self._drain_timeout_s = drain_timeout_s
        self._environ = environ

    def plan(self, invocation: Invocation) -> str:
        spec = _exec_spec(invocation)
        names = frozenset(ref.name for ref in spec.secrets) | frozenset(invocation.secrets)
        argv = [_element(element, invocation, None, names) for element in spec.argv]
        env_names = sorted(set(spec.env) | set(spec.inherit_env))
        for template in spec.env.values():
            render_masked(template, invocation.args, names)
        lines = [
            "exec (no shell)",
            f"argv: {json.dumps(argv, ensure_ascii=False)}",
            f"env: {json.dumps(env_names)}",
            f"cwd: {spec.cwd if spec.cwd is not None else '(the daemon working directory)'}",
        ]
        return mask("\n".join(lines), invocation.secrets)

    async def run(self, invocation: Invocation, output: OutputSink) -> Outcome:
        spec = _exec_spec(invocation)
        command = self._command(spec, invocation)
        capture = _Capture(limit=spec.max_output_bytes, output=output)
        transport, watch = await self._spawn(command, capture)
        pid = transport.get_pid()
        log.info("runbook_exec_started", run_id=invocation.run_id, pid=pid)
        try:
            try:
                await asyncio.wait({watch.exited})  # cancelling this leaves the future be
                # The run ends with its process: what it left in its group goes too.
                _signal_group(pid, signal.SIGKILL)
                await _within(watch.output_closed, self._drain_timeout_s)
            except asyncio.CancelledError:
                await finish_despite_cancel(self._stop(pid, watch))
                log.info("runbook_exec_stopped", run_id=invocation.run_id, pid=pid)
                raise
        finally:
            transport.close()
        capture.finish()
        returncode = transport.get_returncode()
        log.info("runbook_exec_finished", run_id=invocation.run_id, returncode=returncode)
        return _outcome(returncode, capture)

    def _command(self, spec: ExecSpec, invocation: Invocation) -> _Command:
        if not spec.argv:
            raise ExecutorError("the runbook's argv is empty")
        names = frozenset(invocation.secrets)
        argv = tuple(
            _element(element, invocation, invocation.secrets, names) for element in spec.argv
        )
        environ = os.environ if self._environ is None else self._environ
        env = {name: environ[name] for name in spec.inherit_env if name in environ}
        for name, template in spec.env.items():
            env[name] = render_text(template, invocation.args, invocation.secrets)
        for index, element in enumerate(argv):
            _check_os_string(element, f"argv element {index}")
        for name, value in env.items():
            if not name or "=" in name:
                raise ExecutorError(f"environment variable name {name!r} is not allowed")
            _check_os_string(name, "an environment variable name")
            _check_os_string(value, f"environment variable {name}")
        return _Command(argv=argv, env=env, cwd=spec.cwd)

    async def _spawn(
        self, command: _Command, capture: _Capture
    ) -> tuple[asyncio.SubprocessTransport, _Watch]:
        loop = asyncio.get_running_loop()
        watch = _Watch(loop, capture)
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: watch,
                *command.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(command.env),
                cwd=command.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ExecutorError(f"could not start the process: {reason}") from None
        return transport, watch

    async def _stop(self, pid: int, watch: _Watch) -> None:
        """SIGTERM to the group, SIGKILL after the grace, the leader reaped."""
        _signal_group(pid, signal.SIGTERM)
        await _within(watch.exited, self._term_grace_s)
        _signal_group(pid, signal.SIGKILL)
        if not await _within(watch.exited, _REAP_TIMEOUT_S):
            log.error("runbook_exec_not_reaped", pid=pid)
        await _within(watch.output_closed, self._drain_timeout_s)


class _Watch(asyncio.SubprocessProtocol):
    """The process seen from the loop: its output to the capture, its exit and the end
    of its output pipe as futures (the exit does not wait for the pipe: a process it
    started may still hold it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capture: _Capture) -> None:
        self._capture = capture
        self.exited: asyncio.Future[None] = loop.create_future()
        self.output_closed: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if isinstance(data, bytes):
            self._capture.take(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and not self.output_closed.done():
            self.output_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class _Capture:
    """Output decoded as UTF-8 (bad bytes replaced), passed on until ``limit`` bytes."""

    def __init__(self, *, limit: int, output: OutputSink) -> None:
        self._limit = limit
        self._output = output
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.captured = 0
        self.truncated = False
        self._sink_failed = False

    def take(self, chunk: bytes) -> None:
        if self.truncated:
            return
        room = self._limit - self.captured
        if len(chunk) > room:
            self._emit(self._decoder.decode(chunk[:room]))
            self.captured = self._limit
            self.truncated = True
            self._emit(f"\n[output truncated at {self._limit} bytes]\n")
            return
        self.captured += len(chunk)
        self._emit(self._decoder.decode(chunk))

    def finish(self) -> None:
        """The output has ended: a character cut at the end shows as a replacement."""
        if not self.truncated:
            self._emit(self._decoder.decode(b"", final=True))

    def _emit(self, text: str) -> None:
        if not text or self._sink_failed:
            return
        try:
            self._output(text)
        except Exception:  # the pipe must still be drained, or the process blocks
            self._sink_failed = True
            log.exception("runbook_output_sink_failed")


def _exec_spec(invocation: Invocation) -> ExecSpec:
    spec = invocation.spec
    if not isinstance(spec, ExecSpec):
        raise ExecutorError("not an exec runbook")
    return spec


def _element(
    element: str,
    invocation: Invocation,
    secrets: Mapping[str, str] | None,
    secret_names: frozenset[str],
) -> str:
    """One argv element: a whole ``{param}`` or ``{secret:NAME}``, or literal text.
    ``secrets`` None: a plan (secrets shown as ``MASK``)."""
    if element.startswith("{") and element.endswith("}"):
        inner = element[1:-1]
        if inner.startswith("secret:"):
            name = inner.removeprefix("secret:")
            if name not in secret_names:
                raise ExecutorError(f"unknown secret {name!r} in argv")
            return MASK if secrets is None else secrets[name]
        if inner and "{" not in inner and "}" not in inner:
            if inner not in invocation.args:
                raise ExecutorError(f"unknown parameter {inner!r} in argv")
            return format_value(invocation.args[inner])
    if "{secret:" in element:
        raise ExecutorError("a secret in argv must be a whole element")
    return element


def _check_os_string(text: str, what: str) -> None:
    if "\x00" in text:
        raise ExecutorError(f"{what} holds a NUL character, which no process can receive")
    try:
        encoded = os.fsencode(text)
    except UnicodeEncodeError:
        raise ExecutorError(f"{what} is not valid text for the operating system") from None
    if len(encoded) > _MAX_ARG_BYTES:
        raise ExecutorError(f"{what} is longer than the operating system allows")


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("runbook_exec_signal_refused", pgid=pgid, signal=signum.name)


def _outcome(returncode: int | None, capture: _Capture) -> Outcome:
    if returncode is None:  # pragma: no cover - the exit was seen before
        state, summary = RunState.FAILED, "exit status unknown"
    elif returncode == 0:
        state, summary = RunState.SUCCEEDED, "exit code 0"
    elif returncode < 0:
        state, summary = RunState.FAILED, f"killed by signal {_signal_name(-returncode)}"
    else:
        state, summary = RunState.FAILED, f"exit code {returncode}"
    if capture.truncated:
        summary += f" (output truncated at {capture.captured} bytes)"
    return Outcome(state=state, summary=summary)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


async def _within(future: asyncio.Future[None], seconds: float) -> bool:
    """Whether ``future`` is done within ``seconds`` (it is never cancelled)."""
    if not future.done():
        await asyncio.wait({future}, timeout=seconds)
    return future.done()
