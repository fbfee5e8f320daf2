"""The connector client maps each answer onto the bridge's errors (real HTTP, loopback)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest
from aiohttp import web

from adapters.teams.connector import (
    ConnectorClient,
    ConnectorPermanentError,
    ConnectorRetryableError,
    parse_retry_after,
)
from adapters.teams.ids import TeamsConversationID
from bridge.web.server import bound_port
from tests.support.fakes import FakeClock
from tests.unit.teams.connector_fake import CHANNEL, TOKEN, FakeConnector, StaticTokens, running

THREAD = TeamsConversationID(f"{CHANNEL};messageid=1699999999999")
MESSAGE = {"type": "message", "text": "hi", "textFormat": "xml"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def fake() -> AsyncIterator[FakeConnector]:
    connector = FakeConnector(FakeClock())
    async with running(connector):
        yield connector


def client(
    session: aiohttp.ClientSession, tokens: StaticTokens | None = None, timeout_s: float = 5.0
) -> tuple[ConnectorClient, list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []
    return (
        ConnectorClient(
            session=session,
            tokens=tokens or StaticTokens(),
            timeout_s=timeout_s,
            observe=lambda op, outcome: seen.append((op, outcome)),
        ),
        seen,
    )


async def test_send_and_reply_reach_the_encoded_conversation(
    session: aiohttp.ClientSession, fake: FakeConnector
) -> None:
    connector, seen = client(session)
    first = await connector.send_to_conversation(fake.service_url, THREAD, MESSAGE)
    second = await connector.reply_to_activity(fake.service_url, CHANNEL, first, MESSAGE)
    assert first != second
    assert [(c.conversation_id, c.activity_id) for c in fake.calls] == [
        (THREAD, None),
        (CHANNEL, first),
    ]
    assert fake.calls[0].authorization == f"Bearer {TOKEN}"
    assert fake.calls[0].body == MESSAGE
    assert seen == [("send", "201"), ("reply", "201")]


async def test_update_and_delete(session: aiohttp.ClientSession, fake: FakeConnector) -> None:
    connector, _ = client(session)
    sent = await connector.send_to_conversation(fake.service_url, CHANNEL, MESSAGE)
    await connector.update_activity(fake.service_url, CHANNEL, sent, {**MESSAGE, "text": "new"})
    assert fake.messages[sent]["text"] == "new"
    assert fake.calls[-1].body == {**MESSAGE, "text": "new", "id": sent}
    await connector.delete_activity(fake.service_url, CHANNEL, sent)
    await connector.delete_activity(fake.service_url, CHANNEL, sent)  # already gone: fine
    assert sent not in fake.messages
    with pytest.raises(ConnectorPermanentError) as refused:
        await connector.update_activity(fake.service_url, CHANNEL, sent, MESSAGE)
    assert refused.value.status == 404


async def test_429_carries_retry_after(session: aiohttp.ClientSession, fake: FakeConnector) -> None:
    connector, _ = client(session)
    fake.fail_next(429, headers={"Retry-After": "3"})
    with pytest.raises(ConnectorRetryableError) as caught:
        await connector.send_to_conversation(fake.service_url, CHANNEL, MESSAGE)
    assert (caught.value.status, caught.value.retry_after, caught.value.ambiguous) == (
        429,
        3.0,
        False,
    )
    assert "TooManyRequests" not in str(caught.value)  # the code comes from the body
    assert "(E429)" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "create", "ambiguous"),
    [(412, True, False), (500, True, True), (502, True, True), (503, True, True), (504, True, True),
     (502, False, False)],
)  # fmt: skip
async def test_retryable_statuses(
    session: aiohttp.ClientSession, fake: FakeConnector, status: int, create: bool, ambiguous: bool
) -> None:
    connector, _ = client(session)
    sent = await connector.send_to_conversation(fake.service_url, CHANNEL, MESSAGE)
    fake.fail_next(status)
    call = (
        connector.send_to_conversation(fake.service_url, CHANNEL, MESSAGE)
        if create
        else connector.update_activity(fake.service_url, CHANNEL, sent, MESSAGE)
    )
    with pytest.raises(ConnectorRetryableError) as caught:
        await call
    assert caught.value.ambiguous is ambiguous
    assert caught.value.reason == f"http_{status}"


@pytest.mark.parametrize("status", [400, 403, 413])
async def test_permanent_statuses(
    session: aiohttp.ClientSession, fake: FakeConnector, status: int
) -> None:
    connector, _ = client(session)
    fake.fail_next(status)
    with pytest.raises(ConnectorPermanentError) as caught:
        await connector.send_to_conversation(fake.service_url, CHANNEL, MESSAGE)
    assert caught.value.status == status


async def test_a_refused_token_is_refreshed_once(
    session: aiohttp.ClientSession, fake: FakeConnector
) -> None:
    tokens = StaticTokens("stale", TOKEN)
    connector, _ = client(session, tokens)
    await connector.send_to_conversation(fake.service_url, CHANNEL, MESSAGE)
    assert tokens.invalidated == 1
    assert [c.authorization for c in fake.calls] == ["Bearer stale", f"Bearer {TOKEN}"]
    refused = StaticTokens("stale")
    connector, _ = client(session, refused)
    with pytest.raises(ConnectorPermanentError) as caught:
        await connector.send_to_conversation(fake.service_url, CHANNEL, MESSAGE)
    assert caught.value.status == 401
    assert len(fake.calls) == 4  # one more try with a fresh token, no further


async def test_a_timeout_on_create_is_ambiguous(
    session: aiohttp.ClientSession, fake: FakeConnector
) -> None:
    connector, seen = client(session, timeout_s=0.2)
    fake.fail_next(201, hold_s=1.0, commit=True)
    with pytest.raises(ConnectorRetryableError) as caught:
        await connector.send_to_conversation(fake.service_url, CHANNEL, MESSAGE)
    assert (caught.value.ambiguous, caught.value.reason) == (True, "timeout")
    assert seen == [("send", "timeout")]


async def test_a_refused_connection_is_not_ambiguous(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connector, _ = client(session)
    with pytest.raises(ConnectorRetryableError) as caught:
        await connector.send_to_conversation(f"http://127.0.0.1:{port}", CHANNEL, MESSAGE)
    assert (caught.value.ambiguous, caught.value.reason) == (False, "connect_error")


async def test_an_answer_without_an_id_is_ambiguous(session: aiohttp.ClientSession) -> None:
    async def empty(_: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v3/conversations/{c}/activities", empty)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        connector, _ = client(session)
        with pytest.raises(ConnectorRetryableError) as caught:
            await connector.send_to_conversation(
                f"http://127.0.0.1:{bound_port(runner)}", CHANNEL, MESSAGE
            )
        assert (caught.value.ambiguous, caught.value.reason) == (True, "no_id")
    finally:
        await runner.cleanup()


def test_retry_after_forms() -> None:
    now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("2.5", now) == 2.5
    assert parse_retry_after(" 7 ", now) == 7.0
    assert parse_retry_after("-3", now) == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("nan", now) is None
