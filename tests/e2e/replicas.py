"""Several bridge daemons behind a round-robin proxy: the replicas of one Deployment.

``open_replicas`` sets up the platforms as ``open_stack`` does, puts a
``RoundRobinProxy`` on the port that the homeserver's registration and the Teams
emulator's bot endpoint name (the Service), and starts the replicas: daemons sharing
one MongoDB database, one Synapse and one emulator, each on its own port with its own
``delivery.instance_id`` (the pod name) and the proxy's URL as its public URL. The
proxy polls each replica's ``/readyz`` and routes every request (Teams activities and
the homeserver's transactions alike) only to ready ones, as a Service's endpoints follow
a readiness probe.

``add_replica`` starts one more the way a Deployment's rollout does (the proxy routes
to it once its readiness passes); ``terminate`` stops one the way Kubernetes does
(SIGTERM) and measures what a rollout depends on; ``kill`` is a crash (SIGKILL).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp

from devtools.servers import free_port
from tests.e2e.daemon import BridgeDaemon
from tests.e2e.settings import merge_settings
from tests.e2e.stack import (
    SETTLE_WITHIN_S,
    Platforms,
    Stack,
    StackServers,
    install_bot,
    open_platforms,
)
from tests.support.http_proxy import RoundRobinProxy
from tests.support.waiting import eventually

PROXY_POLL_S: Final = 0.25
"""How often the proxy asks each replica's ``/readyz`` (a readiness probe's period)."""
ROUTED_WITHIN_S: Final = 30.0
"""From a replica's own readiness to the proxy routing to it."""
READINESS_POLL_S: Final = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class Replica:
    name: str
    """Its ``delivery.instance_id`` and its name in the proxy."""
    daemon: BridgeDaemon

    @property
    def url(self) -> str:
        return self.daemon.base_url


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopped:
    """How one replica stopped after SIGTERM (seconds after the signal)."""

    name: str
    not_ready_after_s: float
    """Until its own ``/readyz`` first answered something other than 200."""
    unrouted_after_s: float
    """Until the proxy marked it down."""
    exit_code: int
    exited_after_s: float


