"""The README's first command, tried as a new user would: up, a round trip, nothing left behind;
and ``--drill``: a scripted incident through both chats, recorded, then nothing left behind."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 180.0
ROUND_TRIP_S = 30.0
DRILL_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 60.0
READY_LINE = "Ctrl-C stops everything."
DATABASE = "incident_bridge"
"""The database the local stack's bridge writes to (devtools/stack_config.py)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs, ...)."""
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=False
    )
    parents: dict[int, list[int]] = {}
    for line in out.stdout.splitlines():
        child, parent = (int(p) for p in line.split())
        parents.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class StackProcess:
    """``python -m devtools.localstack`` as a child; its output read by a thread, so every
    wait for a line has a deadline."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.localstack", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, name="stack-output")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def text(self) -> str:
        return "".join(self.output)

    def wait_for_line(self, match: Callable[[str], bool], *, within: float, what: str) -> str:
        """All output up to and including the first line that ``match``es."""
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out after {within} s waiting for {what}:\n{self.text}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"the stack exited ({self.proc.poll()}) before {what}:\n{self.text}")
            self.output.append(line)
            if match(line):
                return self.text

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; the exit code and the output until the end (bounded)."""
        self.proc.send_signal(signal.SIGINT)
        return self.wait_exit()

    def wait_exit(self) -> tuple[int, str]:
        code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=10)
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line is not None:
                self.output.append(line)
        return code, self.text

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def stack_process(tmp_path: Path) -> Iterator[Callable[..., StackProcess]]:
    started: list[StackProcess] = []

    def start(*args: str) -> StackProcess:
        process = StackProcess("--state-dir", str(tmp_path / "stack"), *args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


def _assert_nothing_left(pids: list[int]) -> None:
    left = [pid for pid in pids if _alive(pid)]
    if left:
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"processes left running: {left}")


def _printed(pattern: str, output: str) -> str:
    found = re.search(pattern, output, re.MULTILINE)
    assert found, f"{pattern!r} not printed:\n{output}"
    return found.group(1)


def _call(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _until(probe: Any, what: str) -> Any:
    deadline = time.monotonic() + ROUND_TRIP_S
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _matrix_texts(synapse: str, token: str, room: str) -> list[str]:
    path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/messages?dir=b&limit=50"
    chunk = _call("GET", synapse + path, token=token)["chunk"]
    return [e["content"].get("body", "") for e in chunk if e["type"] == "m.room.message"]


def _round_trip(output: str) -> None:
    """A Teams user types on the emulator page; the Matrix user reads it and answers."""
    synapse = _printed(r"Synapse\s+(http://127\.0\.0\.1:\d+)", output)
    page = _printed(r"Teams page\s+(http://127\.0\.0\.1:\d+)/", output)
    room = _printed(r"Matrix room\s+(!\S+)", output)
    login = re.search(r"Matrix login\s+@(\w+):\S+ / (\S+)", output)
    assert login, output
    token = _call(
        "POST",
        f"{synapse}/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": login.group(1)},
            "password": login.group(2),
        },
    )["access_token"]
    directory = _call("GET", f"{page}/_emulator/api/directory")
    war_room = next(c for c in directory["conversations"] if "war room" in c["label"].lower())
    alice = directory["users"][0]
    sent = _call(
        "POST",
        f"{page}/_emulator/api/messages",
        {"conversation": war_room["id"], "user": alice["id"], "text": "db primary is down"},
    )
    assert sent["status"] == 200
    _until(
        lambda: "db primary is down" in _matrix_texts(synapse, token, room),
        "the Teams message in Matrix",
    )
    send = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/send/m.room.message/r1"
    _call("PUT", synapse + send, {"msgtype": "m.text", "body": "failing over"}, token)
    conversation = urllib.parse.quote(war_room["id"])

    def in_teams() -> bool:
        listing = _call("GET", f"{page}/_emulator/api/messages?conversation={conversation}")
        return any("failing over" in m["text"] for m in listing["messages"])

    _until(in_teams, "the Matrix reply on the Teams page")


def test_local_stack_round_trip_and_clean_stop(
    stack_process: Callable[..., StackProcess],
) -> None:
    stack = stack_process()
    output = stack.wait_for_line(
        lambda line: line.startswith(READY_LINE), within=UP_TIMEOUT_S, what="the stack"
    )
    assert "local stack is up" in output, output
    bridge_url = _printed(r"bridge\s+(http://127\.0\.0\.1:\d+)", output)
    with urllib.request.urlopen(f"{bridge_url}/readyz", timeout=5) as response:
        assert response.status == 200
    api_token = _printed(r"API token\s+(\S+)", output)
    assert _call("GET", f"{bridge_url}/api/v1/incidents", token=api_token)["incidents"] == []
    children = _descendants(stack.proc.pid)
    assert len(children) >= 4  # MongoDB, Synapse, the Teams emulator, the bridge
    _round_trip(output)

    code, output = stack.interrupt()
    assert code == 0, output
    assert "local stack: stopped" in output
    _assert_nothing_left(children)


