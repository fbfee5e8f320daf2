"""The application-service HTTP API the homeserver calls, mounted on the daemon's web app.

Authentication is ``Authorization: Bearer <hs_token>`` only (compared in
constant time); a token in the query string or anything else gets 403
``M_FORBIDDEN`` before any work is done. A transaction is acknowledged only
after its events are stored and its id recorded; a storage failure answers 503
so the homeserver retries. An id this process acknowledged lately is
acknowledged again without processing. Any other replay (after a restart, or
first taken by another replica) is processed again, which stores nothing twice:
the timeline's origin key makes every event of it a duplicate. So the first
sight of a transaction costs no lookup.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog
from aiohttp import web

from bridge.errors import StoreError
from bridge.ports import Clock, StateStore

log = structlog.get_logger(__name__)

TRANSACTIONS_NAMESPACE = "matrix_transactions"
MAX_TRANSACTION_BYTES = 64 * 1024 * 1024
RECENT_TRANSACTIONS = 1024

TransactionHandler = Callable[[Sequence[Mapping[str, Any]]], Awaitable[None]]


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


class AppServiceEndpoints:
    """Routes of the AS API; ``on_transaction`` stores a transaction's events durably."""

    def __init__(
        self,
        *,
        hs_token: str,
        state: StateStore,
        clock: Clock,
        on_transaction: TransactionHandler,
        accepting: Callable[[], bool],
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        """``on_refused`` is called whenever a transaction is refused for now (503): the
        homeserver then backs off, for up to minutes, unless it is pinged."""
        self._hs_token = hs_token.encode()
        self._state = state
        self._clock = clock
        self._on_transaction = on_transaction
        self._accepting = accepting
        self._on_refused = on_refused
        self._recent: OrderedDict[str, None] = OrderedDict()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put("/_matrix/app/v1/transactions/{txn_id}", self._transaction),
            web.put("/transactions/{txn_id}", self._transaction),  # legacy path
            web.post("/_matrix/app/v1/ping", self._ping),
            web.get("/_matrix/app/v1/users/{user_id}", self._query),
            web.get("/users/{user_id}", self._query),
            web.get("/_matrix/app/v1/rooms/{alias}", self._query),
            web.get("/rooms/{alias}", self._query),
        ]

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        # compare_digest on equal-length inputs does not leak where they differ.
        return hmac.compare_digest(presented, self._hs_token) and bool(presented)

    async def _transaction(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            log.warning("appservice_forbidden", path=request.path)
            return _error(403, "M_FORBIDDEN", "bad or missing homeserver token")
        if not self._accepting():
            self._on_refused()
            return _error(503, "M_UNKNOWN", "the bridge is shutting down")
        txn_id = request.match_info["txn_id"]
        with structlog.contextvars.bound_contextvars(platform="matrix", txn_id=txn_id):
            try:
                if txn_id in self._recent:
                    log.info("transaction_replayed")
                    return web.json_response({})
                if request.content_length and request.content_length > MAX_TRANSACTION_BYTES:
                    return _error(413, "M_TOO_LARGE", "transaction too large")
                try:
                    body = await request.json()
                except ValueError:
                    return _error(400, "M_NOT_JSON", "the body is not JSON")
                events = body.get("events") if isinstance(body, dict) else None
                if not isinstance(events, list):
                    return _error(400, "M_BAD_JSON", "events must be a list")
                await self._on_transaction([e for e in events if isinstance(e, dict)])
                await self._state.insert_once(
                    TRANSACTIONS_NAMESPACE,
                    txn_id,
                    {"received_at": self._clock.now(), "events": len(events)},
                )
                self._remember(txn_id)
            except StoreError:
                log.warning("transaction_not_stored")
                self._on_refused()
                return _error(503, "M_UNKNOWN", "storage unavailable; retry later")
            log.debug("transaction_stored", events=len(events))
            return web.json_response({})

    def _remember(self, txn_id: str) -> None:
        self._recent[txn_id] = None
        while len(self._recent) > RECENT_TRANSACTIONS:
            self._recent.popitem(last=False)

    async def _ping(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(403, "M_FORBIDDEN", "bad or missing homeserver token")
        return web.json_response({})

    async def _query(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(403, "M_FORBIDDEN", "bad or missing homeserver token")
        # Ghosts are created by the bridge when a Teams user speaks, never on demand.
        return _error(404, "M_NOT_FOUND", "not provided by this application service")
