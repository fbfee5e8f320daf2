"""The ``exec`` executor against real processes: literal argv, allow-listed environment,
output, exit codes, S6 (hostile values arrive as one literal argv element each) and R12
(timeout and cancel stop the whole process group within bounds)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.runbooks.executors.base import MASK, ExecutorError, Invocation
from bridge.runbooks.executors.exec import ExecExecutor
from bridge.runbooks.model import (
    Access,
    ApprovalPolicy,
    ExecSpec,
    ParamSpec,
    ParamType,
    Runbook,
    RunID,
    RunState,
    SecretRef,
    Value,
)
from tests.support.waiting import eventually

PY = sys.executable
CANARY = "canary-secret-7f3a9c"

ECHO_ARGV = """
import json, sys
print(json.dumps(sys.argv[1:], ensure_ascii=True))
"""

INTERLEAVED = """
import sys
for i in range(5):
    sys.stdout.write(f"out {i}\\n"); sys.stdout.flush()
    sys.stderr.write(f"err {i}\\n"); sys.stderr.flush()
"""

WAIT_FOR_FIFO = """
import sys
print("first", flush=True)
with open(sys.argv[1]) as fifo:
    print("got " + fifo.read().strip(), flush=True)
"""

FLOOD = """
import sys
sys.stdout.buffer.write(b"\\xe2\\x82\\xac" * 400_000)
sys.stdout.buffer.flush()
"""

BAD_UTF8 = """
import sys
sys.stdout.buffer.write(b"ok \\xff\\xfe end\\n")
"""

# Prints "ready <pid> <grandchild pid or 0>" once its signal handling is in place, then
# waits forever. argv[1]: "ignore" to ignore SIGTERM; argv[2]: "spawn" to start a
# grandchild (same process group) that ignores SIGTERM too.
STUBBORN = """
import signal, subprocess, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = 0
if sys.argv[2] == "spawn":
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, sys, time\\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "print('grandchild', flush=True)\\n"
        "time.sleep(120)\\n"])
    grandchild = child.pid
print(f"ready {grandchild}", flush=True)
time.sleep(120)
"""

LEAVES_A_CHILD = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(f"ready {child.pid}", flush=True)
"""


def runbook(spec: ExecSpec, params: tuple[str, ...], timeout_s: float = 30) -> Runbook:
    return Runbook(
        name="exec-under-test",
        description="a runbook under test",
        params=tuple(ParamSpec(name=name, type=ParamType.STRING) for name in params),
        access=Access(),
        approvals=ApprovalPolicy(),
        timeout=timedelta(seconds=timeout_s),
        executor=spec,
    )


def invocation(
    spec: ExecSpec, args: dict[str, Value] | None = None, secrets: dict[str, str] | None = None
) -> Invocation:
    args = args or {}
    return Invocation(
        run_id=RunID("R-7"), runbook=runbook(spec, tuple(args)), args=args, secrets=secrets or {}
    )


def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


