"""The README's first command, tried as a new user would: up, a round trip, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 120.0
ROUND_TRIP_S = 30.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


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
    synapse = re.search(r"Synapse\s+(http://127\.0\.0\.1:\d+)", output)
    page = re.search(r"Teams page\s+(http://127\.0\.0\.1:\d+)/", output)
    room = re.search(r"Matrix room\s+(!\S+)", output)
    login = re.search(r"Matrix login\s+@(\w+):\S+ / (\S+)", output)
    assert synapse, output
    assert page, output
    assert room, output
    assert login, output
    token = _call(
        "POST",
        f"{synapse.group(1)}/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": login.group(1)},
            "password": login.group(2),
        },
    )["access_token"]
    directory = _call("GET", f"{page.group(1)}/_emulator/api/directory")
    war_room = next(c for c in directory["conversations"] if "war room" in c["label"].lower())
    alice = directory["users"][0]
    sent = _call(
        "POST",
        f"{page.group(1)}/_emulator/api/messages",
        {"conversation": war_room["id"], "user": alice["id"], "text": "db primary is down"},
    )
    assert sent["status"] == 200
    _until(
        lambda: "db primary is down" in _matrix_texts(synapse.group(1), token, room.group(1)),
        "the Teams message in Matrix",
    )
    send = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room.group(1))}/send/m.room.message/r1"
    _call("PUT", synapse.group(1) + send, {"msgtype": "m.text", "body": "failing over"}, token)
    conversation = urllib.parse.quote(war_room["id"])

    def in_teams() -> bool:
        listing = _call(
            "GET", f"{page.group(1)}/_emulator/api/messages?conversation={conversation}"
        )
        return any("failing over" in m["text"] for m in listing["messages"])

    _until(in_teams, "the Matrix reply on the Teams page")


def test_local_stack_round_trip_and_clean_stop(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.localstack", "--state-dir", str(tmp_path / "stack")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    children: list[int] = []
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("  Teams page"):
                break
        output = "".join(lines)
        assert "local stack is up" in output, output
        bridge_url = re.search(r"bridge\s+(http://127\.0\.0\.1:\d+)", output)
        assert bridge_url, output
        with urllib.request.urlopen(f"{bridge_url.group(1)}/readyz", timeout=5) as response:
            assert response.status == 200
        children = _children(proc.pid)
        assert len(children) >= 4  # MongoDB, Synapse, the Teams emulator, the bridge
        _round_trip(output)

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if not proc.stdout.closed:
            proc.communicate(timeout=10)
    assert proc.returncode == 0, rest
    assert "local stack: stopped" in rest
    left = [pid for pid in children if _alive(pid)]
    if left:
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"processes left running: {left}")
