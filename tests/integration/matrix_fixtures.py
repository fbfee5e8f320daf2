"""Shared set-up for tests that run the Matrix adapter against the session's Synapse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from adapters.matrix.registration import Registration, build_registration
from devtools.servers import LOOPBACK, free_port

SERVER_NAME = "localhost"


@dataclass(frozen=True)
class MatrixAppService:
    """The registration the session's Synapse loads, and where the bridge must listen."""

    registration: Registration
    path: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def make_app_service(directory: Path) -> MatrixAppService:
    port = free_port()
    registration = build_registration(url=f"http://{LOOPBACK}:{port}", server_name=SERVER_NAME)
    path = directory / "registration.yaml"
    path.write_text(yaml.safe_dump(registration.to_yaml_dict(), sort_keys=False))
    return MatrixAppService(registration=registration, path=path, port=port)