class Collected:
    """An output sink that keeps every piece and signals when a text has been seen."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self._waiters: list[tuple[str, asyncio.Event]] = []

    def __call__(self, text: str) -> None:
        self.pieces.append(text)
        for wanted, event in self._waiters:
            if wanted in self.text:
                event.set()

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    async def seen(self, wanted: str, within: float = 10.0) -> None:
        event = asyncio.Event()
        self._waiters.append((wanted, event))
        if wanted in self.text:
            event.set()
        async with asyncio.timeout(within):
            await event.wait()


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (zombies no longer run)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


async def all_gone(members: Callable[[], list[int]]) -> None:
    """SIGKILL has been sent when ``run`` returns; the kernel ends those processes a
    moment later (they never run user code again). Allow that moment, no more."""

    async def none_left() -> bool:
        return not members()

    await eventually(none_left, within=0.5, interval=0.01, what="no process left")


def reported_pid(output: Collected) -> int:
    """The pid a script reported in its ``ready <pid>`` line."""
    line = next(line for line in output.text.splitlines() if line.startswith("ready "))
    return int(line.split()[1])


async def test_each_parameter_is_exactly_one_literal_argv_element(tmp_path: Path) -> None:
    spec = ExecSpec(
        argv=(
            PY,
            script(tmp_path, "echo.py", ECHO_ARGV),
            "literal {a} and {secret:TOKEN}x",
            "{a}",
            "{count}",
            "{force}",
            "{secret:TOKEN}",
            "{{a}}",
            "",
        ),
        secrets=(SecretRef(name="TOKEN", env="UNUSED"),),
    )
    args: dict[str, Value] = {"a": "x y; rm -rf / $(id) `id` | cat\n", "count": 5, "force": False}
    with pytest.raises(ExecutorError):  # a secret inside a longer element is refused
        await ExecExecutor().run(invocation(spec, args, {"TOKEN": CANARY}), Collected())
    spec = ExecSpec(argv=spec.argv[:2] + spec.argv[3:], secrets=spec.secrets)
    output = Collected()
    outcome = await ExecExecutor().run(invocation(spec, args, {"TOKEN": CANARY}), output)
    assert outcome.state is RunState.SUCCEEDED
    assert outcome.summary == "exit code 0"
    assert json.loads(output.text) == [args["a"], "5", "false", CANARY, "{{a}}", ""]


async def test_the_environment_is_exactly_the_allow_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAEMON_ONLY_CANARY", CANARY)
    monkeypatch.setenv("ALLOWED_FROM_DAEMON", "inherited")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    spec = ExecSpec(
        argv=("/usr/bin/env",),
        env={"GREETING": "hello {who}", "API_TOKEN": "{secret:TOKEN}"},
        inherit_env=("ALLOWED_FROM_DAEMON", "NOT_SET_ANYWHERE"),
    )
    output = Collected()
    outcome = await ExecExecutor().run(
        invocation(spec, {"who": "$(whoami) ;"}, {"TOKEN": "t0k"}), output
    )
    assert outcome.state is RunState.SUCCEEDED
    assert sorted(output.text.splitlines()) == [
        "ALLOWED_FROM_DAEMON=inherited",
        "API_TOKEN=t0k",
        "GREETING=hello $(whoami) ;",
    ]


async def test_inherited_names_come_from_the_given_environment(tmp_path: Path) -> None:
    spec = ExecSpec(argv=("/usr/bin/env",), inherit_env=("PATH", "HOME"))
    output = Collected()
    executor = ExecExecutor(environ={"PATH": "/usr/bin:/bin", "OTHER": "no"})
    await executor.run(invocation(spec), output)
    assert output.text.splitlines() == ["PATH=/usr/bin:/bin"]


async def test_the_working_directory_is_the_spec_s(tmp_path: Path) -> None:
    output = Collected()
    spec = ExecSpec(argv=("/bin/pwd",), cwd=str(tmp_path))
    await ExecExecutor().run(invocation(spec), output)
    assert output.text == f"{tmp_path}\n"
    spec = ExecSpec(argv=("/bin/pwd",), cwd=str(tmp_path / "missing"))
    with pytest.raises(ExecutorError, match="could not start"):
        await ExecExecutor().run(invocation(spec), output)


async def test_stdout_and_stderr_arrive_merged_in_order(tmp_path: Path) -> None:
    output = Collected()
    spec = ExecSpec(argv=(PY, script(tmp_path, "inter.py", INTERLEAVED)))
    await ExecExecutor().run(invocation(spec), output)
    expected = "".join(f"out {i}\nerr {i}\n" for i in range(5))
    assert output.text == expected


async def test_output_is_passed_on_while_the_process_runs(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    output = Collected()
    spec = ExecSpec(argv=(PY, script(tmp_path, "wait.py", WAIT_FOR_FIFO), str(fifo)))
    run = asyncio.create_task(ExecExecutor().run(invocation(spec), output))
    try:
        await output.seen("first\n")
        assert not run.done()
        await asyncio.to_thread(fifo.write_text, "go\n")
        async with asyncio.timeout(10):
            outcome = await run
    finally:
        run.cancel()
    assert outcome.state is RunState.SUCCEEDED
    assert output.text == "first\ngot go\n"


async def test_output_is_capped_with_a_marker_and_the_process_not_blocked(tmp_path: Path) -> None:
    output = Collected()
    spec = ExecSpec(argv=(PY, script(tmp_path, "flood.py", FLOOD)), max_output_bytes=1000)
    async with asyncio.timeout(20):
        outcome = await ExecExecutor().run(invocation(spec), output)
    assert outcome.state is RunState.SUCCEEDED
    assert "output truncated" in outcome.summary
    body, marker = output.text.split("\n[output truncated", 1)
    assert body == "\u20ac" * 333  # 999 bytes of whole characters; the cut one dropped
    assert marker == " at 1000 bytes]\n"


async def test_undecodable_output_is_replaced_not_fatal(tmp_path: Path) -> None:
    output = Collected()
    await ExecExecutor().run(
        invocation(ExecSpec(argv=(PY, script(tmp_path, "bad.py", BAD_UTF8)))), output
    )
    assert output.text == "ok \ufffd\ufffd end\n"


@pytest.mark.parametrize(
    ("code", "state", "summary"),
    [
        ("raise SystemExit(0)", RunState.SUCCEEDED, "exit code 0"),
        ("raise SystemExit(3)", RunState.FAILED, "exit code 3"),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
            RunState.FAILED,
            "killed by signal SIGKILL",
        ),
    ],
)
async def test_exit_codes_and_signals_are_the_outcome(
    code: str, state: RunState, summary: str
) -> None:
    outcome = await ExecExecutor().run(invocation(ExecSpec(argv=(PY, "-c", code))), Collected())
    assert outcome.state is state
    assert outcome.summary == summary


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (("/nonexistent/runbook-tool",), {}, "could not start"),
        ((), {}, "empty"),
        (("/bin/echo", "{nope}"), {}, "unknown parameter"),
        (("/bin/echo", "{secret:NOPE}"), {}, "unknown secret"),
        (("/bin/echo",), {"X": "{nope}"}, "unknown parameter"),
        (("/bin/echo",), {"A=B": "x"}, "not allowed"),
        (("/bin/echo", "{v}"), {}, "NUL"),
    ],
)
async def test_what_cannot_start_is_an_executor_error(
    argv: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    spec = ExecSpec(argv=argv, env=env)
    with pytest.raises(ExecutorError, match=message) as raised:
        await ExecExecutor().run(invocation(spec, {"v": "a\x00b"}, {"T": CANARY}), Collected())
    assert CANARY not in str(raised.value)


def test_the_plan_shows_the_argv_with_secrets_masked(tmp_path: Path) -> None:
    spec = ExecSpec(
        argv=("/usr/bin/tool", "--host", "{host}", "{secret:TOKEN}", "{n}"),
        env={"API": "{secret:TOKEN}", "MODE": "fast"},
        inherit_env=("PATH",),
        cwd="/srv/tools",
        secrets=(SecretRef(name="TOKEN", file="/run/secrets/token"),),
    )
    host = f"db 1; echo {CANARY}"
    plan = ExecExecutor().plan(invocation(spec, {"host": host, "n": 2}, {"TOKEN": CANARY}))
    lines = plan.splitlines()
    argv_line = next(line for line in lines if line.startswith("argv: "))
    assert json.loads(argv_line.removeprefix("argv: ")) == [
        "/usr/bin/tool",
        "--host",
        f"db 1; echo {MASK}",
        MASK,
        "2",
    ]
    assert 'env: ["API", "MODE", "PATH"]' in lines
    assert "cwd: /srv/tools" in lines
    assert CANARY not in plan
    # A dry run needs no secret values: the spec's names are enough.
    plan = ExecExecutor().plan(invocation(spec, {"host": "h", "n": 2}))
    assert MASK in plan


# S6: hostile values, each exactly one literal argv element.

FRAGMENTS = (
    "\n", "\r\n", "\r", ";", "&", "&&", "|", "||", "$(id)", "`id`", "${IFS}", "$HOME", "../",
    "..", "/etc/passwd", "'", '"', "\\", "*", "?", "~", "<", ">", ">>", "2>&1", "#", "%s",
    "%n", "{}", "{a}", "{{", "}}", "{secret:TOKEN}", "-", "--", "-rf", "--help", " ", "\t",
    "\x1b[31m", "\x7f", "\u202e", "\u2066", "\uff1b", "\u037e", "\u2215", "\uff0f", "\u0430",
    "\u200b", "\ufeff", "\u00a0", "\u2028", "e\u0301", "\U0001f600", "\udc80", "\ud800",
    "\x00", "%00", "%2e%2e%2f", "\\x00", "!", "!!", "^", "=", "a=b",
)  # fmt: skip

fragment_or_text = st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6))
small_values = st.lists(fragment_or_text, max_size=10).map("".join)
big_values = st.sampled_from(FRAGMENTS).map(lambda piece: (piece * 65_536)[:65_536])
batches = st.tuples(
    st.lists(small_values, min_size=50, max_size=80), st.lists(big_values, max_size=2)
).map(lambda parts: parts[0] + parts[1])


def refusable(value: str) -> bool:
    """Values no process can receive as an argv element: the executor must refuse them."""
    if "\x00" in value:
        return True
    try:
        return len(os.fsencode(value)) >= 128 * 1024
    except UnicodeEncodeError:
        return True


def test_s6_hostile_values_each_arrive_as_one_literal_argv_element(tmp_path: Path) -> None:
    echo = script(tmp_path, "echo.py", ECHO_ARGV)
    marker = tmp_path / "started"
    touch = script(tmp_path, "touch.py", f"open({str(marker)!r}, 'w').close()")
    counted: list[int] = [0, 0]  # [arrived literally, refused before any process started]

    async def through_a_process(values: list[str]) -> list[str]:
        names = [f"p{index}" for index in range(len(values))]
        spec = ExecSpec(
            argv=(PY, echo, *(f"{{{name}}}" for name in names)), max_output_bytes=16 * 2**20
        )
        args: dict[str, Value] = dict(zip(names, values, strict=True))
        output = Collected()
        outcome = await ExecExecutor().run(invocation(spec, args), output)
        assert outcome.state is RunState.SUCCEEDED, outcome.summary
        arrived: list[str] = json.loads(output.text)
        return arrived

    async def refused(value: str) -> None:
        spec = ExecSpec(argv=(PY, touch, "{v}"))
        with pytest.raises(ExecutorError):
            await ExecExecutor().run(invocation(spec, {"v": value}), Collected())
        assert not marker.exists()

    @settings(
        max_examples=220,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(batch=batches)
    def check(batch: list[str]) -> None:
        accepted = [value for value in batch if not refusable(value)]
        if accepted:
            arrived = asyncio.run(through_a_process(accepted))
            # surrogateescape: what the child decodes is what was sent
            assert arrived == accepted
        for value in batch:
            if refusable(value):
                asyncio.run(refused(value))
        counted[0] += len(accepted)
        counted[1] += len(batch) - len(accepted)

    check()
    assert sum(counted) >= 10_000, counted
    assert counted[1] > 0, "no refusable value was ever generated"


# R12: the service cancels the task running `run` at the deadline or on `!runbook cancel`.


def group_of_script(name: str) -> int:
    """The process group of the running process whose argv names ``name``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\x00")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if any(part.endswith(name.encode()) for part in cmdline[1:2]):
            return int(stat[stat.rindex(")") + 2 :].split()[2])
    raise AssertionError(f"no process runs {name}")


