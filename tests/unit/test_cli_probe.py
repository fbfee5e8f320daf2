"""``incident-bridge probe``: the container health check, against a real HTTP server."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bridge import exitcodes
from bridge.cli import PROBE_UNHEALTHY, main

DEADLINE_S = 30.0


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A daemon stand-in on loopback: /readyz ready, /draining 503, /stuck never answers
    (until the test ends)."""
    release = asyncio.Event()

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def draining(_request: web.Request) -> web.Response:
        return web.Response(status=503, text="draining")

    async def stuck(_request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), DEADLINE_S)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_get("/draining", draining)
    app.router.add_get("/stuck", stuck)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        release.set()
        await runner.cleanup()


async def probe(*args: str) -> int:
    """The command in a thread: it blocks, and the server shares this event loop."""
    return await asyncio.wait_for(asyncio.to_thread(main, ["probe", *args]), DEADLINE_S)


async def test_ready_daemon_is_healthy(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await probe("--url", f"{server}/readyz") == exitcodes.OK
    assert capsys.readouterr().out == f"{server}/readyz: 200\n"


async def test_not_ready_daemon_is_unhealthy(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await probe("--url", f"{server}/draining") == PROBE_UNHEALTHY == 1
    assert "answered 503" in capsys.readouterr().err


async def test_silent_daemon_is_unhealthy_after_the_timeout(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await probe("--url", f"{server}/stuck", "--timeout", "0.3") == PROBE_UNHEALTHY
    assert loop.time() - started < 10.0
    assert "unreachable" in capsys.readouterr().err


async def test_absent_daemon_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert await probe("--url", f"http://127.0.0.1:{port}/readyz") == PROBE_UNHEALTHY
    assert "unreachable" in capsys.readouterr().err


async def test_proxy_settings_are_ignored(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert await probe("--url", f"{server}/readyz") == exitcodes.OK


@pytest.mark.parametrize(
    "args",
    [
        ["--url", "file:///etc/passwd"],
        ["--url", "ftp://127.0.0.1/readyz"],
        ["--timeout", "0"],
        ["--timeout", "nan"],
        ["--timeout", "soon"],
        ["--unknown"],
    ],
)
def test_bad_usage_is_a_usage_error(args: list[str]) -> None:
    assert main(["probe", *args]) == exitcodes.USAGE


def test_probe_is_listed_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == exitcodes.OK
    assert "probe" in capsys.readouterr().out


def test_probe_does_not_load_the_adapters() -> None:
    """A health check runs every few seconds: it must not import every chat SDK."""
    code = (
        "import sys\n"
        "from bridge.cli import main\n"
        "main(['probe', '--url', 'http://127.0.0.1:9/readyz', '--timeout', '1'])\n"
        "print(sorted(m for m in ('bridge.app', 'adapters', 'mautrix') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
