"""Shared pieces for tests that talk to the Teams emulator.

- ``FakeBot``: a tiny bot endpoint on loopback that records what the channel posts.
- ``validate_channel_token``: a reference check of a channel token, all of Bot
  Framework's rules (Bearer, RS256 from the published keys, issuer, audience, time
  with 5 minutes of skew, endorsement for the activity's channel, serviceurl claim).
- ``fetch_access_token``: client credentials against the emulator's token endpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
import jwt
from aiohttp import web

from devtools.teams_emulator import TeamsEmulator

APP_ID: Final = "6b0c0f2e-1a3d-4a8e-9f61-2f4c3e5d7a90"
APP_PASSWORD: Final = "emulator-test-secret"
TENANT_ID: Final = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CONNECTOR_SCOPE: Final = "https://api.botframework.com/.default"
BOT_FRAMEWORK_ISSUER: Final = "https://api.botframework.com"
WAIT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Received:
    headers: Mapping[str, str]
    activity: dict[str, Any]


class FakeBot:
    """A bot's messaging endpoint that answers ``status`` after ``delay_s`` and records."""

    def __init__(self, *, status: int = 200, delay_s: float = 0.0) -> None:
        self.status = status
        self.delay_s = delay_s
        self.received: list[Received] = []
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(headers=dict(request.headers), activity=await request.json()))
        self._arrived.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.json_response({}, status=self.status)

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/api/messages", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/api/messages"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, timeout_s: float = WAIT_S) -> list[Received]:
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.received


async def fetch_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.json()


async def fetch_jwks(session: aiohttp.ClientSession, emulator: TeamsEmulator) -> dict[str, Any]:
    """The channel's keys, found the way a bot finds them: metadata, then ``jwks_uri``."""
    metadata = await fetch_json(session, emulator.openid_metadata_url)
    jwks: dict[str, Any] = await fetch_json(session, metadata["jwks_uri"])
    return jwks


def validate_channel_token(
    authorization: str | None,
    activity: Mapping[str, Any],
    *,
    jwks: Mapping[str, Any],
    app_id: str,
) -> dict[str, Any]:
    """The claims of a valid channel token; raises ``jwt.PyJWTError`` or ``ValueError``."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme != "Bearer" or not token:
        raise ValueError("not a Bearer token")
    header = jwt.get_unverified_header(token)
    published = {k["kid"]: k for k in jwks["keys"]}
    jwk = published.get(header.get("kid", ""))
    if jwk is None:
        raise ValueError("unknown key id")
    if activity.get("channelId") not in jwk.get("endorsements", []):
        raise ValueError("key not endorsed for the channel")
    claims: dict[str, Any] = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=["RS256"],
        audience=app_id,
        issuer=BOT_FRAMEWORK_ISSUER,
        leeway=300,
        options={"require": ["exp", "nbf", "iss", "aud", "serviceurl"]},
    )
    if claims["serviceurl"] != activity.get("serviceUrl"):
        raise ValueError("serviceurl claim does not match the activity")
    return claims


async def fetch_access_token(
    session: aiohttp.ClientSession,
    emulator: TeamsEmulator,
    *,
    secret: str = APP_PASSWORD,
    tenant: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """(status, body) of a client-credentials request for the connector scope."""
    url = f"{emulator.token_authority}/{tenant or emulator.tenant_id}/oauth2/v2.0/token"
    form = {
        "grant_type": "client_credentials",
        "client_id": emulator.app_id,
        "client_secret": secret,
        "scope": CONNECTOR_SCOPE,
    }
    async with session.post(url, data=form) as response:
        return response.status, await response.json()