async def wait_until(deadline: float, task: asyncio.Task[object]) -> None:
    async with asyncio.timeout_at(deadline):
        await task


@pytest.mark.parametrize(
    ("ignore", "spawn"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["plain", "ignores-sigterm", "with-grandchild", "both-ignore-sigterm"],
)
async def test_r12_timeout_returns_within_1s_and_leaves_nothing(
    tmp_path: Path, ignore: bool, spawn: bool
) -> None:
    path = script(tmp_path, f"stubborn-{ignore}-{spawn}.py", STUBBORN)
    spec = ExecSpec(argv=(PY, path, "ignore" if ignore else "keep", "spawn" if spawn else "-"))
    output = Collected()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.5
    runs = asyncio.create_task(ExecExecutor().run(invocation(spec), output))
    try:
        await output.seen("ready ")
        pgid = group_of_script(Path(path).name)
        # The deadline cancels this task while it awaits the run, which cancels the run.
        with pytest.raises(TimeoutError):
            await wait_until(deadline, runs)
    finally:
        runs.cancel()
    async with asyncio.timeout(5):
        await asyncio.gather(runs, return_exceptions=True)
    returned_after = loop.time() - deadline
    assert runs.cancelled()
    assert returned_after < 1.0, returned_after
    await all_gone(lambda: live_group_members(pgid))
    grandchild = reported_pid(output)
    if spawn:
        await all_gone(lambda: [grandchild] if is_running(grandchild) else [])


async def test_r12_timeout_inside_the_run_task_itself(tmp_path: Path) -> None:
    """The service's shape: the timeout wraps the awaited run in the run's own task."""
    path = script(tmp_path, "stubborn-own.py", STUBBORN)
    spec = ExecSpec(argv=(PY, path, "ignore", "spawn"))
    output = Collected()
    loop = asyncio.get_running_loop()

    async def run_with_deadline(deadline: float) -> None:
        async with asyncio.timeout_at(deadline):
            await ExecExecutor().run(invocation(spec), output)

    deadline = loop.time() + 1.5
    with pytest.raises(TimeoutError):
        await run_with_deadline(deadline)
    returned_after = loop.time() - deadline
    assert returned_after < 1.0, returned_after
    grandchild = reported_pid(output)
    assert grandchild > 0
    await all_gone(lambda: [grandchild] if is_running(grandchild) else [])


async def test_r12_cancel_takes_effect_within_5s_even_if_cancelled_again(tmp_path: Path) -> None:
    path = script(tmp_path, "stubborn-cancel.py", STUBBORN)
    spec = ExecSpec(argv=(PY, path, "ignore", "spawn"))
    output = Collected()
    runs = asyncio.create_task(ExecExecutor().run(invocation(spec), output))
    try:
        await output.seen("grandchild\n")
        pgid = group_of_script(Path(path).name)
        started = time.monotonic()
        runs.cancel()
        await asyncio.sleep(0)  # the cleanup has begun: a second cancel must not cut it short
        runs.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(runs, return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        runs.cancel()
    assert runs.cancelled()
    assert elapsed < 5.0
    await all_gone(lambda: live_group_members(pgid))


async def test_what_the_process_leaves_behind_is_killed_when_it_exits(tmp_path: Path) -> None:
    path = script(tmp_path, "leaves.py", LEAVES_A_CHILD)
    output = Collected()
    started = time.monotonic()
    async with asyncio.timeout(10):
        outcome = await ExecExecutor().run(invocation(ExecSpec(argv=(PY, path))), output)
    assert time.monotonic() - started < 5.0
    assert outcome.state is RunState.SUCCEEDED
    child = reported_pid(output)
    await all_gone(lambda: [child] if is_running(child) else [])


async def test_sigterm_is_tried_before_sigkill(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys, time\n"
        "def bye(*_):\n"
        "    os.write(1, b'terminated politely\\n'); os._exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready 0', flush=True)\n"
        "time.sleep(120)\n"
    )
    output = Collected()
    runs = asyncio.create_task(
        ExecExecutor().run(invocation(ExecSpec(argv=(PY, "-c", code))), output)
    )
    try:
        await output.seen("ready ")
        runs.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(runs, return_exceptions=True)
    finally:
        runs.cancel()
    assert "terminated politely" in output.text
