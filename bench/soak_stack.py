"""The soak's world: SecantusDB, Synapse, the Teams emulator and the daemon, all on loopback.

``open_soak_stack`` starts, in order: SecantusDB and Synapse (child processes, Synapse
loading the bridge's application-service registration), the Teams emulator (in this
process; Teams' rate limits on; one channel token reused, as Teams does), two Teams
users and ``rooms`` group chats, a Matrix operator with one private room per chat (the
bot invited), a runbook catalog with one ``exec`` runbook, the settings file, and the
daemon itself (``python -m bridge run``, in its own session, so a Ctrl-C in the terminal
reaches this process, which stops it in order). Then the bot is installed in each chat
and has joined each Matrix room. Everything started is stopped on the way out, whatever
happened; each stop is bounded. The daemon's MongoDB URI turns retryable writes off
(see ``NO_RETRYABLE_WRITES``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import yaml
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from adapters.matrix.registration import Registration, build_registration
from bench.protocol import APP_ID, APP_PASSWORD, TENANT_ID
from bench.soak_matrix import MatrixClient
from bridge.tasks import finish_despite_cancel
from devtools.servers import LOOPBACK, MongoServer, SynapseServer, free_port
from devtools.teams_emulator import Conversation, TeamsEmulator, User

ROOT: Final = Path(__file__).resolve().parents[1]
SERVER_NAME: Final = "soak.test"
DATABASE: Final = "incident_bridge_soak"
RUNBOOK: Final = "soak-probe"
READY_WITHIN_S: Final = 90.0
STOP_WITHIN_S: Final = 30.0
JOIN_WITHIN_S: Final = 60.0
POLL_S: Final = 0.2
BOT_POWER_LEVEL: Final = 50
"""Enough for the bot to publish the bridge metadata state events."""
HTTP_TIMEOUT: Final = aiohttp.ClientTimeout(total=30.0)
NO_RETRYABLE_WRITES: Final = "&retryWrites=false"
"""SecantusDB slows down fourfold after 10,000 retryable writes (it sorts its table of
them on every write), which a soak passes in a few minutes; the daemon's own retry of a
failed write is not what the soak measures, so the driver's is turned off."""
TOKEN_REUSE_S: Final = 50 * 60.0
"""A channel token lives an hour; Teams signs a new one before it runs out."""

PROBE: Final = """\
import os, platform, sys, time
lines = int(sys.argv[1])
for n in range(lines):
    print("probe line", n + 1, "of", lines, "on", platform.node(), "pid", os.getpid(), flush=True)
    time.sleep(0.2)
"""
"""What the runbook runs: a few lines of output over a second or so, then exit 0."""


