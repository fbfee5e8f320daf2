"""The README's first command: the local stack comes up, answers, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 120.0


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


def test_local_stack_starts_serves_and_stops_everything(tmp_path: Path) -> None:
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
            if line.startswith("  Matrix login"):
                break
        output = "".join(lines)
        assert "local stack is up" in output, output
        bridge_url = re.search(r"bridge\s+(http://127\.0\.0\.1:\d+)", output)
        synapse_url = re.search(r"Synapse\s+(http://127\.0\.0\.1:\d+)", output)
        assert bridge_url, output
        assert synapse_url, output
        assert "mongodb://127.0.0.1:" in output
        with urllib.request.urlopen(f"{bridge_url.group(1)}/readyz", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{synapse_url.group(1)}/health", timeout=5) as response:
            assert response.status == 200
        children = _children(proc.pid)
        assert len(children) >= 3  # MongoDB, Synapse, the bridge

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, rest
    assert "local stack: stopped" in rest
    left = [pid for pid in children if _alive(pid)]
    if left:
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"processes left running: {left}")
