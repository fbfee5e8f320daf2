"""The application-service registration the homeserver loads."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from adapters.matrix.ids import GhostNamespace


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    as_id: str
    url: str
    """Where the homeserver reaches the bridge (its public URL)."""
    as_token: str
    hs_token: str
    namespace: GhostNamespace
    bot_localpart: str

    def to_yaml_dict(self) -> dict[str, Any]:
        return {
            "id": self.as_id,
            "url": self.url,
            "as_token": self.as_token,
            "hs_token": self.hs_token,
            "sender_localpart": self.bot_localpart,
            # Ghosts send at the pace of Teams users; the homeserver's default
            # per-user limit (0.2 msg/s) would stall a busy incident room.
            "rate_limited": False,
            "namespaces": {
                "users": [{"exclusive": True, "regex": self.namespace.user_regex()}],
                "aliases": [],
                "rooms": [],
            },
            "receive_ephemeral": False,
        }


def new_token() -> str:
    return secrets.token_urlsafe(48)


def build_registration(
    *,
    url: str,
    server_name: str,
    as_id: str = "incident-bridge",
    bot_localpart: str = "incident-bridge",
    ghost_prefix: str = "teams_",
    as_token: str | None = None,
    hs_token: str | None = None,
) -> Registration:
    return Registration(
        as_id=as_id,
        url=url,
        as_token=as_token or new_token(),
        hs_token=hs_token or new_token(),
        namespace=GhostNamespace(
            prefix=ghost_prefix, server_name=server_name, bot_localpart=bot_localpart
        ),
        bot_localpart=bot_localpart,
    )