class ReplicaStack(Stack):
    """A stack whose bridge is several replicas behind ``proxy``; ``daemon`` is the first
    replica (``replicas`` has them all, ``live`` the names of those meant to run)."""

    def __init__(
        self,
        *,
        servers: StackServers,
        platforms: Platforms,
        proxy: RoundRobinProxy,
        overrides: Mapping[str, Any],
    ) -> None:
        self.proxy = proxy
        self.replicas: dict[str, Replica] = {}
        self.live: list[str] = []
        self._platforms = platforms
        self._overrides = overrides
        self._workdir = servers.workdir
        first = self.new_replica()
        super().__init__(
            servers=servers,
            session=platforms.session,
            emulator=platforms.emulator,
            daemon=first.daemon,
            matrix=platforms.matrix,
            matrix_token=platforms.matrix_token,
            teams_users=platforms.teams_users,
            pairs=platforms.pairs,
            mongo=platforms.mongo,
            incident_channel=platforms.incident_channel,
            api_token=platforms.api_token,
        )

    def new_replica(self) -> Replica:
        """A replica with the next name and a free port, not started."""
        name = f"bridge-{len(self.replicas)}"
        port = free_port()
        overrides = {
            "http": {"public_url": self.proxy.url},
            "delivery": {"instance_id": name},
        }
        settings = replace(
            self._platforms.settings,
            port=port,
            overrides=merge_settings(self._overrides, overrides),
        )
        daemon = BridgeDaemon(
            config=settings.write(self._workdir / f"{name}.yaml"),
            port=port,
            log_path=self._workdir / f"{name}.log",
        )
        replica = Replica(name=name, daemon=daemon)
        self.replicas[name] = replica
        return replica

    # -- replicas -------------------------------------------------------------------
    async def start(self, replica: Replica) -> None:
        """Start a made replica; return once the proxy routes to it."""
        self.proxy.add(replica.name, replica.url)
        await replica.daemon.start(self.session)
        self.live.append(replica.name)
        await self.proxy.wait_until(replica.name, up=True, within=ROUTED_WITHIN_S)

    async def add_replica(self) -> Replica:
        """A new replica (new port, new instance id), routed to once it is ready."""
        replica = self.new_replica()
        await self.start(replica)
        return replica

    async def kill(self, name: str) -> None:
        """SIGKILL, left dead and left in the proxy (which skips it)."""
        await self.replicas[name].daemon.kill()
        self.live.remove(name)

    async def terminate(self, name: str, *, not_ready_within: float, exit_within: float) -> Stopped:
        """SIGTERM, as Kubernetes stops a pod: measures when its readiness fails, when the
        proxy stops routing to it and when it exits; then takes it out of the proxy."""
        daemon = self.replicas[name].daemon
        self.live.remove(name)
        signalled = time.monotonic()
        daemon.terminate()
        exited = asyncio.get_running_loop().create_task(self._exit(daemon, exit_within))
        try:
            not_ready = await self._not_ready(daemon, signalled, not_ready_within)
            await self.proxy.wait_until(name, up=False, within=exit_within)
            code, exited_at = await exited
        finally:
            exited.cancel()
            await asyncio.gather(exited, return_exceptions=True)
        self.proxy.remove(name)
        unrouted = self.proxy.marked_down_at(name, after=signalled)
        assert unrouted is not None
        return Stopped(
            name=name,
            not_ready_after_s=not_ready - signalled,
            unrouted_after_s=unrouted - signalled,
            exit_code=code,
            exited_after_s=exited_at - signalled,
        )

    async def _exit(self, daemon: BridgeDaemon, within: float) -> tuple[int, float]:
        code = await daemon.wait_exit(within)
        return code, time.monotonic()

    async def _not_ready(self, daemon: BridgeDaemon, since: float, within: float) -> float:
        """When ``/readyz`` first answered other than 200 (polled every 10 ms)."""

        async def probe() -> float | None:
            try:
                async with self.session.get(f"{daemon.base_url}/readyz") as response:
                    await response.read()
                    ready = response.status == 200
            except aiohttp.ClientError:
                ready = False
            return None if ready else time.monotonic()

        try:
            return await eventually(
                probe, within=within, interval=READINESS_POLL_S, what="/readyz to fail"
            )
        except AssertionError:
            raise AssertionError(
                f"{daemon.base_url}/readyz still 200 {time.monotonic() - since:.1f} s "
                f"after SIGTERM\n{daemon.tail()}"
            ) from None

    # -- the whole ------------------------------------------------------------------
    def ensure_alive(self) -> None:
        for name in self.live:
            self.replicas[name].daemon.ensure_alive()

    async def settled(self, *, within: float = SETTLE_WITHIN_S) -> None:
        """Nothing left to deliver and no running replica holding a room (a dead one's
        expired leases stay on record until a room needs them)."""

        async def drained() -> bool:
            self.ensure_alive()
            held = await self.database["outbox_leases"].count_documents(
                {"owner": {"$in": list(self.live)}}
            )
            return held == 0 and await self.queued_count() == 0

        await eventually(drained, within=within, interval=0.1, what="the outbox to drain")

    async def lease_owners(self) -> dict[str, str]:
        """Room key -> the owner of its live lease."""
        now = datetime.now(UTC)
        docs = self.database["outbox_leases"].find({"owner": {"$ne": ""}, "until": {"$gt": now}})
        return {str(d["_id"]): str(d["owner"]) async for d in docs}

    def log_text(self) -> str:
        return "\n".join(r.daemon.log_text() for r in self.replicas.values())

    async def close(self) -> None:
        """Stop every replica that still runs (in parallel)."""
        await asyncio.gather(
            *(r.daemon.close() for r in self.replicas.values()), return_exceptions=False
        )


@asynccontextmanager
async def open_replicas(
    servers: StackServers,
    *,
    replicas: int = 3,
    chats: int = 2,
    overrides: Callable[[Platforms], Mapping[str, Any]] | None = None,
) -> AsyncIterator[ReplicaStack]:
    """``replicas`` daemons behind the proxy, ``chats`` linked group-chat pairs;
    ``overrides`` makes the settings every replica gets (see ``DaemonSettings.overrides``)
    once the platforms are set up (the users' ids known)."""
    async with (
        open_platforms(servers, chats=chats) as platforms,
        RoundRobinProxy(
            port=servers.appservice.port,
            poll_interval_s=PROXY_POLL_S,
        ) as proxy,
    ):
        stack = ReplicaStack(
            servers=servers,
            platforms=platforms,
            proxy=proxy,
            overrides=overrides(platforms) if overrides is not None else {},
        )
        try:
            made = [*stack.replicas.values(), *(stack.new_replica() for _ in range(replicas - 1))]
            await asyncio.gather(*(stack.start(r) for r in made))
            await install_bot(stack)
            yield stack
        finally:
            await stack.close()
