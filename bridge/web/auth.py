"""Who may read incidents over HTTP: the API's bearer token, or a signed page link.

The token comes from ``settings.api`` (a Kubernetes Secret in production). Every
comparison is constant-time. Without a configured token the API and the pages answer
503: incidents are never served unguarded. A page link carries
``?key=<HMAC-SHA256 of the incident id, keyed with the token>``, so a browser opened
from a chat message can read that one incident and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from bridge.config.core import ApiSettings
from bridge.model import IncidentID

_BEARER = "bearer "


class AccessDeniedError(Exception):
    """The request does not carry a valid credential (401)."""


class AccessUnconfiguredError(Exception):
    """No API token is configured, so nothing can be served (503)."""


@dataclass(frozen=True, slots=True)
class ApiAuth:
    token: str | None
    """The API's bearer token; None when not configured."""

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> ApiAuth:
        secret = settings.token.get_secret_value() if settings.token is not None else ""
        return cls(token=secret or None)

    def _configured(self) -> str:
        if self.token is None:
            raise AccessUnconfiguredError
        return self.token

    def check_bearer(self, request: web.Request) -> None:
        """Return if the request's ``Authorization: Bearer`` header holds the token."""
        token = self._configured()
        header = request.headers.get("Authorization", "")
        if not header[: len(_BEARER)].lower() == _BEARER:
            raise AccessDeniedError
        given = header[len(_BEARER) :].strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise AccessDeniedError

    def check_page(self, request: web.Request, incident_id: IncidentID) -> None:
        """Return if the request holds the bearer token or the incident's page key."""
        token = self._configured()
        key = request.query.get("key")
        if key is None:
            self.check_bearer(request)
            return
        expected = page_key(token, incident_id)
        if not hmac.compare_digest(key.encode(), expected.encode()):
            raise AccessDeniedError


def page_key(token: str, incident_id: IncidentID) -> str:
    """The ``key`` of an incident's page link: HMAC-SHA256 of its id, keyed with the token."""
    return hmac.new(token.encode(), incident_id.encode(), hashlib.sha256).hexdigest()


def incident_page_link(base_url: str, incident_id: IncidentID, api: ApiSettings) -> str | None:
    """A link to the incident's page that a browser can open (for chat messages).

    ``base_url`` is the daemon's public URL (``settings.http.public_url``). None when
    no API token is configured (the page could not be served).
    """
    token = ApiAuth.from_settings(api).token
    if token is None:
        return None
    path = quote(incident_id, safe="")
    return f"{base_url.rstrip('/')}/incidents/{path}?key={page_key(token, incident_id)}"
