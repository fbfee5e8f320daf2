"""The settings file an end-to-end test writes for the bridge daemon it starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from adapters.matrix.registration import Registration

TEAMS_APP_ID: Final = "0c1d2e3f-4a5b-4c6d-8e7f-90a1b2c3d4e5"
TEAMS_APP_PASSWORD: Final = "e2e-emulator-app-password"
TEAMS_TENANT_ID: Final = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkedPair:
    """A Matrix room and the Teams conversation (a chat or a channel) it is linked to."""

    matrix_room: str
    teams_conversation: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentOptions:
    """The ``incidents`` section: who is invited, where incident threads start."""

    matrix_responders: Sequence[str] = ()
    teams_channel: str | None = None
    declare_rooms: Sequence[str] = ()
    key_event_reaction: str | None = None
    """None: the bridge's default."""

    def as_dict(self) -> dict[str, Any]:
        section: dict[str, Any] = {
            "matrix_responders": list(self.matrix_responders),
            "declare_rooms": list(self.declare_rooms),
        }
        if self.teams_channel is not None:
            section["teams_channel"] = self.teams_channel
        if self.key_event_reaction is not None:
            section["key_event_reaction"] = self.key_event_reaction
        return section


@dataclass(frozen=True, slots=True, kw_only=True)
class Operators:
    """``commands.operators``: platform ids allowed to run operator commands."""

    matrix: Sequence[str] = ()
    teams: Sequence[str] = ()
    """AAD object ids."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonSettings:
    mongo_uri: str
    database: str
    port: int
    synapse_url: str
    server_name: str
    registration: Registration
    emulator_base: str
    emulator_service_url: str
    openid_metadata_url: str
    links: Sequence[LinkedPair]
    incidents: IncidentOptions | None = None
    operators: Operators | None = None
    api_token: str | None = None
    """The timeline API's bearer token (None: the API is not configured)."""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Merged over everything else, section by section (``{"delivery": {"instance_id": ...}}``)."""

    def as_dict(self) -> dict[str, Any]:
        settings = self._base()
        if self.incidents is not None:
            settings["incidents"] = self.incidents.as_dict()
        if self.operators is not None:
            settings["commands"] = {
                "operators": {
                    "matrix": list(self.operators.matrix),
                    "teams": list(self.operators.teams),
                }
            }
        if self.api_token is not None:
            settings["api"] = {"token": self.api_token}
        return merge_settings(settings, self.overrides)

    def _base(self) -> dict[str, Any]:
        reg = self.registration
        return {
            "mongo": {"uri": self.mongo_uri, "database": self.database},
            "http": {
                "host": "127.0.0.1",
                "port": self.port,
                "public_url": f"http://127.0.0.1:{self.port}",
            },
            "logging": {"format": "json", "level": "info"},
            "shutdown": {"drain_timeout_s": 10},
            "matrix": {
                "enabled": True,
                "homeserver_url": self.synapse_url,
                "server_name": self.server_name,
                "as_id": reg.as_id,
                "as_token": reg.as_token,
                "hs_token": reg.hs_token,
                "bot_localpart": reg.bot_localpart,
                "invites": {"servers": [self.server_name]},
            },
            "teams": {
                "enabled": True,
                "app_id": TEAMS_APP_ID,
                "tenant_id": TEAMS_TENANT_ID,
                "auth": {"type": "client_secret", "client_secret": TEAMS_APP_PASSWORD},
                # The emulator stands in for Microsoft: its keys, issuer, tokens and connector.
                "openid_metadata_url": self.openid_metadata_url,
                "authority": self.emulator_base,
                "allowed_service_url_hosts": [urlsplit(self.emulator_service_url).netloc],
            },
            "links": [
                {"matrix_room": p.matrix_room, "teams_conversation": p.teams_conversation}
                for p in self.links
            ],
        }

    def write(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump(self.as_dict(), sort_keys=False))
        return path


def merge_settings(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: sections key by key, anything else replaced."""
    merged = dict(base)
    for key, value in over.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_settings(current, value)
        else:
            merged[key] = value
    return merged
