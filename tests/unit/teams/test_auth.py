"""Inbound token validation: every check of the Bot Framework plus the bridge's allow-lists."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest

from adapters.teams.auth import (
    AuthRejectedError,
    InboundAuthenticator,
    normalize_service_url,
    service_url_allowed,
)
from bridge.clock import SystemClock
from bridge.config.teams import TeamsSettings
from tests.unit.teams import support as s


@pytest.fixture(scope="module")
def key() -> s.KeyPair:
    return s.KeyPair(key_id="channel-key-1")


@pytest.fixture(scope="module")
def unendorsed() -> s.KeyPair:
    return s.KeyPair(key_id="skype-only", endorsements=["skype"])


@pytest.fixture(scope="module")
def bare() -> s.KeyPair:
    return s.KeyPair(key_id="no-endorsements", endorsements=None)


@pytest.fixture
def keys(key: s.KeyPair, unendorsed: s.KeyPair, bare: s.KeyPair) -> s.StaticKeys:
    return s.StaticKeys(key, unendorsed, bare)


def authenticator(keys: s.StaticKeys, **overrides: Any) -> InboundAuthenticator:
    return InboundAuthenticator(
        settings=s.teams_settings(**overrides), keys=keys, clock=SystemClock()
    )


async def reason_for(auth: InboundAuthenticator, header: str | None) -> tuple[int, str]:
    with pytest.raises(AuthRejectedError) as exc:
        await auth.authenticate(header)
    return exc.value.status, exc.value.reason


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


async def test_a_channel_token_is_accepted(key: s.KeyPair, keys: s.StaticKeys) -> None:
    verified = await authenticator(keys).authenticate(f"Bearer {key.sign(s.claims())}")
    assert verified.service_url == s.SERVICE_URL
    assert verified.claims["aud"] == s.APP_ID
    assert keys.lookups == [key.key_id]  # the SDK validator asked the injected key source


async def test_a_key_without_endorsements_is_accepted(bare: s.KeyPair, keys: s.StaticKeys) -> None:
    await authenticator(keys).authenticate(f"Bearer {bare.sign(s.claims())}")


@pytest.mark.parametrize("header", [None, "", "Basic dXNlcjpwdw==", "Bearer", "Bearer a b"])
async def test_missing_or_non_bearer_credentials(keys: s.StaticKeys, header: str | None) -> None:
    status, _ = await reason_for(authenticator(keys), header)
    assert status == 401
    assert keys.lookups == []


async def test_garbage_is_not_a_token(keys: s.StaticKeys) -> None:
    assert await reason_for(authenticator(keys), "Bearer not.a.jwt") == (401, "malformed_token")


async def test_alg_none_is_rejected_before_any_key_lookup(keys: s.StaticKeys) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'channel-key-1'})}.{_b64(s.claims())}."
    assert await reason_for(authenticator(keys), f"Bearer {token}") == (
        401,
        "algorithm_not_allowed",
    )
    assert keys.lookups == []


async def test_hs256_signed_with_the_public_key_is_rejected(
    key: s.KeyPair, keys: s.StaticKeys
) -> None:
    # The classic confusion attack; PyJWT refuses to HMAC with a PEM key, so sign by hand.
    import hashlib  # noqa: PLC0415
    import hmac  # noqa: PLC0415

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': key.key_id})}.{_b64(s.claims())}"
    mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"
    assert await reason_for(authenticator(keys), f"Bearer {token}") == (
        401,
        "algorithm_not_allowed",
    )


async def test_rs256_header_with_another_signature_fails(
    key: s.KeyPair, keys: s.StaticKeys
) -> None:
    forger = s.KeyPair(key_id=key.key_id)  # same key id, different key
    status, reason = await reason_for(authenticator(keys), f"Bearer {forger.sign(s.claims())}")
    assert (status, reason) == (401, "invalid_token")


async def test_wrong_issuer(key: s.KeyPair, keys: s.StaticKeys) -> None:
    token = key.sign(s.claims(iss="https://attacker.example"))
    assert await reason_for(authenticator(keys), f"Bearer {token}") == (401, "issuer_not_allowed")


async def test_a_microsoft_first_party_issuer_not_configured_is_rejected(
    key: s.KeyPair, keys: s.StaticKeys
) -> None:
    # The SDK always trusts these; the bridge accepts exactly teams.issuers.
    issuer = "https://sts.windows.net/d6d49420-f39b-4df7-a1dc-d59a935871db/"
    token = key.sign(s.claims(iss=issuer))
    assert await reason_for(authenticator(keys), f"Bearer {token}") == (401, "issuer_not_allowed")


async def test_a_configured_tenant_issuer_is_accepted(key: s.KeyPair, keys: s.StaticKeys) -> None:
    issuer = f"https://login.microsoftonline.com/{s.TENANT}/v2.0"
    auth = authenticator(keys, issuers=("https://api.botframework.com", issuer))
    await auth.authenticate(f"Bearer {key.sign(s.claims(iss=issuer, tid=s.TENANT))}")


async def test_wrong_audience(key: s.KeyPair, keys: s.StaticKeys) -> None:
    token = key.sign(s.claims(aud="someone-else"))
    assert await reason_for(authenticator(keys), f"Bearer {token}") == (
        401,
        "token_not_for_this_bot",
    )


async def test_audience_list_is_rejected(key: s.KeyPair, keys: s.StaticKeys) -> None:
    token = key.sign(s.claims(aud=[s.APP_ID, "other"]))
    assert (await reason_for(authenticator(keys), f"Bearer {token}"))[0] == 401


async def test_expired_beyond_the_skew(key: s.KeyPair, keys: s.StaticKeys) -> None:
    now = int(time.time())
    token = key.sign(s.claims(nbf=now - 3600, exp=now - 301))
    assert await reason_for(authenticator(keys), f"Bearer {token}") == (401, "token_expired")


async def test_expired_within_the_skew_is_tolerated(key: s.KeyPair, keys: s.StaticKeys) -> None:
    now = int(time.time())
    await authenticator(keys).authenticate(f"Bearer {key.sign(s.claims(exp=now - 200))}")


async def test_a_smaller_configured_skew_is_enforced(key: s.KeyPair, keys: s.StaticKeys) -> None:
    now = int(time.time())
    token = key.sign(s.claims(exp=now - 200))
    auth = authenticator(keys, clock_skew_s=60)
    assert await reason_for(auth, f"Bearer {token}") == (401, "token_expired")


async def test_not_yet_valid(key: s.KeyPair, keys: s.StaticKeys) -> None:
    now = int(time.time())
    token = key.sign(s.claims(nbf=now + 900, exp=now + 3600))
    assert await reason_for(authenticator(keys), f"Bearer {token}") == (
        401,
        "token_not_yet_valid",
    )


async def test_a_token_without_expiry_is_rejected(key: s.KeyPair, keys: s.StaticKeys) -> None:
    claims = s.claims()
    del claims["exp"]
    assert await reason_for(authenticator(keys), f"Bearer {key.sign(claims)}") == (
        401,
        "token_without_expiry",
    )


async def test_unknown_key_id(key: s.KeyPair, keys: s.StaticKeys) -> None:
    token = key.sign(s.claims(), key_id="rotated-away")
    assert await reason_for(authenticator(keys), f"Bearer {token}") == (
        401,
        "unknown_signing_key",
    )


async def test_a_key_not_endorsed_for_teams(unendorsed: s.KeyPair, keys: s.StaticKeys) -> None:
    token = unendorsed.sign(s.claims())
    assert await reason_for(authenticator(keys), f"Bearer {token}") == (
        401,
        "unknown_signing_key",
    )


async def test_a_token_without_key_id(key: s.KeyPair, keys: s.StaticKeys) -> None:
    token = jwt.encode(s.claims(), key.private, algorithm="RS256")
    assert await reason_for(authenticator(keys), f"Bearer {token}") == (401, "no_key_id")


# -- the activity against the token and the allow-lists --------------------------------


async def verified(key: s.KeyPair, keys: s.StaticKeys, **claims: Any) -> Any:
    return await authenticator(keys).authenticate(f"Bearer {key.sign(s.claims(**claims))}")


def refusal(auth: InboundAuthenticator, token: Any, **activity: Any) -> tuple[int, str]:
    values: dict[str, Any] = {
        "service_url": s.SERVICE_URL,
        "channel_id": "msteams",
        "tenant_ids": (s.TENANT,),
    }
    values.update(activity)
    with pytest.raises(AuthRejectedError) as exc:
        auth.authorize(token, **values)
    return exc.value.status, exc.value.reason


async def test_an_allowed_activity_passes(key: s.KeyPair, keys: s.StaticKeys) -> None:
    token = await verified(key, keys)
    authenticator(keys).authorize(
        token, service_url=s.SERVICE_URL, channel_id="msteams", tenant_ids=(s.TENANT, s.TENANT)
    )


async def test_service_url_claim_must_match_the_activity(
    key: s.KeyPair, keys: s.StaticKeys
) -> None:
    token = await verified(key, keys)
    auth = authenticator(keys)
    assert refusal(auth, token, service_url="https://smba.trafficmanager.net/amer/") == (
        401,
        "service_url_claim_mismatch",
    )
    no_claim = await verified(key, keys, serviceurl=None)
    assert refusal(auth, no_claim) == (401, "service_url_claim_missing")
    assert refusal(auth, token, service_url=None) == (401, "service_url_claim_missing")


async def test_service_url_comparison_ignores_case_port_and_trailing_slash(
    key: s.KeyPair, keys: s.StaticKeys
) -> None:
    token = await verified(key, keys, serviceurl="HTTPS://SMBA.trafficmanager.net:443/emea")
    authenticator(keys).authorize(
        token, service_url=s.SERVICE_URL, channel_id="msteams", tenant_ids=(s.TENANT,)
    )


@pytest.mark.parametrize(
    "service_url",
    [
        "http://127.0.0.1:27017",
        "http://169.254.169.254",
        "https://169.254.169.254/latest/meta-data/",
        "https://smba.trafficmanager.net.attacker.example/emea/",
        "https://smba.trafficmanager.net:8443/emea/",
        "http://smba.trafficmanager.net/emea/",
        "https://user:pw@smba.trafficmanager.net/emea/",
    ],
)
async def test_service_url_host_must_be_allow_listed(
    key: s.KeyPair, keys: s.StaticKeys, service_url: str
) -> None:
    token = await verified(key, keys, serviceurl=service_url)  # a valid token naming it
    assert refusal(authenticator(keys), token, service_url=service_url) == (
        403,
        "service_url_not_allowed",
    )


async def test_foreign_tenant(key: s.KeyPair, keys: s.StaticKeys) -> None:
    token = await verified(key, keys)
    auth = authenticator(keys)
    assert refusal(auth, token, tenant_ids=(s.OTHER_TENANT,)) == (403, "tenant_not_allowed")
    assert refusal(auth, token, tenant_ids=(s.TENANT, s.OTHER_TENANT)) == (
        403,
        "tenant_not_allowed",
    )
    assert refusal(auth, token, tenant_ids=()) == (403, "tenant_not_allowed")


async def test_explicit_tenant_list_replaces_the_default(
    key: s.KeyPair, keys: s.StaticKeys
) -> None:
    token = await verified(key, keys)
    auth = authenticator(keys, allowed_tenants=(s.OTHER_TENANT.upper(),))
    auth.authorize(
        token, service_url=s.SERVICE_URL, channel_id="msteams", tenant_ids=(s.OTHER_TENANT,)
    )
    assert refusal(auth, token) == (403, "tenant_not_allowed")


async def test_other_channels_are_refused(key: s.KeyPair, keys: s.StaticKeys) -> None:
    token = await verified(key, keys)
    assert refusal(authenticator(keys), token, channel_id="webchat") == (
        403,
        "channel_not_allowed",
    )


def test_loopback_hosts_need_an_explicit_port_entry() -> None:
    hosts = frozenset({"127.0.0.1:41234", "smba.trafficmanager.net"})
    assert service_url_allowed("http://127.0.0.1:41234/", hosts)
    assert not service_url_allowed("http://127.0.0.1:27017/", hosts)
    assert not service_url_allowed("http://127.0.0.1/", hosts)
    assert service_url_allowed("https://smba.trafficmanager.net/amer/", hosts)
    assert not service_url_allowed("ftp://smba.trafficmanager.net/", hosts)
    assert not service_url_allowed("https://[::1", hosts)


def test_normalized_service_urls() -> None:
    assert normalize_service_url("https://SMBA.trafficmanager.net:443/emea/") == (
        "https://smba.trafficmanager.net/emea"
    )
    assert normalize_service_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"


def test_settings_used_by_the_validator_never_allow_everyone() -> None:
    settings = TeamsSettings(app_id=s.APP_ID, tenant_id=s.TENANT)
    assert settings.effective_allowed_tenants == frozenset({s.TENANT})
    assert TeamsSettings().effective_allowed_tenants == frozenset()


@pytest.mark.parametrize(
    "claim",
    [
        {"iss": ["https://api.botframework.com"]},
        {"iss": {"a": 1}},
        {"aud": {"id": s.APP_ID}},
        {"exp": "tomorrow"},
        {"nbf": [1]},
    ],
)
async def test_claims_of_unexpected_types_are_refused_not_crashing(
    key: s.KeyPair, keys: s.StaticKeys, claim: dict[str, Any]
) -> None:
    token = key.sign_unchecked(s.claims(**claim))
    status, _ = await reason_for(authenticator(keys), f"Bearer {token}")
    assert status == 401


async def test_a_service_url_claim_of_another_type_is_missing(
    key: s.KeyPair, keys: s.StaticKeys
) -> None:
    auth = authenticator(keys)
    token = await auth.authenticate(f"Bearer {key.sign_unchecked(s.claims(serviceurl=['x']))}")
    assert refusal(auth, token) == (401, "service_url_claim_missing")