class TeamsLikeEmulator(TeamsEmulator):
    """The emulator signing activities as Teams does: one channel token per service URL,
    used until it nears its expiry (by default the emulator signs each activity anew, so
    the bridge would cache one verified token per second of traffic: not what Teams
    makes it do)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reused_tokens: dict[str | None, tuple[str, float]] = {}

    def mint_token(self, *, service_url: str | None = None, **overrides: Any) -> str:
        if overrides:
            return super().mint_token(service_url=service_url, **overrides)
        cached = self._reused_tokens.get(service_url)
        if cached is not None and time.monotonic() - cached[1] < TOKEN_REUSE_S:
            return cached[0]
        token = super().mint_token(service_url=service_url)
        self._reused_tokens[service_url] = (token, time.monotonic())
        return token


class DaemonExitedError(RuntimeError):
    """The daemon stopped on its own."""


class Daemon:
    """The bridge daemon as a child process in its own session, logging to a file."""

    def __init__(self, *, config: Path, port: int, log_path: Path) -> None:
        self.config = config
        self.port = port
        self.log_path = log_path
        self.base_url = f"http://{LOOPBACK}:{port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the daemon was never started")
        return self._proc.pid

    def ensure_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = self._proc.returncode if self._proc is not None else None
            raise DaemonExitedError(f"the bridge exited with code {code}; see {self.log_path}")

    async def start(self, session: aiohttp.ClientSession) -> None:
        """Start it and return once ``/readyz`` answers 200."""
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE__")}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(  # noqa: S603, ASYNC220 - our own argv; returns at once
                [sys.executable, "-m", "bridge", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            self.ensure_alive()
            try:
                async with session.get(f"{self.base_url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(POLL_S)  # another process's state: polled
        raise RuntimeError(f"the bridge was not ready within {READY_WITHIN_S:g} s")

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``STOP_WITHIN_S``; the exit code (None if killed)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else None
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(proc.wait, STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, STOP_WITHIN_S)
            return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pair:
    matrix_room: str
    teams: Conversation


@dataclass(frozen=True, slots=True, kw_only=True)
class SoakStack:
    workdir: Path
    registration: Registration
    synapse: SynapseServer
    mongo_server: MongoServer
    database: AsyncDatabase[dict[str, Any]]
    session: aiohttp.ClientSession
    emulator: TeamsLikeEmulator
    daemon: Daemon
    matrix: MatrixClient
    teams_users: tuple[User, User]
    """The first one is a runbook operator."""
    pairs: tuple[Pair, ...]

    @property
    def emulator_port(self) -> int:
        return urlsplit(self.emulator.base_url).port or 0

    def is_bridge(self, mxid: str) -> bool:
        return self.registration.namespace.is_own(mxid)


def _settings(
    *,
    port: int,
    registration: Registration,
    mongo_uri: str,
    synapse: SynapseServer,
    emulator: TeamsEmulator,
    pairs: tuple[Pair, ...],
    catalog: Path,
) -> dict[str, Any]:
    return {
        "mongo": {"uri": mongo_uri, "database": DATABASE},
        "http": {"host": LOOPBACK, "port": port, "public_url": f"http://{LOOPBACK}:{port}"},
        "logging": {"format": "json", "level": "info"},
        "shutdown": {"drain_timeout_s": 10},
        "matrix": {
            "enabled": True,
            "homeserver_url": synapse.base_url,
            "server_name": SERVER_NAME,
            "as_id": registration.as_id,
            "as_token": registration.as_token,
            "hs_token": registration.hs_token,
            "bot_localpart": registration.bot_localpart,
            "invites": {"servers": [SERVER_NAME]},
        },
        "teams": {
            "enabled": True,
            "app_id": APP_ID,
            "tenant_id": TENANT_ID,
            "auth": {"type": "client_secret", "client_secret": APP_PASSWORD},
            "openid_metadata_url": emulator.openid_metadata_url,
            "authority": emulator.token_authority,
            "allowed_service_url_hosts": [urlsplit(emulator.service_url).netloc],
        },
        "links": [
            {"matrix_room": p.matrix_room, "teams_conversation": p.teams.conversation_id}
            for p in pairs
        ],
        "runbooks": {"catalog_dir": str(catalog)},
    }


def _write_catalog(directory: Path, *, teams_operator: User, matrix_operator: str) -> Path:
    catalog = directory / "runbooks"
    catalog.mkdir()
    probe = directory / "probe.py"
    probe.write_text(PROBE)
    definition = {
        "name": RUNBOOK,
        "description": "Print a few lines about the host, then exit.",
        "params": [{"name": "lines", "type": "integer", "default": 3, "minimum": 1, "maximum": 20}],
        "access": {
            "aad_object_ids": [teams_operator.aad_object_id],
            "mxids": [matrix_operator],
        },
        "timeout": "30s",
        "outside_incident": True,
        "executor": {
            "type": "exec",
            "argv": [sys.executable, str(probe), "{lines}"],
            "inherit_env": ["PATH", "LANG", "TZ"],
            "max_output_bytes": 8192,
        },
    }
    (catalog / f"{RUNBOOK}.yaml").write_text(yaml.safe_dump(definition, sort_keys=False))
    return catalog


async def _start_server(stack: AsyncExitStack, server: MongoServer | SynapseServer) -> None:
    """Start a server process; its stop is registered first, and a start in progress is
    finished before a cancellation goes on, so no process is left behind."""
    stack.push_async_callback(asyncio.to_thread, server.stop)
    await finish_despite_cancel(asyncio.to_thread(server.start))


async def _wait_joined(matrix: MatrixClient, room: str, bot: str) -> None:
    deadline = time.monotonic() + JOIN_WITHIN_S
    while await matrix.membership(room, bot) != "join":
        if time.monotonic() >= deadline:
            raise RuntimeError(f"the bot did not join {room} within {JOIN_WITHIN_S:g} s")
        await asyncio.sleep(POLL_S)  # the homeserver's state: polled


@asynccontextmanager
async def open_soak_stack(workdir: Path, *, rooms: int) -> AsyncIterator[SoakStack]:
    """See the module docstring."""
    async with AsyncExitStack() as stack:
        port = free_port()
        registration = build_registration(url=f"http://{LOOPBACK}:{port}", server_name=SERVER_NAME)
        registration_path = workdir / "registration.yaml"
        registration_path.write_text(yaml.safe_dump(registration.to_yaml_dict(), sort_keys=False))
        mongo_server = MongoServer(workdir / "mongo")
        await _start_server(stack, mongo_server)
        synapse = SynapseServer(
            workdir / "synapse",
            server_name=SERVER_NAME,
            app_service_config_files=[registration_path],
        )
        await _start_server(stack, synapse)
        session = await stack.enter_async_context(aiohttp.ClientSession(timeout=HTTP_TIMEOUT))
        emulator = await stack.enter_async_context(
            TeamsLikeEmulator(
                APP_ID,
                APP_PASSWORD,
                TENANT_ID,
                bot_endpoint=f"http://{LOOPBACK}:{port}/api/messages",
            )
        )
        avery, blake = emulator.add_user("Avery Teams"), emulator.add_user("Blake Teams")
        user_id, access_token = await asyncio.to_thread(
            synapse.register_user, "operator", "soak-operator-password"
        )
        matrix = MatrixClient(session, synapse.base_url, user_id, access_token)
        await matrix.set_display_name("Mara Matrix")
        bot = str(registration.namespace.bot)
        pairs = tuple(
            [
                Pair(
                    matrix_room=await matrix.create_room(
                        name=f"soak room {n}", invite=bot, power_level=BOT_POWER_LEVEL
                    ),
                    teams=emulator.add_chat([avery, blake], topic=f"soak chat {n}"),
                )
                for n in range(rooms)
            ]
        )
        catalog = _write_catalog(workdir, teams_operator=avery, matrix_operator=user_id)
        mongo_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            mongo_server.uri, tz_aware=True
        )
        stack.push_async_callback(mongo_client.close)
        config = workdir / "bridge.yaml"
        settings = _settings(
            port=port,
            registration=registration,
            mongo_uri=mongo_server.uri + NO_RETRYABLE_WRITES,
            synapse=synapse,
            emulator=emulator,
            pairs=pairs,
            catalog=catalog,
        )
        config.write_text(yaml.safe_dump(settings, sort_keys=False))
        daemon = Daemon(config=config, port=port, log_path=workdir / "bridge.log")
        stack.push_async_callback(daemon.stop)
        await daemon.start(session)
        for pair in pairs:
            installed, added = await emulator.install_bot(pair.teams)
            if not (installed.ok and added.ok):
                raise RuntimeError(f"installing the bot: {installed.status}, {added.status}")
            await _wait_joined(matrix, pair.matrix_room, bot)
        yield SoakStack(
            workdir=workdir,
            registration=registration,
            synapse=synapse,
            mongo_server=mongo_server,
            database=mongo_client[DATABASE],
            session=session,
            emulator=emulator,
            daemon=daemon,
            matrix=matrix,
            teams_users=(avery, blake),
            pairs=pairs,
        )
