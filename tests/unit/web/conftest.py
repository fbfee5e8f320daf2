"""The web application with the incident routes, on in-memory stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bridge.config.core import ApiSettings
from bridge.incidents.memory_store import MemoryIncidentStore
from bridge.timeline.memory import MemoryTimelineStore
from bridge.web.server import add_incident_routes
from tests.support.fakes import FakeClock

TOKEN = "s3cret-api-token"
Client = TestClient[web.Request, web.Application]


@dataclass(frozen=True)
class WebEnv:
    clock: FakeClock
    incidents: MemoryIncidentStore
    timeline: MemoryTimelineStore


def build_app(env: WebEnv, token: str | None) -> web.Application:
    app = web.Application()
    api = ApiSettings(token=SecretStr(token) if token is not None else None)
    add_incident_routes(app, env.incidents, env.timeline, api, env.clock)
    return app


@pytest.fixture
def env() -> WebEnv:
    clock = FakeClock()
    return WebEnv(
        clock=clock, incidents=MemoryIncidentStore(), timeline=MemoryTimelineStore(clock=clock)
    )


ClientFactory = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture
def client_for(env: WebEnv) -> ClientFactory:
    """``async with client_for(token=...) as client``: the app served on loopback."""

    @asynccontextmanager
    async def serve(token: str | None = TOKEN) -> AsyncIterator[Client]:
        async with TestClient(TestServer(build_app(env, token))) as client:
            yield client

    return serve


AUTH = {"Authorization": f"Bearer {TOKEN}"}
