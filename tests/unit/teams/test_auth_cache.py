"""Verified channel tokens are remembered: not verified again, yet every check still holds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from adapters.teams.auth import AuthRejectedError, InboundAuthenticator, VerifiedTokenCache
from tests.support.fakes import FakeClock
from tests.unit.teams import support as s

SKEW_S = 300


@pytest.fixture(scope="module")
def key() -> s.KeyPair:
    return s.KeyPair(key_id="channel-key-1")


@pytest.fixture(scope="module")
def successor() -> s.KeyPair:
    return s.KeyPair(key_id="channel-key-2")


@pytest.fixture
def clock() -> FakeClock:
    """The wall clock's time now (the SDK's validator reads the real time), moved by hand."""
    return FakeClock(datetime.now(UTC))


def authenticator(keys: s.StaticKeys, clock: FakeClock) -> InboundAuthenticator:
    return InboundAuthenticator(
        settings=s.teams_settings(clock_skew_s=SKEW_S), keys=keys, clock=clock
    )


async def reason_for(auth: InboundAuthenticator, header: str) -> str:
    with pytest.raises(AuthRejectedError) as exc:
        await auth.authenticate(header)
    return exc.value.reason


def now_s(clock: FakeClock) -> int:
    return int(clock.now().timestamp())


async def test_a_token_seen_before_is_not_verified_again(key: s.KeyPair, clock: FakeClock) -> None:
    keys = s.StaticKeys(key)
    auth = authenticator(keys, clock)
    header = f"Bearer {key.sign(s.claims())}"
    first = await auth.authenticate(header)
    for _ in range(5):
        again = await auth.authenticate(header)
        assert again.claims == first.claims
        assert again.service_url == s.SERVICE_URL
    assert keys.lookups == [key.key_id]  # one signature check: the validator asked once
    other = f"Bearer {key.sign(s.claims(jti='another'))}"
    await auth.authenticate(other)
    assert keys.lookups == [key.key_id] * 2  # another token string is verified on its own


async def test_a_remembered_token_is_refused_once_it_expires(
    key: s.KeyPair, clock: FakeClock
) -> None:
    keys = s.StaticKeys(key)
    auth = authenticator(keys, clock)
    now = now_s(clock)
    header = f"Bearer {key.sign(s.claims(nbf=now - 60, exp=now + 600))}"
    await auth.authenticate(header)
    clock.advance(599)
    await auth.authenticate(header)
    assert len(keys.lookups) == 1
    clock.advance(101)  # past exp, within the skew: verified afresh, accepted as before
    await auth.authenticate(header)
    assert len(keys.lookups) == 2
    clock.advance(SKEW_S)  # past exp and the skew
    assert await reason_for(auth, header) == "token_expired"
    assert await reason_for(auth, header) == "token_expired"


async def test_the_clock_checks_run_on_every_use_of_a_remembered_token(
    key: s.KeyPair, clock: FakeClock
) -> None:
    keys = s.StaticKeys(key)
    auth = authenticator(keys, clock)
    now = now_s(clock)
    header = f"Bearer {key.sign(s.claims(nbf=now, exp=now + 600))}"
    await auth.authenticate(header)
    clock.advance(-(SKEW_S + 10))  # the clock was set back: before nbf, beyond the skew
    assert await reason_for(auth, header) == "token_not_yet_valid"
    assert len(keys.lookups) == 1  # refused from the remembered claims


async def test_a_key_rotation_forgets_what_the_old_keys_verified(
    key: s.KeyPair, successor: s.KeyPair, clock: FakeClock
) -> None:
    keys = s.StaticKeys(key)
    auth = authenticator(keys, clock)
    old = f"Bearer {key.sign(s.claims())}"
    await auth.authenticate(old)
    await auth.authenticate(old)
    keys.rotate(successor)  # the channel dropped the key that signed ``old``
    assert await reason_for(auth, old) == "unknown_signing_key"
    assert await reason_for(auth, old) == "unknown_signing_key"
    new = f"Bearer {successor.sign(s.claims())}"
    await auth.authenticate(new)
    await auth.authenticate(new)
    assert keys.lookups == [key.key_id, key.key_id, key.key_id, successor.key_id]


async def test_refused_tokens_are_never_remembered(key: s.KeyPair, clock: FakeClock) -> None:
    keys = s.StaticKeys(key)
    auth = authenticator(keys, clock)
    valid = f"Bearer {key.sign(s.claims())}"
    await auth.authenticate(valid)
    forged = f"Bearer {s.KeyPair(key_id=key.key_id).sign(s.claims())}"  # same kid, other key
    wrong_audience = f"Bearer {key.sign(s.claims(aud='someone-else'))}"
    for _ in range(3):
        assert await reason_for(auth, forged) == "invalid_token"
        assert await reason_for(auth, wrong_audience) == "token_not_for_this_bot"
    assert len(keys.lookups) == 1 + 3 * 2  # every refused attempt was verified in full
    # a valid token's signature on other claims is not a remembered token
    payload_swapped = valid.rsplit(".", 2)
    tampered = key.sign(s.claims(aud="someone-else")).split(".")
    spliced = f"{payload_swapped[0]}.{tampered[1]}.{payload_swapped[2]}"
    assert await reason_for(auth, spliced) == "invalid_token"


async def test_tokens_of_a_foreign_caller_are_still_refused_when_remembered(
    key: s.KeyPair, clock: FakeClock
) -> None:
    auth = authenticator(s.StaticKeys(key), clock)
    token = await auth.authenticate(f"Bearer {key.sign(s.claims())}")
    again = await auth.authenticate(f"Bearer {key.sign(s.claims())}")
    for verified in (token, again):
        with pytest.raises(AuthRejectedError) as exc:
            auth.authorize(
                verified,
                service_url=s.SERVICE_URL,
                channel_id="msteams",
                tenant_ids=(s.OTHER_TENANT,),
            )
        assert exc.value.reason == "tenant_not_allowed"


def test_the_cache_is_bounded_and_keeps_the_recently_used() -> None:
    cache = VerifiedTokenCache(capacity=3)
    claims = {"exp": 2_000}
    for name in ("a", "b", "c"):
        cache.put(name, claims, now=1_000, generation=1)
    assert cache.get("a", now=1_000, generation=1) is not None  # "b" is now the oldest
    cache.put("d", claims, now=1_000, generation=1)
    assert len(cache) == 3
    assert cache.get("b", now=1_000, generation=1) is None
    assert all(cache.get(n, now=1_000, generation=1) is not None for n in ("a", "c", "d"))
    assert cache.get("a", now=2_000, generation=1) is None  # at exp: no longer served
    assert len(cache) == 2
    assert cache.get("c", now=1_000, generation=2) is None  # another key set: all forgotten
    assert len(cache) == 0
    cache.put("e", {"exp": 900}, now=1_000, generation=2)  # already expired: not kept
    cache.put("f", {}, now=1_000, generation=2)  # no expiry: not kept
    assert len(cache) == 0


@pytest.mark.parametrize("separator", [c for c in map(chr, range(0x3100)) if c.isspace()])
async def test_whitespace_inside_a_bearer_token_is_refused(
    key: s.KeyPair, clock: FakeClock, separator: str
) -> None:
    keys = s.StaticKeys(key)
    header = f"Bearer {key.sign(s.claims())}{separator}x"
    assert await reason_for(authenticator(keys, clock), header) == "not_a_bearer_token"
    assert keys.lookups == []


async def test_only_whitespace_ends_a_bearer_token(key: s.KeyPair, clock: FakeClock) -> None:
    everything_else = "".join(
        chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and not chr(c).isspace()
    )
    auth = authenticator(s.StaticKeys(key), clock)
    # gets past the bearer check (then fails as a token): nothing but whitespace splits it
    assert await reason_for(auth, f"Bearer {everything_else}") == "malformed_token"
    for look_alike in ("\u200b", "\ufeff", "\u180e", "\x00"):
        assert await reason_for(auth, f"Bearer a{look_alike}b") == "malformed_token"
