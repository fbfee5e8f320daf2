"""The daemon's HTTP server: one aiohttp application that adapters add routes to."""

from __future__ import annotations

from aiohttp import web

from bridge.config.core import ApiSettings
from bridge.metrics import BridgeMetrics
from bridge.ports import Clock, IncidentStore, TimelineStore
from bridge.web.api import IncidentApi
from bridge.web.auth import ApiAuth
from bridge.web.health import Readiness, health_routes
from bridge.web.page import IncidentPages


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


def add_incident_routes(
    app: web.Application,
    incidents: IncidentStore,
    timeline: TimelineStore,
    api: ApiSettings,
    clock: Clock,
) -> None:
    """Mount the timeline API (``/api/v1/...``) and the incident pages (``/incidents/{id}``),
    guarded by ``api.token``; without a token they answer 503."""
    auth = ApiAuth.from_settings(api)
    app.add_routes(IncidentApi(incidents=incidents, timeline=timeline, auth=auth).routes())
    app.add_routes(
        IncidentPages(incidents=incidents, timeline=timeline, auth=auth, clock=clock).routes()
    )
