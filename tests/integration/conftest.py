"""Real servers for the integration tests, each started once per test session.

Every test collected under this directory carries the ``integration`` marker.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from devtools.servers import MongoServer, SynapseServer
from tests.integration.matrix_fixtures import MatrixAppService, make_app_service

_INTEGRATION_DIR = Path(__file__).resolve().parent

SYNAPSE_SERVER_NAME = "localhost"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.resolve().is_relative_to(_INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


def build_synapse(config_dir: Path, app_service_config_files: Sequence[Path] = ()) -> SynapseServer:
    """A not yet started Synapse that loads the given application-service registrations."""
    return SynapseServer(
        config_dir,
        server_name=SYNAPSE_SERVER_NAME,
        app_service_config_files=list(app_service_config_files),
    )


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """One SecantusDB for the session; a test that stops it must start it again."""
    with MongoServer(tmp_path_factory.mktemp("mongo")) as server:
        yield server


@pytest.fixture(scope="session")
def matrix_app_service(tmp_path_factory: pytest.TempPathFactory) -> MatrixAppService:
    """The bridge's application-service registration, loaded by the session's Synapse."""
    return make_app_service(tmp_path_factory.mktemp("appservice"))


@pytest.fixture(scope="session")
def synapse_app_service_files(matrix_app_service: MatrixAppService) -> list[Path]:
    """Registration files the session's Synapse loads."""
    return [matrix_app_service.path]


@pytest.fixture(scope="session")
def synapse_server(
    tmp_path_factory: pytest.TempPathFactory, synapse_app_service_files: list[Path]
) -> Iterator[SynapseServer]:
    """One Synapse homeserver for the session."""
    config_dir = tmp_path_factory.mktemp("synapse")
    with build_synapse(config_dir, synapse_app_service_files) as server:
        yield server
