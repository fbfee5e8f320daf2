"""The identity side: the channel's OpenID metadata and keys, and Entra ID's token endpoint.

- ``GET /v1/.well-known/openidconfiguration`` and ``GET /v1/.well-known/keys``: what
  ``login.botframework.com`` publishes; the keys carry ``endorsements``.
- ``POST /{tenant}/oauth2/v2.0/token``: client credentials for the scope
  ``https://api.botframework.com/.default`` (the connector) or
  ``https://graph.microsoft.com/.default`` (Microsoft Graph, app-only: ``aud``
  ``https://graph.microsoft.com`` and ``roles``, the application permissions an
  administrator granted: ``graph_roles``), with the client secret (form fields or
  HTTP Basic) or a workload-identity client assertion. ``tenant`` is the bot's tenant
  or ``botframework.com``. Errors are Entra ID's (``invalid_client`` with
  ``AADSTS7000215`` for a wrong secret, and so on).
- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and
  ``GET /{tenant}/discovery/v2.0/keys``: Entra ID's discovery document and keys.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Final

from aiohttp import web

from devtools.teams_emulator.clock import Clock
from devtools.teams_emulator.faults import FaultKind, FaultPlan
from devtools.teams_emulator.ids import IdFactory
from devtools.teams_emulator.keys import KeySet
from devtools.teams_emulator.records import CallLog, Operation
from devtools.teams_emulator.respond import Holder, Reply, fault_reply
from devtools.teams_emulator.tokens import (
    BOTFRAMEWORK_TENANT,
    BOTFRAMEWORK_TENANT_ID,
    CHANNEL_ISSUER,
    CONNECTOR_AUDIENCE,
    CONNECTOR_SCOPE,
    GRAPH_AUDIENCE,
    GRAPH_SCOPE,
    JWT_BEARER_ASSERTION,
    TOKEN_LIFETIME,
    WORKLOAD_IDENTITY_AUDIENCE,
    Algorithm,
    encode,
    unix,
    verify_rs256,
)

SECRET_FIELDS: Final = frozenset({"client_secret", "client_assertion"})
ASSERTION_LEEWAY: Final = timedelta(minutes=5)


def entra_issuer(tenant_id: str) -> str:
    """``iss`` of Entra ID v1 access tokens (what the connector scope yields)."""
    return f"https://sts.windows.net/{tenant_id}/"


class Identity:
    def __init__(
        self,
        *,
        app_id: str,
        app_password: str,
        tenant_id: str,
        channel_keys: KeySet,
        entra_keys: KeySet,
        workload_keys: KeySet,
        workload_subject: str,
        clock: Clock,
        ids: IdFactory,
        calls: CallLog,
        faults: FaultPlan,
        holder: Holder,
        base_url: Callable[[], str],
    ) -> None:
        self.app_id = app_id
        self.app_password = app_password
        self.tenant_id = tenant_id
        self.channel_keys = channel_keys
        self.entra_keys = entra_keys
        self.workload_keys = workload_keys
        self.workload_subject = workload_subject
        self._clock = clock
        self._ids = ids
        self._calls = calls
        self._faults = faults
        self._holder = holder
        self._base_url = base_url
        self.graph_roles: tuple[str, ...] = ("TeamMember.Read.All",)
        """The Graph application permissions granted to the bot (admin consent)."""

    @property
    def workload_issuer(self) -> str:
        return f"{self._base_url()}/workload-identity"

    @property
    def access_token_issuers(self) -> frozenset[str]:
        return frozenset({entra_issuer(BOTFRAMEWORK_TENANT_ID), entra_issuer(self.tenant_id)})

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/.well-known/openidconfiguration", self.channel_openid_configuration),
            web.get("/v1/.well-known/keys", self.channel_keys_document),
            web.post("/{tenant}/oauth2/v2.0/token", self.token),
            web.get("/{tenant}/v2.0/.well-known/openid-configuration", self.entra_configuration),
            web.get("/{tenant}/discovery/v2.0/keys", self.entra_keys_document),
        ]

    # -- shared ------------------------------------------------------------------

    async def _serve(
        self, request: web.Request, operation: Operation, body: Any, action: Callable[[], Reply]
    ) -> web.Response:
        seq = self._calls.begin(
            method=request.method,
            path=request.path,
            query=request.query_string,
            operation=operation,
            headers=request.headers,
        )
        self._calls.update(seq, body=body)
        fault = self._faults.take(request.method, request.path, seq)
        reply: Reply | None = None
        if fault is not None:
            self._calls.update(seq, fault=fault.kind, committed=fault.committed)
            if fault.kind is not FaultKind.STATUS:
                await self._holder.hold(fault.delay_s)
            if fault.kind is not FaultKind.SLOW:
                reply = fault_reply(fault)
        if reply is None:
            reply = action()
        self._calls.finish(seq, reply.status, reply.payload)
        return reply.to_response()

    def _entra_error(self, status: int, error: str, code: int, description: str) -> Reply:
        trace_id, correlation_id = self._ids.unique("trace"), self._ids.unique("correlation")
        timestamp = self._clock.now().strftime("%Y-%m-%d %H:%M:%SZ")
        return Reply(
            status,
            {
                "error": error,
                "error_description": (
                    f"AADSTS{code}: {description} Trace ID: {trace_id} "
                    f"Correlation ID: {correlation_id} Timestamp: {timestamp}"
                ),
                "error_codes": [code],
                "timestamp": timestamp,
                "trace_id": trace_id,
                "correlation_id": correlation_id,
                "error_uri": f"{self._base_url()}/error?code={code}",
            },
        )

    # -- channel metadata -------------------------------------------------------

    async def channel_openid_configuration(self, request: web.Request) -> web.Response:
        def action() -> Reply:
            return Reply(
                200,
                {
                    "issuer": CHANNEL_ISSUER,
                    "authorization_endpoint": "https://invalid.botframework.com",
                    "jwks_uri": f"{self._base_url()}/v1/.well-known/keys",
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                    "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
                },
            )

        return await self._serve(request, Operation.CHANNEL_OPENID, None, action)

    async def channel_keys_document(self, request: web.Request) -> web.Response:
        return await self._serve(
            request, Operation.CHANNEL_KEYS, None, lambda: Reply(200, self.channel_keys.jwks())
        )

    # -- Entra ID -----------------------------------------------------------------

    async def entra_configuration(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        base = self._base_url()

        def action() -> Reply:
            tid = self._tenant_id(tenant)
            if tid is None:
                return self._entra_error(
                    400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found."
                )
            return Reply(
                200,
                {
                    "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_post",
                        "private_key_jwt",
                        "client_secret_basic",
                    ],
                    "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
                    "response_types_supported": [
                        "code",
                        "id_token",
                        "code id_token",
                        "id_token token",
                    ],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "issuer": f"{base}/{tid}/v2.0",
                    "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
                    "tenant_region_scope": "NA",
                },
            )

        return await self._serve(request, Operation.TOKEN_DISCOVERY, None, action)

    async def entra_keys_document(self, request: web.Request) -> web.Response:
        return await self._serve(
            request, Operation.TOKEN_KEYS, None, lambda: Reply(200, self.entra_keys.jwks())
        )

    def _tenant_id(self, tenant: str) -> str | None:
        if tenant.lower() in (BOTFRAMEWORK_TENANT, BOTFRAMEWORK_TENANT_ID):
            return BOTFRAMEWORK_TENANT_ID
        if tenant.lower() == self.tenant_id.lower():
            return self.tenant_id
        return None

    async def token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        form: Mapping[str, Any] = {}
        if request.content_type == "application/x-www-form-urlencoded":
            form = dict(await request.post())
        else:
            await request.read()
        fields = {k: str(v) for k, v in form.items()}
        recorded = {k: ("***" if k in SECRET_FIELDS else v) for k, v in fields.items()}
        basic = request.headers.get("Authorization", "")
        return await self._serve(
            request, Operation.TOKEN, recorded, lambda: self._issue(tenant, fields, basic)
        )

    def _basic_credentials(self, header: str) -> tuple[str, str] | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        client_id, sep, secret = decoded.partition(":")
        return (client_id, secret) if sep else None

    def _issue(self, tenant: str, fields: Mapping[str, str], basic_header: str) -> Reply:
        tid = self._tenant_id(tenant)
        if tid is None:
            return self._entra_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        grant = fields.get("grant_type")
        if grant != "client_credentials":
            return self._entra_error(
                400, "unsupported_grant_type", 70003, f"The grant type '{grant}' is not supported."
            )
        client_id = fields.get("client_id")
        secret = fields.get("client_secret")
        basic = self._basic_credentials(basic_header)
        if basic is not None:
            client_id, secret = client_id or basic[0], secret or basic[1]
        if client_id != self.app_id:
            return self._entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory.",
            )
        scope = fields.get("scope", "")
        if scope not in (CONNECTOR_SCOPE, GRAPH_SCOPE):
            return self._entra_error(
                400, "invalid_scope", 70011, f"The provided value for scope '{scope}' is not valid."
            )
        assertion_type = fields.get("client_assertion_type")
        if assertion_type is not None:
            if assertion_type != JWT_BEARER_ASSERTION:
                return self._entra_error(
                    400, "invalid_request", 50027, "Invalid client_assertion_type."
                )
            problem = self._assertion_problem(fields.get("client_assertion", ""))
            if problem is not None:
                return self._entra_error(401, "invalid_client", 700213, problem)
            acr = "2"
        else:
            if not secret:
                return self._entra_error(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: "
                    "'client_assertion' or 'client_secret'.",
                )
            if not hmac.compare_digest(secret.encode(), self.app_password.encode()):
                return self._entra_error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the "
                    "request is the client secret value, not the client secret ID.",
                )
            acr = "1"
        return Reply(
            200,
            {
                "token_type": "Bearer",
                "expires_in": int(TOKEN_LIFETIME.total_seconds()),
                "ext_expires_in": int(TOKEN_LIFETIME.total_seconds()),
                "access_token": (
                    self.mint_graph_token(tenant_id=tid, client_auth=acr)
                    if scope == GRAPH_SCOPE
                    else self.mint_access_token(tenant_id=tid, client_auth=acr)
                ),
            },
        )

    def _assertion_problem(self, assertion: str) -> str | None:
        claims, reason = verify_rs256(
            assertion,
            keys=self.workload_keys,
            now=self._clock.now(),
            leeway=ASSERTION_LEEWAY,
        )
        if claims is None:
            return f"Client assertion failed signature or time validation ({reason})."
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if claims.get("iss") != self.workload_issuer or WORKLOAD_IDENTITY_AUDIENCE not in audiences:
            return "No matching federated identity record found for presented assertion issuer."
        if claims.get("sub") != self.workload_subject:
            return "No matching federated identity record found for presented assertion subject."
        return None

    def mint_access_token(self, *, tenant_id: str | None = None, client_auth: str = "1") -> str:
        """An access token for the connector, as the token endpoint issues it."""
        return self._mint_app_token(
            CONNECTOR_AUDIENCE, tenant_id=tenant_id, client_auth=client_auth
        )

    def mint_graph_token(
        self,
        *,
        tenant_id: str | None = None,
        client_auth: str = "1",
        roles: tuple[str, ...] | None = None,
    ) -> str:
        """An app-only Graph token, as the token endpoint issues it (``roles``: the granted
        application permissions, ``graph_roles`` unless given; none: no ``roles`` claim)."""
        granted = self.graph_roles if roles is None else roles
        extra = {"roles": list(granted)} if granted else {}
        return self._mint_app_token(
            GRAPH_AUDIENCE, tenant_id=tenant_id, client_auth=client_auth, extra=extra
        )

    def _mint_app_token(
        self,
        audience: str,
        *,
        tenant_id: str | None,
        client_auth: str,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        tid = tenant_id or self.tenant_id
        now = self._clock.now()
        key = self.entra_keys.current
        service_principal = self._ids.guid("service-principal", self.app_id)
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": entra_issuer(tid),
            "iat": unix(now),
            "nbf": unix(now),
            "exp": unix(now + TOKEN_LIFETIME),
            "aio": self._ids.unique("aio"),
            "appid": self.app_id,
            "appidacr": client_auth,
            "azp": self.app_id,
            "azpacr": client_auth,
            "idp": entra_issuer(tid),
            "idtyp": "app",
            "oid": service_principal,
            "sub": service_principal,
            "tid": tid,
            "uti": self._ids.unique("uti"),
            "ver": "1.0",
            **(extra or {}),
        }
        return encode({"kid": key.kid, "x5t": key.kid}, claims, algorithm=Algorithm.RS256, key=key)

    def mint_workload_token(self, *, subject: str | None = None, lifetime_s: int = 3600) -> str:
        """A projected service-account token as Kubernetes mounts it for workload identity."""
        now = self._clock.now()
        key = self.workload_keys.current
        claims = {
            "aud": [WORKLOAD_IDENTITY_AUDIENCE],
            "iss": self.workload_issuer,
            "sub": subject or self.workload_subject,
            "iat": unix(now),
            "nbf": unix(now),
            "exp": unix(now) + lifetime_s,
        }
        return encode({"kid": key.kid}, claims, algorithm=Algorithm.RS256, key=key)
