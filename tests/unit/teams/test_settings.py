"""Teams settings: complete when enabled, trusted endpoints, allow-lists never "allow all"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_settings
from bridge.config.teams import TeamsSettings, check_trusted_url, is_loopback_host
from bridge.errors import ConfigError


def problems(teams: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as exc:
        load_settings(None, {"BRIDGE__MONGO__URI": "mongodb://db"} | _env(teams))
    return {p.key_path: p.message for p in exc.value.problems}


def _env(teams: dict[str, Any], prefix: str = "BRIDGE__TEAMS__") -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in teams.items():
        if isinstance(value, dict):
            env |= _env(value, f"{prefix}{key.upper()}__")
        elif isinstance(value, tuple):
            env[prefix + key.upper()] = "[" + ", ".join(value) + "]"
        else:
            env[prefix + key.upper()] = str(value)
    return env


def test_disabled_by_default_with_microsofts_endpoints() -> None:
    settings = TeamsSettings()
    assert not settings.enabled
    assert settings.openid_metadata_url == (
        "https://login.botframework.com/v1/.well-known/openidconfiguration"
    )
    assert settings.issuers == ("https://api.botframework.com",)
    assert settings.allowed_service_url_hosts == ("smba.trafficmanager.net",)
    assert settings.authority == "https://login.microsoftonline.com"
    assert settings.clock_skew_s == 300


def test_enabled_names_every_missing_key() -> None:
    found = problems({"enabled": "true"})
    (message,) = found.values()
    assert "teams.app_id" in message
    assert "teams.tenant_id" in message
    assert "teams.auth.client_secret" in message


@pytest.mark.parametrize(
    ("auth", "missing"),
    [
        ({"type": "certificate"}, "teams.auth.certificate_path"),
        ({"type": "workload_identity"}, "teams.auth.federated_token_path"),
    ],
)
def test_each_auth_type_names_what_it_needs(auth: dict[str, str], missing: str) -> None:
    found = problems({"enabled": "true", "app_id": "a", "tenant_id": "t", "auth": auth})
    assert missing in next(iter(found.values()))


def test_client_secret_from_a_mounted_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    settings = load_settings(
        None,
        {
            "BRIDGE__MONGO__URI": "mongodb://db",
            "BRIDGE__TEAMS__ENABLED": "true",
            "BRIDGE__TEAMS__APP_ID": "app",
            "BRIDGE__TEAMS__TENANT_ID": "tenant",
            "BRIDGE__TEAMS__AUTH__CLIENT_SECRET_FILE": str(secret),
        },
    )
    assert settings.teams.auth.client_secret is not None
    assert settings.teams.auth.client_secret.get_secret_value() == "from-a-file"
    assert "from-a-file" not in repr(settings)


@pytest.mark.parametrize("key", ["openid_metadata_url", "authority"])
@pytest.mark.parametrize(
    "url",
    [
        "http://login.botframework.com/v1/.well-known/openidconfiguration",
        "http://10.0.0.5:8080",
        "ftp://localhost/x",
        "https://user:pw@login.microsoftonline.com",
        "not a url",
    ],
)
def test_untrusted_endpoints_are_refused(key: str, url: str) -> None:
    assert f"teams.{key}" in problems({key: url})


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:4010", "http://localhost:4010/x/", "http://[::1]:4010", "https://x.y"]
)
def test_https_or_a_loopback_emulator_is_trusted(url: str) -> None:
    assert check_trusted_url(url) is None
    assert TeamsSettings(authority=url).authority == url.rstrip("/")


def test_loopback_hosts() -> None:
    assert is_loopback_host("127.9.9.9")
    assert is_loopback_host("::1")
    assert is_loopback_host("LOCALHOST")
    assert not is_loopback_host("169.254.169.254")
    assert not is_loopback_host("localhost.attacker.example")
    assert not is_loopback_host(None)


@pytest.mark.parametrize("tenant", ["*", "common", "organizations", " "])
def test_no_tenant_wildcard(tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        TeamsSettings(allowed_tenants=(tenant,))


@pytest.mark.parametrize(
    "host", ["*.trafficmanager.net", "https://smba.trafficmanager.net", "smba.net/emea", ""]
)
def test_service_url_hosts_are_exact_host_entries(host: str) -> None:
    with pytest.raises(ValueError, match="host"):
        TeamsSettings(allowed_service_url_hosts=(host,))


def test_host_entries_are_normalised() -> None:
    settings = TeamsSettings(allowed_service_url_hosts=("SMBA.trafficmanager.net", "127.0.0.1:80"))
    assert settings.allowed_service_url_hosts == ("smba.trafficmanager.net", "127.0.0.1:80")


def test_at_least_one_issuer() -> None:
    with pytest.raises(ValueError, match="issuer"):
        TeamsSettings(issuers=())


def test_skew_is_at_most_what_the_sdk_validator_allows() -> None:
    with pytest.raises(ValueError, match="300"):
        TeamsSettings(clock_skew_s=600)


def test_certificate_with_a_loopback_authority_is_refused() -> None:
    with pytest.raises(ValueError, match="loopback"):
        TeamsSettings(
            enabled=True,
            app_id="a",
            tenant_id="t",
            authority="http://127.0.0.1:9",
            auth={"type": "certificate", "certificate_path": "/c.pfx"},
        )


def test_token_endpoint() -> None:
    settings = TeamsSettings(tenant_id="t1", authority="http://127.0.0.1:9/")
    assert settings.token_endpoint == "http://127.0.0.1:9/t1/oauth2/v2.0/token"
    assert settings.uses_loopback_authority
