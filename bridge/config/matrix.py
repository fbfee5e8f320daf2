"""Settings of the Matrix side (an application service)."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, SecretStr, model_validator

from bridge.config.section import Section


class InviteAllowlist(Section):
    users: tuple[str, ...] = ()
    """MXIDs whose invites the bot accepts, e.g. ``@oncall-lead:example.org``."""
    servers: tuple[str, ...] = ()
    """Homeserver names whose users' invites the bot accepts, e.g. ``example.org``."""


class MatrixSettings(Section):
    enabled: bool = False
    homeserver_url: str = ""
    """The homeserver's client-server API base URL, e.g. ``https://matrix.example.org``."""
    server_name: str = ""
    """The homeserver's name (the part after ``:`` in user ids), e.g. ``example.org``."""
    as_id: str = "incident-bridge"
    """The ``id`` of the application-service registration."""
    as_token: SecretStr | None = None
    """The token the bridge presents to the homeserver (from the registration)."""
    hs_token: SecretStr | None = None
    """The token the homeserver presents to the bridge (from the registration)."""
    bot_localpart: str = "incident-bridge"
    bot_displayname: str = "Incident Bridge"
    ghost_prefix: str = "teams_"
    """Ghost users are ``@<prefix><id>:<server_name>``; the registration reserves the prefix."""
    invites: InviteAllowlist = InviteAllowlist()
    """Whose invites the bot accepts; everyone else is declined with a reason."""
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    max_media_bytes: Annotated[int, Field(gt=0)] = 50 * 1024 * 1024
    ghost_cache_size: Annotated[int, Field(ge=16, le=1_000_000)] = 10_000
    """How many ghosts' profile and membership states are kept in memory."""

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> Self:
        if self.enabled:
            missing = [
                f"matrix.{name}"
                for name in ("homeserver_url", "server_name", "as_token", "hs_token")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"required when matrix.enabled is true: {', '.join(missing)}")
        return self
