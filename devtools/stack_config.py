"""Settings the local stack writes for the bridge it starts (all loopback, all throwaway).

Besides the link of the demo room pair it configures incidents (new incidents get a
Matrix room with the demo user invited and a thread in the emulator's incident
channel; the demo user and one Teams user are operators) and the demo runbook catalog
with two roles, so one person requests a run and another approves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from adapters.matrix.registration import Registration

TEAMS_APP_ID: Final = "00000000-0000-4000-8000-00000000b07e"
TEAMS_TENANT_ID: Final = "00000000-0000-4000-8000-0000000fe11a"
TEAMS_APP_PASSWORD: Final = "local-stack-app-password"  # noqa: S105 - the emulator's throwaway secret
DEMO_RUNBOOKS: Final = Path(__file__).resolve().parent / "demo_runbooks"
"""The demo runbook catalog (``service-check``: an ``exec`` runbook needing one approval)."""
RESPONDERS_ROLE: Final = "responders"
"""Who may request runs of the demo runbooks."""
LEADS_ROLE: Final = "leads"
"""Who may approve them (never the requester of the run)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StackPeople:
    """Who the stack's settings name, by platform id."""

    matrix_operator: str
    """The demo Matrix user: operator, incident responder, in both runbook roles."""
    teams_operator: str
    """The AAD object id of a Teams user who is an operator and in both runbook roles."""
    teams_responders: Sequence[str] = ()
    """AAD object ids of further Teams users who may request runs (not approve them)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StackSettings:
    mongo_uri: str
    bridge_port: int
    synapse_url: str
    server_name: str
    registration: Registration
    people: StackPeople
    emulator_base: str
    emulator_host_port: str
    matrix_room: str
    teams_conversation: str
    incident_channel: str
    """The emulator's channel in which each incident gets its thread."""
    api_token: str
    """The bearer token of the timeline API and the incident pages."""
    runbooks_dir: Path = DEMO_RUNBOOKS

    def as_dict(self) -> dict[str, Any]:
        bridge_url = f"http://127.0.0.1:{self.bridge_port}"
        people = self.people
        return {
            "mongo": {"uri": self.mongo_uri, "database": "incident_bridge"},
            "http": {"host": "127.0.0.1", "port": self.bridge_port, "public_url": bridge_url},
            "logging": {"format": "json", "level": "info"},
            "shutdown": {"drain_timeout_s": 5},
            "matrix": {
                "enabled": True,
                "homeserver_url": self.synapse_url,
                "server_name": self.server_name,
                "as_id": self.registration.as_id,
                "as_token": self.registration.as_token,
                "hs_token": self.registration.hs_token,
                "bot_localpart": self.registration.bot_localpart,
                "invites": {"users": [people.matrix_operator]},
            },
            "teams": {
                "enabled": True,
                "app_id": TEAMS_APP_ID,
                "tenant_id": TEAMS_TENANT_ID,
                "auth": {"type": "client_secret", "client_secret": TEAMS_APP_PASSWORD},
                # The emulator stands in for Microsoft: its keys, issuer and tokens.
                "openid_metadata_url": f"{self.emulator_base}/v1/.well-known/openidconfiguration",
                "authority": self.emulator_base,
                "allowed_service_url_hosts": [self.emulator_host_port],
            },
            "links": [
                {"matrix_room": self.matrix_room, "teams_conversation": self.teams_conversation}
            ],
            "commands": {
                "operators": {
                    "matrix": [people.matrix_operator],
                    "teams": [people.teams_operator],
                }
            },
            "incidents": {
                "matrix_responders": [people.matrix_operator],
                "teams_channel": self.incident_channel,
            },
            "api": {"token": self.api_token},
            "runbooks": {
                "catalog_dir": str(self.runbooks_dir),
                "roles": {
                    RESPONDERS_ROLE: {
                        "mxids": [people.matrix_operator],
                        "aad_object_ids": [people.teams_operator, *people.teams_responders],
                    },
                    LEADS_ROLE: {
                        "mxids": [people.matrix_operator],
                        "aad_object_ids": [people.teams_operator],
                    },
                },
            },
        }

    def to_yaml(self) -> str:
        header = "# Written by the local stack; see deploy/config.example.yaml for every setting.\n"
        return header + yaml.safe_dump(self.as_dict(), sort_keys=False)

    def write(self, path: Path) -> None:
        path.write_text(self.to_yaml())
