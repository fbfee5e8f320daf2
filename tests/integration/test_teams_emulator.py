"""The Teams emulator is faithful: tokens, the connector, limits, faults, the channel, the page."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest

from devtools.teams_emulator import (
    Algorithm,
    Bucket,
    DeliveryOutcome,
    EmulatorKeys,
    FaultKind,
    FileUpload,
    InlineImage,
    ManualClock,
    Operation,
    RateLimitPolicy,
    TeamsEmulator,
)
from tests.integration.teams_fixtures import (
    APP_ID,
    APP_PASSWORD,
    CONNECTOR_SCOPE,
    TENANT_ID,
    FakeBot,
    fetch_access_token,
    fetch_json,
    fetch_jwks,
    validate_channel_token,
)

ROOT = Path(__file__).resolve().parents[2]
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")


@pytest.fixture(scope="session")
def emulator_keys() -> EmulatorKeys:
    return EmulatorKeys.generate(datetime.now(UTC))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


@pytest.fixture
async def bot() -> AsyncIterator[FakeBot]:
    async with FakeBot() as fake:
        yield fake


@pytest.fixture
async def emu(emulator_keys: EmulatorKeys, bot: FakeBot) -> AsyncIterator[TeamsEmulator]:
    async with TeamsEmulator(
        APP_ID, APP_PASSWORD, TENANT_ID, bot_endpoint=bot.url, keys=emulator_keys
    ) as emulator:
        yield emulator


async def _token(session: aiohttp.ClientSession, emu: TeamsEmulator) -> str:
    status, body = await fetch_access_token(session, emu)
    assert status == 200, body
    return str(body["access_token"])


async def _call(
    session: aiohttp.ClientSession,
    emu: TeamsEmulator,
    method: str,
    path: str,
    *,
    token: str | None,
    json: Any = None,
    data: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with session.request(
        method, emu.service_url + path, json=json, data=data, headers=headers
    ) as response:
        text = await response.text()
        body = (
            await response.json() if text and response.content_type == "application/json" else text
        )
        return response.status, body, dict(response.headers)


async def _status(
    session: aiohttp.ClientSession,
    emu: TeamsEmulator,
    method: str,
    path: str,
    *,
    token: str | None,
    json: Any = None,
) -> int:
    return (await _call(session, emu, method, path, token=token, json=json))[0]


def _validates(authorization: str, activity: dict[str, Any], jwks: dict[str, Any]) -> bool:
    try:
        validate_channel_token(authorization, activity, jwks=jwks, app_id=APP_ID)
    except (jwt.PyJWTError, ValueError):
        return False
    return True


def _message(text: str) -> dict[str, Any]:
    return {"type": "message", "text": text}


# -- keys and tokens ----------------------------------------------------------------


async def test_a_channel_token_validates_against_the_published_keys(
    emu: TeamsEmulator, session: aiohttp.ClientSession
) -> None:
    metadata = await fetch_json(session, emu.openid_metadata_url)
    assert metadata["issuer"] == "https://api.botframework.com"
    assert metadata["jwks_uri"] == emu.jwks_url
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
    assert metadata["token_endpoint_auth_signing_alg_values_supported"] == ["RS256"]
    jwks = await fetch_jwks(session, emu)
    for key in jwks["keys"]:
        assert {"kid", "kty", "n", "e", "use", "x5t", "x5c", "endorsements"} <= key.keys()
        assert (key["kty"], key["use"]) == ("RSA", "sig")
    signing = next(k for k in jwks["keys"] if "msteams" in k["endorsements"])
    assert signing["endorsements"] == ["msteams"]

    token = emu.mint_token()
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"]) == ("RS256", signing["kid"])
    activity = {"channelId": "msteams", "serviceUrl": emu.service_url}
    claims = validate_channel_token(f"Bearer {token}", activity, jwks=jwks, app_id=APP_ID)
    assert claims["iss"] == emu.issuer == "https://api.botframework.com"
    assert claims["aud"] == APP_ID
    assert claims["serviceurl"] == emu.service_url
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["nbf"] <= claims["iat"]


async def test_every_forged_channel_token_fails_validation(
    emu: TeamsEmulator, session: aiohttp.ClientSession
) -> None:
    jwks = await fetch_jwks(session, emu)
    activity = {"channelId": "msteams", "serviceUrl": emu.service_url}
    forged = emu.forged_tokens(emu.service_url)
    assert {
        "alg_none",
        "hs256_public_key",
        "wrong_issuer",
        "wrong_audience",
        "expired",
        "not_yet_valid",
        "unknown_kid",
        "foreign_key",
        "foreign_key_published_kid",
        "unendorsed_key",
        "service_url_mismatch",
        "no_service_url",
        "no_expiry",
    } <= forged.keys()
    accepted = [n for n, token in forged.items() if _validates(f"Bearer {token}", activity, jwks)]
    assert accepted == []
    assert jwt.get_unverified_header(forged["alg_none"])["alg"] == "none"
    assert forged["alg_none"].endswith(".")
    hs256 = forged["hs256_public_key"]
    assert jwt.decode(hs256, options={"verify_signature": False})["aud"] == APP_ID
    # Sanity: the same validator accepts a genuine token, and a rotated key is published.
    new_key = emu.rotate_channel_key()
    rotated = await fetch_jwks(session, emu)
    assert new_key.kid in {k["kid"] for k in rotated["keys"]}
    token = emu.mint_token()
    assert jwt.get_unverified_header(token)["kid"] == new_key.kid
    validate_channel_token(f"Bearer {token}", activity, jwks=rotated, app_id=APP_ID)


async def test_the_token_endpoint_issues_connector_tokens_and_refuses_bad_credentials(
    emu: TeamsEmulator, session: aiohttp.ClientSession
) -> None:
    status, body = await fetch_access_token(session, emu)
    assert status == 200
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 3600)
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://api.botframework.com"
    assert claims["appid"] == claims["azp"] == APP_ID
    assert claims["iss"] == f"https://sts.windows.net/{TENANT_ID}/"
    assert claims["exp"] - claims["iat"] == 3600
    # The token's signature checks out against Entra's published keys.
    discovery = await fetch_json(
        session, f"{emu.token_authority}/{TENANT_ID}/v2.0/.well-known/openid-configuration"
    )
    assert discovery["token_endpoint"] == emu.token_endpoint
    entra_keys = await fetch_json(session, discovery["jwks_uri"])
    jwt.decode(
        body["access_token"],
        jwt.PyJWK(entra_keys["keys"][0]).key,
        algorithms=["RS256"],
        audience="https://api.botframework.com",
    )

    status, body = await fetch_access_token(session, emu, tenant="botframework.com")
    assert status == 200
    status, body = await fetch_access_token(session, emu, secret="wrong")
    assert (status, body["error"], body["error_codes"]) == (401, "invalid_client", [7000215])
    status, body = await fetch_access_token(session, emu, tenant="contoso.example")
    assert (status, body["error"]) == (400, "invalid_request")

    url = emu.token_endpoint
    form = {
        "grant_type": "client_credentials",
        "client_id": APP_ID,
        "client_secret": APP_PASSWORD,
        "scope": CONNECTOR_SCOPE,
    }
    for change, expected in (
        ({"client_id": "someone-else"}, (400, "unauthorized_client")),
        ({"scope": "https://management.azure.com/.default"}, (400, "invalid_scope")),
        ({"grant_type": "password"}, (400, "unsupported_grant_type")),
    ):
        async with session.post(url, data={**form, **change}) as response:
            assert (response.status, (await response.json())["error"]) == expected
    basic = {"Authorization": aiohttp.encode_basic_auth(APP_ID, APP_PASSWORD)}
    without_secret = {k: v for k, v in form.items() if k != "client_secret"}
    async with session.post(url, data=without_secret, headers=basic) as response:
        assert response.status == 200
    assertion = {
        **without_secret,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": emu.mint_workload_token(),
    }
    async with session.post(url, data=assertion) as response:
        assert response.status == 200
    assertion["client_assertion"] = emu.mint_workload_token(subject="system:serviceaccount:x:y")
    async with session.post(url, data=assertion) as response:
        assert (response.status, (await response.json())["error"]) == (401, "invalid_client")
    recorded = emu.token_calls
    assert all(r.body is None or r.body.get("client_secret", "***") == "***" for r in recorded)
    assert [r.status for r in recorded] == [200, 200, 401, 400, 400, 400, 400, 200, 200, 401]


async def test_connector_calls_need_a_valid_access_token(
    emulator_keys: EmulatorKeys, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    async with TeamsEmulator(
        APP_ID, APP_PASSWORD, TENANT_ID, keys=emulator_keys, clock=clock
    ) as emu:
        channel = emu.add_channel("Operations")
        path = f"v3/conversations/{channel.conversation_id}/activities"
        token = await _token(session, emu)
        for bad in (
            None,
            "not-a-jwt",
            emu.mint_token(),
            emu.mint_token(audience="https://api.botframework.com"),
        ):
            status, body, _ = await _call(session, emu, "POST", path, token=bad, json=_message("x"))
            assert status == 401
            assert body == {"message": "Authorization has been denied for this request."}
        status, _, _ = await _call(session, emu, "POST", path, token=token, json=_message("ok"))
        assert status == 201
        clock.advance(3600 + 301)  # past expiry and the 5-minute skew
        status, _, _ = await _call(session, emu, "POST", path, token=token, json=_message("late"))
        assert status == 401
        reasons = [r.auth.reason if r.auth else "?" for r in emu.connector_calls]
        assert reasons == ["missing", "malformed", "unknown_kid", "unknown_kid", None, "expired"]
        assert [r.auth.valid for r in emu.connector_calls if r.auth] == [False] * 4 + [True, False]
        assert [m.text for m in emu.messages(channel)] == ["ok"]


# -- the connector --------------------------------------------------------------------


async def test_connector_operations_change_the_world_and_are_recorded(
    emu: TeamsEmulator, session: aiohttp.ClientSession
) -> None:
    alice = emu.add_user("Alice Ops")
    bob = emu.add_user("Bob SRE")
    channel = emu.add_channel("Operations", "Incidents")
    token = await _token(session, emu)

    status, created, _ = await _call(
        session,
        emu,
        "POST",
        "v3/conversations",
        token=token,
        json={
            "isGroup": True,
            "channelData": {"channel": {"id": channel.conversation_id}},
            "activity": _message("**Incident 42** opened"),
            "tenantId": TENANT_ID,
        },
    )
    assert status == 201
    root = created["activityId"]
    assert re.fullmatch(r"\d{13}", root)
    assert created["id"] == f"{channel.conversation_id};messageid={root}"

    thread = quote(created["id"], safe="")  # percent-encoded, as most clients send it
    status, sent, _ = await _call(
        session,
        emu,
        "POST",
        f"v3/conversations/{thread}/activities",
        token=token,
        json=_message("first update"),
    )
    assert status == 201
    status, replied, _ = await _call(
        session,
        emu,
        "POST",
        f"v3/conversations/{channel.conversation_id}/activities/{sent['id']}",
        token=token,
        json=_message("reply"),
    )
    assert status == 201
    status, updated, _ = await _call(
        session,
        emu,
        "PUT",
        f"v3/conversations/{created['id']}/activities/{sent['id']}",
        token=token,
        json=_message("first update, edited"),
    )
    assert (status, updated) == (200, {"id": sent["id"]})
    status, _, _ = await _call(
        session,
        emu,
        "DELETE",
        f"v3/conversations/{created['id']}/activities/{replied['id']}",
        token=token,
    )
    assert status == 200
    status, _, _ = await _call(
        session,
        emu,
        "DELETE",
        f"v3/conversations/{created['id']}/activities/{replied['id']}",
        token=token,
    )
    assert status == 404

    thread_messages = emu.messages(created["id"])
    assert [m.activity_id for m in thread_messages] == [root, sent["id"], replied["id"]]
    assert all(m.from_bot and m.sender_id == f"28:{APP_ID}" for m in thread_messages)
    assert {m.thread_root for m in thread_messages} == {root}
    assert thread_messages[1].text == "first update, edited"
    assert thread_messages[1].edited_at is not None
    assert thread_messages[1].edit_count == 1
    assert thread_messages[2].deleted
    assert thread_messages[2].reply_to_id == sent["id"]

    status, members, _ = await _call(
        session, emu, "GET", f"v3/conversations/{channel.conversation_id}/members", token=token
    )
    assert status == 200
    assert [m["id"] for m in members] == [alice.account_id, bob.account_id]
    assert members[0]["aadObjectId"] == alice.aad_object_id
    assert members[0]["tenantId"] == TENANT_ID
    status, member, _ = await _call(
        session,
        emu,
        "GET",
        f"v3/conversations/{channel.conversation_id}/members/{bob.aad_object_id}",
        token=token,
    )
    assert (status, member["name"]) == (200, "Bob SRE")
    status, missing, _ = await _call(
        session,
        emu,
        "GET",
        f"v3/conversations/{channel.conversation_id}/members/29:nobody",
        token=token,
    )
    assert (status, missing["error"]["code"]) == (404, "MemberNotFoundInConversation")

    # A personal chat is created once; group chats cannot be created by a bot.
    personal = {"isGroup": False, "members": [{"id": alice.account_id}], "tenantId": TENANT_ID}
    first = await _call(session, emu, "POST", "v3/conversations", token=token, json=personal)
    again = await _call(session, emu, "POST", "v3/conversations", token=token, json=personal)
    assert first[0] == again[0] == 201
    assert first[1]["id"] == again[1]["id"]
    assert first[1]["id"].startswith("a:")
    group = {"isGroup": True, "members": [{"id": alice.account_id}, {"id": bob.account_id}]}
    assert await _status(session, emu, "POST", "v3/conversations", token=token, json=group) == 400

    # Limits of the service: size, roster, unknown conversations, the user's own messages.
    big = _message("x" * (100 * 1024))
    status, too_big, _ = await _call(
        session, emu, "POST", f"v3/conversations/{created['id']}/activities", token=token, json=big
    )
    assert (status, too_big["error"]["code"]) == (413, "MessageSizeTooBig")
    chat = emu.add_chat([alice, bob], topic="war room")
    emu.directory.set_bot_installed(chat, installed=False)
    status, refused, _ = await _call(
        session,
        emu,
        "POST",
        f"v3/conversations/{chat.conversation_id}/activities",
        token=token,
        json=_message("hi"),
    )
    assert (status, refused["error"]["code"]) == (403, "BotNotInConversationRoster")
    status, _, _ = await _call(
        session,
        emu,
        "POST",
        "v3/conversations/19:unknown@thread.v2/activities",
        token=token,
        json=_message("hi"),
    )
    assert status == 404

    assert [r.operation for r in emu.connector_calls[:6]] == [
        Operation.CREATE_CONVERSATION,
        Operation.SEND_TO_CONVERSATION,
        Operation.REPLY_TO_ACTIVITY,
        Operation.UPDATE_ACTIVITY,
        Operation.DELETE_ACTIVITY,
        Operation.DELETE_ACTIVITY,
    ]
    second = emu.connector_calls[1]
    assert second.conversation_id == created["id"]
    assert second.body == _message("first update")
    assert second.status == 201
    assert second.auth is not None
    assert second.auth.valid
    assert second.headers["Content-Type"].startswith("application/json")


# -- rate limits ------------------------------------------------------------------------


async def test_the_eighth_call_in_a_second_gets_429_with_retry_after(
    emulator_keys: EmulatorKeys, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    async with TeamsEmulator(
        APP_ID, APP_PASSWORD, TENANT_ID, keys=emulator_keys, clock=clock
    ) as emu:
        chat = emu.add_chat([emu.add_user("Alice Ops")], personal=True)
        path = f"v3/conversations/{chat.conversation_id}/activities"
        token = await _token(session, emu)
        statuses = [
            (await _call(session, emu, "POST", path, token=token, json=_message(str(i))))[0]
            for i in range(8)
        ]
        assert statuses == [201] * 7 + [429]
        _, body, headers = await _call(
            session, emu, "POST", path, token=token, json=_message("again")
        )
        assert headers["Retry-After"] == "1"
        assert body["error"]["code"] == "TooManyRequests"
        assert [(v.window.label, v.retry_after_s, v.key) for v in emu.violations] == [
            ("7/1s", 1, chat.conversation_id),
            ("7/1s", 1, chat.conversation_id),
        ]
        clock.advance(1.0)
        assert await _status(session, emu, "POST", path, token=token, json=_message("later")) == 201
        # One more within two seconds of the first seven breaks 8 per 2 s.
        status, _, headers = await _call(
            session, emu, "POST", path, token=token, json=_message("x")
        )
        assert (status, headers["Retry-After"], emu.violations[-1].window.label) == (
            429,
            "1",
            "8/2s",
        )
        assert emu.peak_calls(1.0) == 7
        assert emu.peak_calls(2.0, conversation=chat) == 8
        assert emu.peak_calls(1.0, bucket=Bucket.READ) == 0
        assert emu.violations[-1].bucket is Bucket.SEND
        assert len(emu.messages(chat)) == 8


async def test_the_sixty_first_call_in_thirty_seconds_gets_429(
    emulator_keys: EmulatorKeys, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    async with TeamsEmulator(
        APP_ID, APP_PASSWORD, TENANT_ID, keys=emulator_keys, clock=clock
    ) as emu:
        channel = emu.add_channel("Operations")
        path = f"v3/conversations/{channel.conversation_id}/activities"
        token = await _token(session, emu)
        for i in range(60):
            status, _, _ = await _call(
                session, emu, "POST", path, token=token, json=_message(str(i))
            )
            assert status == 201, i
            clock.advance(0.45)
        status, _, headers = await _call(
            session, emu, "POST", path, token=token, json=_message("61")
        )
        assert (status, headers["Retry-After"]) == (429, "3")  # the first call leaves at 30 s
        assert [v.window.label for v in emu.violations] == ["60/30s"]
        clock.advance(3.0)
        assert await _status(session, emu, "POST", path, token=token, json=_message("62")) == 201


async def test_a_tenant_gets_fifty_calls_a_second(
    emulator_keys: EmulatorKeys, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    async with TeamsEmulator(
        APP_ID, APP_PASSWORD, TENANT_ID, keys=emulator_keys, clock=clock
    ) as emu:
        users = [emu.add_user(f"User {i}") for i in range(8)]
        chats = [emu.add_chat([u], personal=True) for u in users]
        token = await _token(session, emu)
        statuses = []
        for i in range(51):
            chat = chats[i % len(chats)]
            path = f"v3/conversations/{chat.conversation_id}/activities"
            statuses.append(
                (await _call(session, emu, "POST", path, token=token, json=_message(str(i))))[0]
            )
        assert statuses == [201] * 50 + [429]
        assert (emu.violations[0].scope.value, emu.violations[0].key) == ("tenant", TENANT_ID)
    async with TeamsEmulator(
        APP_ID,
        APP_PASSWORD,
        TENANT_ID,
        keys=emulator_keys,
        clock=clock,
        rate_limits=RateLimitPolicy.off(),
    ) as unlimited:
        chat = unlimited.add_chat([unlimited.add_user("Alice Ops")], personal=True)
        token = await _token(session, unlimited)
        path = f"v3/conversations/{chat.conversation_id}/activities"
        for i in range(20):
            assert (
                await _call(session, unlimited, "POST", path, token=token, json=_message(str(i)))
            )[0] == 201


# -- faults ---------------------------------------------------------------------------------


async def test_faults_fire_for_matching_calls_the_requested_number_of_times(
    emu: TeamsEmulator, session: aiohttp.ClientSession
) -> None:
    channel = emu.add_channel("Operations")
    emu.add_user("Alice Ops")
    token = await _token(session, emu)
    send = f"v3/conversations/{channel.conversation_id}/activities"
    members = f"v3/conversations/{channel.conversation_id}/members"
    emu.faults.inject(
        method="POST", path=r"/v3/conversations/[^/]+/activities$", status=503, times=2
    )
    emu.faults.inject(method="POST", path=r"/activities$", status=429, retry_after_s=7)

    assert await _status(session, emu, "GET", members, token=token) == 200
    first = await _call(session, emu, "POST", send, token=token, json=_message("a"))
    second = await _call(session, emu, "POST", send, token=token, json=_message("b"))
    third = await _call(session, emu, "POST", send, token=token, json=_message("c"))
    fourth = await _call(session, emu, "POST", send, token=token, json=_message("d"))
    assert [first[0], second[0], third[0], fourth[0]] == [503, 503, 429, 201]
    assert third[2]["Retry-After"] == "7"
    assert "Retry-After" not in first[2]
    assert [m.text for m in emu.messages(channel)] == ["d"]
    assert [f.call_seq for f in emu.faults.fired] == [r.seq for r in emu.calls if r.fault]
    assert emu.faults.armed == ()

    # The ambiguous create: a 5xx (or a timeout) although the post was made.
    emu.faults.inject(method="POST", path=r"/v3/conversations$", status=502, committed=True)
    emu.faults.inject(method="POST", path=r"/v3/conversations$", status=500)
    create = {
        "isGroup": True,
        "channelData": {"channel": {"id": channel.conversation_id}},
        "activity": _message("new thread"),
    }
    assert await _status(session, emu, "POST", "v3/conversations", token=token, json=create) == 502
    assert await _status(session, emu, "POST", "v3/conversations", token=token, json=create) == 500
    assert [m.text for m in emu.messages(channel)] == ["d", "new thread"]
    committed = [r for r in emu.connector_calls if r.fault is FaultKind.STATUS and r.committed]
    assert len(committed) == 1
    assert committed[0].status == 502

    # Slow: served after the delay.
    emu.faults.inject(method="GET", path=r"/members$", delay_s=0.2)
    started = time.monotonic()
    assert await _status(session, emu, "GET", members, token=token) == 200
    assert time.monotonic() - started >= 0.2

    # Over HTTP, for a separate process.
    async with session.post(
        f"{emu.base_url}/_emulator/faults",
        json={"method": "GET", "path": "/members$", "status": 412},
    ) as response:
        assert response.status == 201
    assert await _status(session, emu, "GET", members, token=token) == 412
    assert await _status(session, emu, "GET", members, token=token) == 200


async def test_a_timeout_fault_outlasts_the_client_and_ends_when_the_emulator_stops(
    emulator_keys: EmulatorKeys, session: aiohttp.ClientSession
) -> None:
    emu = TeamsEmulator(APP_ID, APP_PASSWORD, TENANT_ID, keys=emulator_keys)
    async with emu:
        channel = emu.add_channel("Operations")
        token = await _token(session, emu)
        emu.faults.inject(
            method="POST", path="/activities$", timeout=True, hold_s=30, committed=True
        )
        url = f"{emu.service_url}v3/conversations/{channel.conversation_id}/activities"
        with pytest.raises(TimeoutError):
            async with session.post(
                url,
                json=_message("maybe posted"),
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=0.3),
            ):
                pass
        assert [m.text for m in emu.messages(channel)] == ["maybe posted"]
        started = time.monotonic()
    assert time.monotonic() - started < 5
    held = emu.connector_calls[-1]
    assert (held.fault, held.status) == (FaultKind.TIMEOUT, 504)


# -- the channel side -------------------------------------------------------------------------


async def test_activities_arrive_signed_and_shaped_as_teams_sends_them(
    emu: TeamsEmulator, bot: FakeBot, session: aiohttp.ClientSession
) -> None:
    jwks = await fetch_jwks(session, emu)
    alice = emu.add_user("Alice Ops")
    bob = emu.add_user("Bob SRE")
    channel = emu.add_channel("Operations", "Incidents")

    post = await emu.post_message(
        channel, alice, "disk full on db-1", mention_bot=True, mentions=[bob]
    )
    assert post.status == 200
    received = (await bot.wait_for(1))[0]
    activity = received.activity
    claims = validate_channel_token(
        received.headers["Authorization"], activity, jwks=jwks, app_id=APP_ID
    )
    assert claims["serviceurl"] == activity["serviceUrl"] == emu.service_url
    assert received.headers["Content-Type"].startswith("application/json")
    root = activity["id"]
    assert re.fullmatch(r"\d{13}", root)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", activity["timestamp"])
    assert re.fullmatch(r".*\.\d{7}[+-]\d\d:\d\d", activity["localTimestamp"])
    assert activity["channelId"] == "msteams"
    assert activity["from"] == {
        "id": alice.account_id,
        "name": "Alice Ops",
        "aadObjectId": alice.aad_object_id,
    }
    assert activity["recipient"]["id"] == f"28:{APP_ID}"
    assert activity["conversation"] == {
        "isGroup": True,
        "conversationType": "channel",
        "tenantId": TENANT_ID,
        "id": f"{channel.conversation_id};messageid={root}",
    }
    data = activity["channelData"]
    assert channel.team is not None
    assert data["teamsChannelId"] == data["channel"]["id"] == channel.conversation_id
    assert data["teamsTeamId"] == data["team"]["id"] == channel.team.team_id
    assert data["tenant"] == {"id": TENANT_ID}
    assert activity["text"] == "<at>Incident Bridge</at> <at>Bob SRE</at> disk full on db-1"
    mentions = [e for e in activity["entities"] if e["type"] == "mention"]
    assert [m["mentioned"]["id"] for m in mentions] == [f"28:{APP_ID}", bob.account_id]
    assert [m["text"] for m in mentions] == ["<at>Incident Bridge</at>", "<at>Bob SRE</at>"]
    html = activity["attachments"][0]
    assert html["contentType"] == "text/html"
    assert 'itemtype="http://schema.skype.com/Mention"' in html["content"]
    assert "replyToId" not in activity

    reply = await emu.post_message(channel, bob, "<b>on it</b> & more", thread_root=root)
    assert reply.activity["conversation"]["id"] == f"{channel.conversation_id};messageid={root}"
    assert reply.activity["replyToId"] == root
    assert "&lt;b&gt;on it&lt;/b&gt; &amp; more" in reply.activity["attachments"][0]["content"]
    bare = await emu.post_message(channel.thread(root), bob, "no replyToId", send_reply_to_id=False)
    assert "replyToId" not in bare.activity
    assert [m.activity_id for m in emu.messages(channel.thread(root))] == [
        root,
        reply.activity_id,
        bare.activity_id,
    ]

    group = emu.add_chat([alice, bob], topic="war room")
    in_group = await emu.post_message(group, alice, "hi all")
    assert in_group.activity["conversation"]["conversationType"] == "groupChat"
    assert in_group.activity["conversation"]["id"].endswith("@thread.v2")
    personal = emu.add_chat([alice], personal=True)
    in_personal = await emu.post_message(personal, alice, "hi bot")
    assert in_personal.activity["conversation"]["conversationType"] == "personal"
    assert "isGroup" not in in_personal.activity["conversation"]
    assert in_personal.activity["conversation"]["id"].startswith("a:")

    edit = await emu.edit_message(reply.activity_id, "on it, ETA 5 min")
    assert (edit.activity["type"], edit.activity["id"]) == ("messageUpdate", reply.activity_id)
    assert edit.activity["channelData"]["eventType"] == "editMessage"
    assert edit.activity["text"] == "on it, ETA 5 min"
    deleted = await emu.delete_message(reply.activity_id)
    assert (deleted.activity["type"], deleted.activity["channelData"]["eventType"]) == (
        "messageDelete",
        "softDeleteMessage",
    )
    undeleted = await emu.undelete_message(reply.activity_id)
    assert undeleted.activity["channelData"]["eventType"] == "undeleteMessage"
    reaction = await emu.react(root, bob, "heart")
    assert reaction.activity["type"] == "messageReaction"
    assert reaction.activity["reactionsAdded"] == [{"type": "heart"}]
    assert reaction.activity["replyToId"] == root
    removed = await emu.react(root, bob, "heart", removed=True)
    assert removed.activity["reactionsRemoved"] == [{"type": "heart"}]
    carol = emu.add_user("Carol Dev")
    joined = await emu.add_members(channel, [carol], by=alice)
    assert joined.activity["type"] == "conversationUpdate"
    assert joined.activity["membersAdded"] == [
        {"id": carol.account_id, "aadObjectId": carol.aad_object_id}
    ]
    assert joined.activity["channelData"]["eventType"] == "teamMemberAdded"
    assert joined.activity["channelData"]["team"]["name"] == "Operations"
    assert joined.activity["conversation"]["id"] == channel.team.team_id
    removed_bot, uninstalled = await emu.uninstall_bot(channel, by=alice)
    assert removed_bot.activity["membersRemoved"] == [{"id": f"28:{APP_ID}"}]
    assert uninstalled.activity["type"] == "installationUpdate"
    assert uninstalled.activity["action"] == "remove"
    assert not emu.bot_installed(channel)
    created = await emu.team_event(channel, "channelCreated", by=alice)
    assert created.activity["conversation"]["id"] == channel.team.team_id
    assert created.activity["channelData"]["eventType"] == "channelCreated"
    assert created.activity["channelData"]["channel"] == {
        "id": channel.conversation_id,
        "name": "Incidents",
    }
    rich = await emu.post_message(group, alice, "<p>rich <b>text</b></p>", text_format="xml")
    assert rich.activity["textFormat"] == "xml"
    assert rich.activity["attachments"][0]["content"] == "<p>rich <b>text</b></p>"
    installed, added = await emu.install_bot(channel, by=alice)
    assert installed.activity["action"] == "add"
    assert added.activity["membersAdded"] == [{"id": f"28:{APP_ID}"}]
    assert emu.bot_installed(channel)

    deliveries = await bot.wait_for(len(emu.deliveries))
    for delivered in deliveries:
        validate_channel_token(
            delivered.headers["Authorization"], delivered.activity, jwks=jwks, app_id=APP_ID
        )
    assert all(d.ok for d in emu.deliveries)


async def test_redelivery_forged_headers_and_attachments(
    emu: TeamsEmulator, bot: FakeBot, session: aiohttp.ClientSession
) -> None:
    alice = emu.add_user("Alice Ops")
    chat = emu.add_chat([alice], personal=True)
    first = await emu.post_message(
        chat,
        alice,
        "see attached",
        images=[InlineImage(PNG)],
        files=[FileUpload("runbook.txt", b"restart the pod")],
    )
    again = await emu.redeliver(first)
    assert again.activity == first.activity
    assert again.activity_id == first.activity_id
    assert again.authorization is not None
    forged = await emu.deliver(
        first.activity, authorization="Bearer " + emu.forged_tokens()["alg_none"]
    )
    unsigned = await emu.deliver(first.activity, unsigned=True)
    assert unsigned.authorization is None
    received = await bot.wait_for(4)
    assert [r.activity["id"] for r in received] == [first.activity_id] * 4
    assert received[2].headers["Authorization"] == forged.authorization
    assert "Authorization" not in received[3].headers
    assert len(emu.messages(chat)) == 1

    image, file = first.activity["attachments"][1:]
    assert image["contentType"] == "image/*"
    token = await _token(session, emu)
    async with session.get(image["contentUrl"]) as response:
        assert response.status == 401
    async with session.get(
        image["contentUrl"], headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert (response.status, await response.read()) == (200, PNG)
    assert file["contentType"] == "application/vnd.microsoft.teams.file.download.info"
    assert file["content"]["fileType"] == "txt"
    assert file["name"] == "runbook.txt"
    async with session.get(file["content"]["downloadUrl"]) as response:
        assert (response.status, await response.read()) == (200, b"restart the pod")
    async with session.get(file["contentUrl"]) as response:
        assert response.status == 401

    # A bot that does not answer in time, or is not there at all.
    slow_bot = FakeBot(delay_s=1.0)
    async with slow_bot:
        timed_out = await emu.deliver(first.activity, endpoint=slow_bot.url, timeout_s=0.2)
        assert (timed_out.outcome, timed_out.status) == (DeliveryOutcome.TIMED_OUT, None)
    gone = await emu.deliver(first.activity, endpoint=slow_bot.url)
    assert gone.outcome is DeliveryOutcome.UNREACHABLE


async def test_a_foreign_service_url_is_carried_and_signed(
    emu: TeamsEmulator, bot: FakeBot, session: aiohttp.ClientSession
) -> None:
    jwks = await fetch_jwks(session, emu)
    alice = emu.add_user("Alice Ops")
    chat = emu.add_chat([alice], personal=True)
    emu.set_service_url(chat, "http://169.254.169.254/")
    delivery = await emu.post_message(chat, alice, "hello")
    received = (await bot.wait_for(1))[0]
    assert received.activity["serviceUrl"] == "http://169.254.169.254/"
    claims = validate_channel_token(
        received.headers["Authorization"], received.activity, jwks=jwks, app_id=APP_ID
    )
    assert claims["serviceurl"] == "http://169.254.169.254/"
    assert delivery.ok
    assert emu.connector_calls == ()


# -- the page and the standalone process ---------------------------------------------------------


async def test_the_page_is_served_and_lists_messages(
    emu: TeamsEmulator, bot: FakeBot, session: aiohttp.ClientSession
) -> None:
    alice = emu.add_user("Alice Ops")
    channel = emu.add_channel("Operations")
    async with session.get(emu.page_url) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        page = await response.text()
    assert '<script src="/_emulator/page.js"' in page
    async with session.get(f"{emu.base_url}/_emulator/page.js") as response:
        script = await response.text()
    async with session.get(f"{emu.base_url}/_emulator/page.css") as response:
        style = await response.text()
    for asset in (page, script, style):  # self-contained: nothing from elsewhere
        assert "http://" not in asset
        assert "https://" not in asset
    assert "innerHTML" not in script
    for sink in ("outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script  # the bot's HTML is rebuilt node by node from an allow-list
    assert "textContent" in script
    directory = await fetch_json(session, f"{emu.base_url}/_emulator/api/directory")
    assert [u["name"] for u in directory["users"]] == ["Alice Ops"]
    assert directory["conversations"][0]["id"] == channel.conversation_id

    async with session.post(
        f"{emu.base_url}/_emulator/api/messages",
        json={
            "conversation": channel.conversation_id,
            "user": alice.account_id,
            "text": "<script>x</script>",
        },
    ) as response:
        assert response.status == 200
        sent = await response.json()
    assert sent["status"] == 200
    assert (await bot.wait_for(1))[0].activity["text"] == "<script>x</script>"
    token = await _token(session, emu)
    thread = f"{channel.conversation_id};messageid={sent['activityId']}"
    status, _, _ = await _call(
        session,
        emu,
        "POST",
        f"v3/conversations/{thread}/activities",
        token=token,
        json=_message("ack"),
    )
    assert status == 201
    listed = await fetch_json(
        session,
        f"{emu.base_url}/_emulator/api/messages?conversation={quote(channel.conversation_id)}",
    )
    assert [(m["text"], m["from"]["isBot"]) for m in listed["messages"]] == [
        ("<script>x</script>", False),
        ("ack", True),
    ]

    async with session.post(
        f"{emu.base_url}/_emulator/api/messages",
        data=b'{"conversation": "x"}',
        headers={"Content-Type": "text/plain"},
    ) as response:
        assert response.status == 415
    async with session.post(
        f"{emu.base_url}/_emulator/api/messages",
        json={"conversation": channel.conversation_id, "user": alice.account_id, "text": "x"},
        headers={"Origin": "http://evil.example"},
    ) as response:
        assert response.status == 403
    assert len(bot.received) == 1


def test_the_emulator_runs_standalone_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.teams_emulator",
            "--app-id",
            APP_ID,
            "--app-password",
            APP_PASSWORD,
            "--tenant",
            TENANT_ID,
            "--bot-endpoint",
            "http://127.0.0.1:9/api/messages",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready" in line:
                break
        output = "".join(lines)
        assert "ready" in output, output
        metadata_url = re.search(r"OpenID metadata\s+(\S+)", output)
        assert metadata_url is not None
        import json  # noqa: PLC0415
        import urllib.request  # noqa: PLC0415

        with urllib.request.urlopen(metadata_url.group(1), timeout=5) as response:
            assert json.load(response)["issuer"] == "https://api.botframework.com"
        with urllib.request.urlopen(
            metadata_url.group(1).split("/v1/")[0] + "/_emulator/api/directory", timeout=5
        ) as response:
            directory = json.load(response)
        assert len(directory["users"]) == 3
        assert len(directory["conversations"]) == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_waiting_for_calls_is_bounded(
    emu: TeamsEmulator, session: aiohttp.ClientSession
) -> None:
    channel = emu.add_channel("Operations")
    token = await _token(session, emu)
    path = f"v3/conversations/{channel.conversation_id}/activities"
    waiter = asyncio.ensure_future(emu.wait_for_calls(2))
    await _call(session, emu, "POST", path, token=token, json=_message("one"))
    await _call(session, emu, "POST", path, token=token, json=_message("two"))
    calls = await asyncio.wait_for(waiter, 5)
    assert [c.body["text"] for c in calls] == ["one", "two"]
    with pytest.raises(TimeoutError):
        await emu.wait_for_calls(3, timeout_s=0.1)
    assert emu.mint_token(algorithm=Algorithm.RS256).count(".") == 2