def test_drill_declares_runs_and_resolves_then_stops_clean(
    stack_process: Callable[..., StackProcess],
) -> None:
    stack = stack_process("--drill")
    started = time.monotonic()
    output = stack.wait_for_line(
        lambda line: line.startswith(READY_LINE), within=UP_TIMEOUT_S, what="the stack"
    )
    up_s = time.monotonic() - started
    output = stack.wait_for_line(
        lambda line: line.startswith(("drill: succeeded", "drill: FAILED")),
        within=DRILL_TIMEOUT_S,
        what="the end of the drill",
    )
    drill_s = time.monotonic() - started - up_s
    assert "drill: succeeded" in output, output
    output = stack.wait_for_line(
        lambda line: line.startswith("local stack: still running"),
        within=ROUND_TRIP_S,
        what="where to look",
    )
    steps = re.findall(r"^drill \[(\d+)/(\d+)\]", output, re.MULTILINE)
    assert steps == [(str(n), "10") for n in range(1, 11)], output
    children = _descendants(stack.proc.pid)

    bridge_url = _printed(r"^  bridge\s+(http://127\.0\.0\.1:\d+)", output)
    api_token = _printed(r"API token\s+(\S+)", output)
    page = _printed(r"where to look:\n  incident page (http://\S+)", output)
    incident_id = _printed(r"/incidents/(INC-\d+)\?key=", page)
    run_id = _printed(r"(R-\d+) requested in Matrix", output)

    # Over the API: the incident as the drill left it, and its one run.
    incident = _call("GET", f"{bridge_url}/api/v1/incidents/{incident_id}", token=api_token)
    assert incident["status"] == "resolved", incident
    assert incident["declared_by"]["platform"] == "teams", incident
    assert incident["roles"]["commander"]["user_id"] == "@demo:localhost", incident
    assert incident["postmortem"].startswith("# Postmortem"), incident["postmortem"][:200]
    run = _call("GET", f"{bridge_url}/api/v1/runs/{run_id}", token=api_token)
    assert (run["runbook"], run["state"], run["incident_id"]) == (
        "service-check",
        "succeeded",
        incident_id,
    ), run
    assert run["requested_by"]["platform"] == "matrix", run
    assert [a["platform"] for a in run["approvals"]] == ["teams"], run
    assert "checkout: healthy" in run["output"], run
    with urllib.request.urlopen(page, timeout=10) as response:  # the signed link, no token
        assert response.status == 200
        assert incident_id in response.read().decode()

    # In MongoDB: one run of the runbook, approved once, by someone other than its requester.
    mongo_uri = _printed(r"MongoDB\s+(mongodb://\S+)", output)
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        database = client[DATABASE]
        stored = database["incidents"].find_one({"_id": incident_id})
        assert stored is not None
        assert stored["status"] == "resolved"
        assert stored["postmortem"]
        runs = list(database["runbook_runs"].find({"runbook": "service-check"}))
        assert [(r["_id"], r["state"]) for r in runs] == [(run_id, "succeeded")], runs
        (approval,) = runs[0]["approvals"]
        assert approval["by"]["platform"] == "teams"
        assert runs[0]["requested_by"]["user_id"] == "@demo:localhost"
    finally:
        client.close()

    code, output = stack.interrupt()
    assert code == 0, output
    assert "local stack: stopped" in output
    _assert_nothing_left(children)
    print(f"local stack up in {up_s:.1f} s; drill in {drill_s:.1f} s")


def test_ctrl_c_during_the_drill_stops_everything(
    stack_process: Callable[..., StackProcess],
) -> None:
    stack = stack_process("--drill", "--exit")
    stack.wait_for_line(
        lambda line: line.startswith("drill [1/"),
        within=UP_TIMEOUT_S,
        what="the drill's first step",
    )
    children = _descendants(stack.proc.pid)
    assert len(children) >= 4
    started = time.monotonic()
    code, output = stack.interrupt()
    stop_s = time.monotonic() - started
    assert code == 0, output
    assert "drill: stopped before it finished" in output, output
    assert "local stack: stopped" in output, output
    _assert_nothing_left(children)
    print(f"stopped in {stop_s:.1f} s during the drill")
