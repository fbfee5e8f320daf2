"""The daemon's HTTP server: one aiohttp application that adapters add routes to."""

from __future__ import annotations

from aiohttp import web

from bridge.metrics import BridgeMetrics
from bridge.web.health import Readiness, health_routes


def build_web_app(readiness: Readiness, metrics: BridgeMetrics) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.add_routes(health_routes(readiness, metrics))
    return app


async def start_site(
    app: web.Application, *, host: str, port: int, shutdown_timeout: float
) -> web.AppRunner:
    """Start serving; the returned runner's ``cleanup`` stops it gracefully."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful when configured as 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the web server is not listening")
