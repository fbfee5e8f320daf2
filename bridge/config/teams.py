"""Settings of the Teams side (a bot on the Microsoft 365 Agents SDK).

Trust rules, enforced here so a bad file fails at start-up with the key named:

- ``openid_metadata_url`` and ``authority`` must be ``https``; plain ``http`` is
  accepted only for loopback hosts (127.0.0.0/8, ::1, localhost), which is how
  a local emulator is trusted while production keeps Microsoft's endpoints.
- The tenant and serviceUrl allow-lists are never "allow all": an empty
  ``allowed_tenants`` means the bot's own tenant only, and a serviceUrl host
  entry matches one host (and port) exactly.
- No setting turns token validation off.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from bridge.config.section import Section

MICROSOFT_OPENID_METADATA_URL = "https://login.botframework.com/v1/.well-known/openidconfiguration"
BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
BOT_FRAMEWORK_SCOPE = "https://api.botframework.com/.default"
PUBLIC_CLOUD_SERVICE_HOST = "smba.trafficmanager.net"
MICROSOFT_GRAPH_URL = "https://graph.microsoft.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"

_HOST_ENTRY = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9-]{1,63}(?::\d{1,5})?$"
)
_IPV6_ENTRY = re.compile(r"^\[[0-9a-f:.]+\](?::\d{1,5})?$")
_ALLOW_ALL = frozenset({"*", "all", "any", "common", "organizations"})


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` is this machine: ``localhost``, 127.0.0.0/8 or ::1."""
    if not host:
        return False
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_trusted_url(url: str) -> str | None:
    """Why ``url`` cannot be trusted as a Microsoft endpoint, or None if it can.

    ``https`` with a host is required; ``http`` only towards a loopback host.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return "not a valid URL"
    if not host:
        return "must be an absolute URL with a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback_host(host):
        return None
    if parts.scheme == "http":
        return "must use https (plain http is accepted only for a loopback host)"
    return "must be an https URL"


class TeamsAuthSettings(Section):
    """How the bot proves its identity for outbound calls (client credentials)."""

    type: Literal["client_secret", "certificate", "workload_identity"] = "client_secret"
    client_secret: SecretStr | None = None
    """For ``client_secret`` (give ``client_secret_file`` to read it from a mounted Secret)."""
    certificate_path: str | None = None
    """For ``certificate``: a PKCS#12 (.pfx) file without passphrase, as the SDK's MSAL auth
    reads it. A PEM key and certificate convert with ``openssl pkcs12 -export``."""
    send_x5c: bool = False
    """For ``certificate``: send the public certificate (subject name + issuer authentication)."""
    federated_token_path: str | None = None
    """For ``workload_identity``: the projected service-account token, e.g.
    ``/var/run/secrets/azure/tokens/azure-identity-token`` (AZURE_FEDERATED_TOKEN_FILE)."""

    def missing(self, prefix: str) -> list[str]:
        """The key paths this auth type needs but lacks."""
        needed = {
            "client_secret": ("client_secret",),
            "certificate": ("certificate_path",),
            "workload_identity": ("federated_token_path",),
        }[self.type]
        return [f"{prefix}.{name}" for name in needed if not getattr(self, name)]


class TeamsSettings(Section):
    enabled: bool = False

    # -- identity -------------------------------------------------------------
    app_id: str = ""
    """The bot's Microsoft App ID (the Entra application's client id): the token audience."""
    tenant_id: str = ""
    """The bot's home tenant (Entra directory id)."""
    auth: TeamsAuthSettings = TeamsAuthSettings()

    # -- inbound: who may talk to the bot ------------------------------------
    allowed_tenants: tuple[str, ...] = ()
    """Tenants whose activities are accepted; empty means the bot's own tenant only."""
    allowed_service_url_hosts: tuple[str, ...] = (PUBLIC_CLOUD_SERVICE_HOST,)
    """serviceUrl hosts the bot accepts and calls, each ``host`` or ``host:port``, matched
    exactly (no wildcards). Without a port only the scheme's default port matches."""
    openid_metadata_url: str = MICROSOFT_OPENID_METADATA_URL
    """Where the channel's signing keys are published (its ``jwks_uri``)."""
    issuers: tuple[str, ...] = (BOT_FRAMEWORK_ISSUER,)
    """Accepted ``iss`` values; a single-tenant bot may add its tenant's Entra issuers."""
    clock_skew_s: Annotated[float, Field(ge=0, le=300)] = 300.0
    """Tolerance on token expiry and not-before (the SDK's validator allows at most 300 s)."""
    signing_keys_max_age_s: Annotated[float, Field(ge=60, le=7 * 24 * 3600)] = 24 * 3600.0
    """How long fetched signing keys are used before they are fetched again."""
    signing_keys_min_refresh_s: Annotated[float, Field(ge=1, le=3600)] = 60.0
    """A token with an unknown key id refetches the keys at most this often."""
    max_activity_bytes: Annotated[int, Field(ge=16 * 1024, le=4 * 1024 * 1024)] = 1024 * 1024
    """Larger request bodies are refused with 413 before they are read."""

    # -- outbound -------------------------------------------------------------
    authority: str = MICROSOFT_AUTHORITY
    """The token authority; tokens come from ``{authority}/{tenant_id}/oauth2/v2.0/token``."""
    scope: str = BOT_FRAMEWORK_SCOPE
    """The scope of outbound tokens (the Bot Connector)."""
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    """Deadline of one outbound HTTP request (token, keys, connector)."""
    token_refresh_margin_s: Annotated[float, Field(ge=0, le=1800)] = 300.0
    """A cached outbound token is renewed this long before it expires."""
    conversation_cache_size: Annotated[int, Field(ge=16, le=1_000_000)] = 10_000
    """How many conversation references are kept in memory (all are stored in MongoDB)."""
    # The outbound pacing settings (Teams rate limits, coalescing) go below as a
    # ``pacing`` sub-section owned by adapters/teams/pacing.py.

    # -- Microsoft Graph: team owners as operators ---------------------------
    team_owners_are_operators: bool = False
    """Owners of a team may run operator commands (``!bridge link``/``unlink``) in its
    channels and their threads, as the configured operators may. Off by default: it needs
    the Microsoft Graph *application* permission ``TeamMember.Read.All`` granted to the
    bot's Entra app by an administrator (admin consent). Ownership is asked of Graph
    (``GET /v1.0/teams/{team}/members``) with an app-only token of the bot's own tenant;
    when Graph cannot answer, the user is not taken for an owner."""
    graph_url: str = MICROSOFT_GRAPH_URL
    """The Microsoft Graph endpoint (a national cloud has its own); ``https`` only, plain
    ``http`` only for a loopback host (an emulator)."""
    graph_scope: str = GRAPH_SCOPE
    """The scope of Graph tokens: ``<graph endpoint>/.default``."""
    team_owner_cache_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    """How long Graph's answer on one user and one team is reused (0: ask every time)."""
    team_owner_cache_size: Annotated[int, Field(ge=16, le=1_000_000)] = 4096
    """How many (team, user) answers are kept in memory."""

    @field_validator("allowed_tenants")
    @classmethod
    def _no_wildcard_tenant(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tenant in value:
            if not tenant.strip():
                raise ValueError("a tenant id must not be empty")
            if tenant.strip().lower() in _ALLOW_ALL:
                raise ValueError(
                    f"{tenant!r} would allow every tenant; list the tenant ids explicitly"
                )
        return tuple(t.strip() for t in value)

    @field_validator("allowed_service_url_hosts")
    @classmethod
    def _exact_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        hosts = tuple(h.strip().lower() for h in value)
        for host in hosts:
            if not (_HOST_ENTRY.match(host) or _IPV6_ENTRY.match(host)):
                raise ValueError(
                    f"{host!r} is not a host or host:port (no scheme, path or wildcard)"
                )
        return hosts

    @field_validator("issuers")
    @classmethod
    def _some_issuer(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or not all(v.strip() for v in value):
            raise ValueError("at least one non-empty issuer is required")
        return value

    @field_validator("openid_metadata_url", "authority", "graph_url")
    @classmethod
    def _trusted_endpoint(cls, value: str) -> str:
        problem = check_trusted_url(value)
        if problem is not None:
            raise ValueError(problem)
        return value.rstrip("/")

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> Self:
        if not self.enabled:
            return self
        missing = [f"teams.{name}" for name in ("app_id", "tenant_id") if not getattr(self, name)]
        missing += self.auth.missing("teams.auth")
        if missing:
            raise ValueError(f"required when teams.enabled is true: {', '.join(missing)}")
        if self.auth.type == "certificate" and self.uses_loopback_authority:
            raise ValueError(
                "teams.auth.type: a loopback authority (an emulator) takes client_secret "
                "or workload_identity"
            )
        return self

    @property
    def effective_allowed_tenants(self) -> frozenset[str]:
        """The accepted tenant ids (lower case): the explicit list, else the bot's tenant."""
        tenants = self.allowed_tenants or ((self.tenant_id,) if self.tenant_id else ())
        return frozenset(t.lower() for t in tenants)

    @property
    def uses_loopback_authority(self) -> bool:
        return is_loopback_host(urlsplit(self.authority).hostname)

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/{self.tenant_id}/oauth2/v2.0/token"
