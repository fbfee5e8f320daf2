"""An in-process bridge with the Matrix adapter, on the port the session's Synapse calls."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from adapters.matrix import MatrixAdapter, create_adapter
from bridge.clock import SystemClock
from bridge.config import Settings, load_settings
from bridge.ids import UlidFactory
from bridge.metrics import BridgeMetrics
from bridge.relay.intake import Intake
from bridge.runtime import AdapterContext
from bridge.timeline.mongo import MongoTimelineStore
from bridge.timeline.state import MongoStateStore
from devtools.servers import LOOPBACK, MongoServer, SynapseServer
from tests.integration.matrix_fixtures import MatrixAppService
from tests.support.waiting import eventually


@dataclass
class RecordedTransaction:
    txn_id: str
    body: dict[str, Any]
    status: int


@dataclass
class MatrixBridgeHarness:
    """Start, stop and restart a bridge (Matrix side only) against one database."""

    mongo: MongoServer
    synapse: SynapseServer
    appservice: MatrixAppService
    invite_users: tuple[str, ...] = ()
    database: str = field(default_factory=lambda: f"matrix_{uuid.uuid4().hex[:10]}")
    transactions: list[RecordedTransaction] = field(default_factory=list)
    _client: AsyncMongoClient[dict[str, Any]] | None = None
    _runner: web.AppRunner | None = None
    adapter: MatrixAdapter | None = None
    store: MongoTimelineStore | None = None
    state: MongoStateStore | None = None

    def settings(self) -> Settings:
        reg = self.appservice.registration
        env = {
            "BRIDGE__MONGO__URI": self.mongo.uri,
            "BRIDGE__MONGO__DATABASE": self.database,
            "BRIDGE__MATRIX__ENABLED": "true",
            "BRIDGE__MATRIX__HOMESERVER_URL": self.synapse.base_url,
            "BRIDGE__MATRIX__SERVER_NAME": self.synapse.server_name,
            "BRIDGE__MATRIX__AS_ID": reg.as_id,
            "BRIDGE__MATRIX__AS_TOKEN": reg.as_token,
            "BRIDGE__MATRIX__HS_TOKEN": reg.hs_token,
            "BRIDGE__MATRIX__BOT_LOCALPART": reg.bot_localpart,
            "BRIDGE__MATRIX__INVITES__USERS": json.dumps(list(self.invite_users)),
        }
        return load_settings(None, env)

    @web.middleware
    async def _record(
        self,
        request: web.Request,
        handler: Any,
    ) -> web.StreamResponse:
        body: dict[str, Any] = {}
        is_txn = request.method == "PUT" and "/transactions/" in request.path
        if is_txn and request.can_read_body:
            try:
                body = json.loads(await request.read())
            except ValueError:
                body = {}
        response: web.StreamResponse = await handler(request)
        if is_txn:
            txn_id = request.match_info.get("txn_id", "")
            self.transactions.append(RecordedTransaction(txn_id, body, response.status))
        return response

    async def start(self) -> None:
        settings = self.settings()
        clock = SystemClock()
        self._client = AsyncMongoClient(self.mongo.uri, tz_aware=True)
        self.store = MongoTimelineStore(
            self._client, self.database, clock=clock, write_concern=WriteConcern(w=1, j=True)
        )
        await self.store.ensure_indexes()
        self.state = MongoStateStore(self.store.database)
        app = web.Application(middlewares=[self._record])
        ids = UlidFactory()
        metrics = BridgeMetrics()
        context = AdapterContext(
            settings=settings,
            clock=clock,
            ids=ids,
            metrics=metrics,
            store=self.store,
            state=self.state,
            web_app=app,
        )
        self.adapter = create_adapter(context)
        # Tests link rooms in the store directly: read the links on every event.
        intake = Intake(
            store=self.store,
            clock=clock,
            ids=ids,
            metrics=metrics,
            adapters=[self.adapter],
            link_cache_ttl_s=0.0,
        )
        await self.adapter.start(intake)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.appservice.port).start()
        adapter = self.adapter

        async def is_ready() -> bool:
            return adapter.ready

        await eventually(is_ready, within=30, what="the Matrix adapter to be ready")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.adapter is not None:
            await self.adapter.stop()
            self.adapter = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def drop(self) -> None:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.mongo.uri)
        try:
            await client.drop_database(self.database)
        finally:
            await client.close()

    async def replay(self, txn: RecordedTransaction, *, token: str | None = None) -> int:
        """PUT a transaction again, as the homeserver does when it retries."""
        hs_token = token if token is not None else self.appservice.registration.hs_token
        url = f"{self.appservice.url}/_matrix/app/v1/transactions/{txn.txn_id}"
        async with (
            aiohttp.ClientSession() as session,
            session.put(url, json=txn.body, headers={"Authorization": f"Bearer {hs_token}"}) as r,
        ):
            await r.read()
            return r.status
