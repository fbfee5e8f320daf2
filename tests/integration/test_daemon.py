"""The daemon as an operator meets it: a real process, real MongoDB, signals, exit codes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bridge import exitcodes
from devtools.servers import MongoServer, free_port

DEADLINE_S = 20.0


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[MongoServer]:
    """A MongoDB-protocol server of this test's own: the test stops and restarts it."""
    server = MongoServer(tmp_path / "mongo")
    server.start()
    yield server
    server.stop()


def _bridge(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _config(tmp_path: Path, mongo_uri: str, port: int, extra: str = "") -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        f"mongo:\n  uri: '{mongo_uri}'\n  database: daemon_test\n"
        f"  server_selection_timeout_s: 1\n{extra}"
        f"http:\n  host: 127.0.0.1\n  port: {port}\n"
        "readiness:\n  check_timeout_s: 1.5\nlogging:\n  format: json\n"
    )
    return path


async def _status(session: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with session.get(url) as response:
            await response.read()
            return response.status
    except aiohttp.ClientConnectionError:
        return None


async def _wait_status(session: aiohttp.ClientSession, url: str, want: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    last = None
    while time.monotonic() < deadline:
        last = await _status(session, url)
        if last == want:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{url} answered {last}, wanted {want} within {DEADLINE_S} s")


async def test_health_readiness_metrics_and_graceful_stop(
    tmp_path: Path, own_mongo: MongoServer
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _bridge(_config(tmp_path, own_mongo.uri, port))
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_status(session, f"{base}/healthz", 200)
            await _wait_status(session, f"{base}/readyz", 200)

            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
            assert "process_resident_memory_bytes" in text
            assert "bridge_timeline_append_seconds_bucket" in text
            assert 'bridge_ready{dependency="mongodb"} 1.0' in text

            own_mongo.stop()
            await _wait_status(session, f"{base}/readyz", 503)
            async with session.get(f"{base}/readyz") as response:
                body = await response.json()
            assert body["ready"] is False
            assert body["checks"]["mongodb"] != "ok"
            assert await _status(session, f"{base}/healthz") == 200  # alive, just not ready

            own_mongo.start()
            await _wait_status(session, f"{base}/readyz", 200)

        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(proc.wait, 10)
        elapsed = time.monotonic() - started
        assert code == exitcodes.OK
        assert elapsed < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=10)
    assert "Traceback" not in stderr
    assert '"event": "bridge_stopped"' in stderr


def test_invalid_settings_exit_78_naming_each_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("mongo:\n  urii: x\nhttp:\n  port: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("BRIDGE")},
    )
    assert result.returncode == exitcodes.CONFIG
    assert "mongo.uri: required setting is missing" in result.stderr
    assert "mongo.urii: unknown setting" in result.stderr
    assert "http.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_reports_errors_and_accepts_the_example(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "config.example.yaml"
    ok = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    secret = tmp_path / "missing-secret"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"mongo:\n  uri_file: {secret}\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == exitcodes.CONFIG
    assert f"mongo.uri_file: cannot read {secret}" in result.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "bridge", "no-such-command"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert usage.returncode == exitcodes.USAGE


def test_unreachable_mongodb_exits_69_with_one_line(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    secret = "canary-password-69"
    config = _config(
        tmp_path,
        f"mongodb://bridge:{secret}@127.0.0.1:{dead}/?directConnection=true",
        free_port(),
        extra="  startup_timeout_s: 0.5\n",
    )
    proc = _bridge(config)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == exitcodes.UNAVAILABLE
    assert "cannot reach MongoDB" in stderr
    assert "Traceback" not in stderr
    assert secret not in stderr
    assert len([line for line in stderr.splitlines() if "startup_failed" in line]) == 1
