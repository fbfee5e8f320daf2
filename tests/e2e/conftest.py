"""End-to-end tests: the daemon as shipped, between a real Synapse and the Teams emulator.

Servers: one Synapse per test session (it loads this package's application-service
registration, whose URL is the port every test's daemon listens on), and one
SecantusDB per test (a fresh server: its write throughput falls after ~10,000
retryable writes, and a flood test makes thousands). Every test collected here
carries the ``e2e`` marker (``-m "not e2e"`` leaves them out).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devtools.servers import MongoServer, SynapseServer
from devtools.teams_emulator import EmulatorKeys
from tests.e2e.stack import Stack, StackServers, open_stack
from tests.integration.matrix_fixtures import SERVER_NAME, MatrixAppService, make_app_service

_E2E_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: runs the whole bridge daemon against real servers and the emulator"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.resolve().is_relative_to(_E2E_DIR):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_app_service(tmp_path_factory: pytest.TempPathFactory) -> MatrixAppService:
    """The bridge's registration; every e2e daemon listens on its port."""
    return make_app_service(tmp_path_factory.mktemp("e2e-appservice"))


@pytest.fixture(scope="session")
def e2e_synapse(
    tmp_path_factory: pytest.TempPathFactory, e2e_app_service: MatrixAppService
) -> Iterator[SynapseServer]:
    with SynapseServer(
        tmp_path_factory.mktemp("e2e-synapse"),
        server_name=SERVER_NAME,
        app_service_config_files=[e2e_app_service.path],
    ) as server:
        yield server


@pytest.fixture(scope="session")
def e2e_keys() -> EmulatorKeys:
    return EmulatorKeys.generate(datetime.now(UTC))


@pytest.fixture
def e2e_mongo(tmp_path: Path) -> Iterator[MongoServer]:
    with MongoServer(tmp_path / "mongo") as server:
        yield server


@pytest.fixture
def servers(
    tmp_path: Path,
    e2e_mongo: MongoServer,
    e2e_synapse: SynapseServer,
    e2e_app_service: MatrixAppService,
    e2e_keys: EmulatorKeys,
) -> StackServers:
    return StackServers(
        mongo=e2e_mongo,
        synapse=e2e_synapse,
        appservice=e2e_app_service,
        keys=e2e_keys,
        workdir=tmp_path,
    )


@pytest.fixture(scope="module")
def module_servers(
    tmp_path_factory: pytest.TempPathFactory,
    e2e_synapse: SynapseServer,
    e2e_app_service: MatrixAppService,
    e2e_keys: EmulatorKeys,
) -> Iterator[StackServers]:
    """Servers for a module whose tests share one running stack."""
    workdir = tmp_path_factory.mktemp("e2e-module")
    with MongoServer(workdir / "mongo") as mongo:
        yield StackServers(
            mongo=mongo,
            synapse=e2e_synapse,
            appservice=e2e_app_service,
            keys=e2e_keys,
            workdir=workdir,
        )


@pytest.fixture
async def chat_stack(servers: StackServers) -> AsyncIterator[Stack]:
    """One Matrix room linked to one Teams group chat."""
    async with open_stack(servers, chats=1) as stack:
        yield stack
