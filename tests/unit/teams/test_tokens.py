"""Outbound tokens: cached until shortly before expiry, one shared refresh, safe sources."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.teams.tokens import (
    JWT_BEARER_ASSERTION,
    CachingTokenProvider,
    ClientCredentialsTokenSource,
    IssuedToken,
    MsalTokenSource,
    TokenRefusedError,
    TokenUnavailableError,
    msal_configuration,
    token_provider_for,
)
from tests.support.fakes import FakeClock
from tests.unit.teams import support as s


class CountingSource:
    def __init__(self, lifetime_s: float = 3600, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.lifetime_s = lifetime_s
        self.delay_s = delay_s

    async def fetch(self) -> IssuedToken:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return IssuedToken(value=f"token-{self.calls}", expires_in_s=self.lifetime_s)


def provider(source: Any, clock: FakeClock, timeout_s: float = 5) -> CachingTokenProvider:
    return CachingTokenProvider(source, clock=clock, refresh_margin_s=300, timeout_s=timeout_s)


async def test_a_token_is_reused_until_shortly_before_it_expires() -> None:
    clock, source = FakeClock(), CountingSource()
    tokens = provider(source, clock)
    assert await tokens.token() == "token-1"
    clock.advance(3000)
    assert await tokens.token() == "token-1"
    clock.advance(301)  # inside the 300 s margin
    assert await tokens.token() == "token-2"
    assert source.calls == 2


async def test_concurrent_callers_share_one_refresh() -> None:
    source = CountingSource(delay_s=0.05)
    tokens = provider(source, FakeClock())
    values = await asyncio.gather(*(tokens.token() for _ in range(25)))
    assert set(values) == {"token-1"}
    assert source.calls == 1


async def test_invalidate_forces_a_new_token() -> None:
    source = CountingSource()
    tokens = provider(source, FakeClock())
    await tokens.token()
    tokens.invalidate()
    assert await tokens.token() == "token-2"


async def test_short_lived_tokens_are_renewed_half_way() -> None:
    clock, source = FakeClock(), CountingSource(lifetime_s=120)
    tokens = provider(source, clock)
    await tokens.token()
    clock.advance(59)
    assert await tokens.token() == "token-1"
    clock.advance(2)
    assert await tokens.token() == "token-2"


async def test_a_hanging_authority_is_a_bounded_wait() -> None:
    tokens = provider(CountingSource(delay_s=5), FakeClock(), timeout_s=0.05)
    with pytest.raises(TokenUnavailableError):
        await tokens.token()


# -- the plain client for a loopback authority (an emulator) ---------------------------


class Authority:
    def __init__(self) -> None:
        self.forms: list[dict[str, str]] = []
        self.status = 200
        self.body: Any = {"token_type": "Bearer", "expires_in": 3599, "access_token": "abc.def"}

    async def token(self, request: web.Request) -> web.Response:
        self.forms.append({k: str(v) for k, v in (await request.post()).items()})
        if self.status != 200:
            return web.json_response({"error": "invalid_client"}, status=self.status)
        return web.json_response(self.body)


@pytest.fixture
async def authority() -> AsyncIterator[tuple[Authority, str]]:
    fake = Authority()
    app = web.Application()
    app.router.add_post(f"/{s.TENANT}/oauth2/v2.0/token", fake.token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


async def test_client_secret_against_a_loopback_authority(
    authority: tuple[Authority, str],
) -> None:
    fake, url = authority
    settings = s.teams_settings(authority=url)
    async with aiohttp.ClientSession() as session:
        tokens = token_provider_for(settings, session=session, clock=FakeClock())
        assert await tokens.token() == "abc.def"
        assert await tokens.token() == "abc.def"
    assert fake.forms == [
        {
            "grant_type": "client_credentials",
            "client_id": s.APP_ID,
            "scope": "https://api.botframework.com/.default",
            "client_secret": "s3cret-value",
        }
    ]


async def test_workload_identity_sends_the_projected_token(
    authority: tuple[Authority, str], tmp_path: Path
) -> None:
    fake, url = authority
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("projected.service.account\n")
    settings = s.teams_settings(
        authority=url,
        auth={"type": "workload_identity", "federated_token_path": str(token_file)},
    )
    async with aiohttp.ClientSession() as session:
        source = ClientCredentialsTokenSource(settings, session=session)
        await source.fetch()
    (form,) = fake.forms
    assert form["client_assertion_type"] == JWT_BEARER_ASSERTION
    assert form["client_assertion"] == "projected.service.account"
    assert "client_secret" not in form


async def test_refused_credentials_and_server_errors(authority: tuple[Authority, str]) -> None:
    fake, url = authority
    async with aiohttp.ClientSession() as session:
        source = ClientCredentialsTokenSource(s.teams_settings(authority=url), session=session)
        fake.status = 401
        with pytest.raises(TokenRefusedError):
            await source.fetch()
        fake.status = 502
        with pytest.raises(TokenUnavailableError):
            await source.fetch()
        fake.status = 200
        fake.body = {"expires_in": 10}
        with pytest.raises(TokenUnavailableError):
            await source.fetch()


async def test_the_plain_client_refuses_a_remote_authority() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ValueError, match="loopback"):
            ClientCredentialsTokenSource(s.teams_settings(), session=session)


# -- production: the SDK's MSAL auth ----------------------------------------------------


def test_msal_configuration_maps_every_auth_type(tmp_path: Path) -> None:
    secret = msal_configuration(s.teams_settings())
    assert secret.CLIENT_ID == s.APP_ID
    assert secret.CLIENT_SECRET == "s3cret-value"
    authority = secret.AUTHORITY
    assert authority == f"https://login.microsoftonline.com/{s.TENANT}"
    assert secret.SCOPES == ["https://api.botframework.com/.default"]
    cert = msal_configuration(
        s.teams_settings(
            auth={"type": "certificate", "certificate_path": "/etc/bot/cert.pfx", "send_x5c": True}
        )
    )
    assert (cert.AUTH_TYPE.value, cert.CERT_PFX_FILE, cert.SEND_X5C) == (
        "certificate",
        "/etc/bot/cert.pfx",
        True,
    )
    assert cert.CLIENT_SECRET is None
    workload = msal_configuration(
        s.teams_settings(
            auth={"type": "workload_identity", "federated_token_path": str(tmp_path / "t")}
        )
    )
    assert workload.AUTH_TYPE.value == "WorkloadIdentity"
    token_file = workload.FEDERATED_TOKEN_FILE
    assert token_file == str(tmp_path / "t")


async def test_a_microsoft_authority_uses_msal_without_calling_out_at_construction() -> None:
    async with aiohttp.ClientSession() as session:
        tokens = token_provider_for(s.teams_settings(), session=session, clock=FakeClock())
    assert isinstance(tokens._source, MsalTokenSource)
