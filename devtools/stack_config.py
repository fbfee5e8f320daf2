"""Settings the local stack writes for the bridge it starts (all loopback, all throwaway)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adapters.matrix.registration import Registration

TEAMS_APP_ID = "00000000-0000-4000-8000-00000000b07e"
TEAMS_TENANT_ID = "00000000-0000-4000-8000-0000000fe11a"
TEAMS_APP_PASSWORD = "local-stack-app-password"  # noqa: S105 - the emulator's throwaway secret


@dataclass(frozen=True, slots=True, kw_only=True)
class StackSettings:
    mongo_uri: str
    bridge_port: int
    synapse_url: str
    server_name: str
    registration: Registration
    matrix_operator: str
    emulator_base: str
    emulator_host_port: str
    matrix_room: str
    teams_conversation: str

    def to_yaml(self) -> str:
        bridge_url = f"http://127.0.0.1:{self.bridge_port}"
        settings: dict[str, Any] = {
            "mongo": {"uri": self.mongo_uri, "database": "incident_bridge"},
            "http": {"host": "127.0.0.1", "port": self.bridge_port, "public_url": bridge_url},
            "logging": {"format": "json", "level": "info"},
            "matrix": {
                "enabled": True,
                "homeserver_url": self.synapse_url,
                "server_name": self.server_name,
                "as_id": self.registration.as_id,
                "as_token": self.registration.as_token,
                "hs_token": self.registration.hs_token,
                "bot_localpart": self.registration.bot_localpart,
                "invites": {"users": [self.matrix_operator]},
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
            "commands": {"operators": {"matrix": [self.matrix_operator]}},
        }
        header = "# Written by the local stack; see deploy/config.example.yaml for every setting.\n"
        return header + yaml.safe_dump(settings, sort_keys=False)

    def write(self, path: Path) -> None:
        path.write_text(self.to_yaml())
