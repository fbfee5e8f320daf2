"""Microsoft Graph, app-only: whether a Teams user is an owner of a team.

``GraphClient.is_team_owner(team, user)`` asks ``GET {graph_url}/v1.0/teams/{team}/members``
with ``$filter=(microsoft.graph.aadUserConversationMember/userId eq '{user}')`` and the
bot's app-only token for ``teams.graph_scope`` (the application permission
``TeamMember.Read.All``, granted by an administrator), and reads the member's ``roles``
(``["owner"]`` for an owner). ``@odata.nextLink`` pages are followed, on the Graph host
only (the token goes nowhere else) and at most ``MAX_PAGES``. Both ids must be GUIDs
(Entra object ids), so nothing a user controls reaches the filter.

- An answer (owner or not) is reused per (team, user) for ``teams.team_owner_cache_s``;
  at most ``teams.team_owner_cache_size`` are kept.
- 429, 5xx, timeouts and lost connections are tried again, at most ``MAX_ATTEMPTS``
  attempts in all, after ``Retry-After`` when the answer has one (a longer wait than
  ``MAX_RETRY_WAIT_S`` is not waited for) or else a short jittered backoff; a 401 gets a
  fresh token once. The whole lookup is bounded by ``deadline_s``.
- Any other outcome (403: the permission is not granted; 404: no such team; no token; a
  malformed answer; the deadline) means "not an owner": deny when unsure, with a
  warning, and nothing cached. Tokens are never logged.

``TeamOwners`` is what the adapter asks: does this user own the team a conversation (a
channel or a channel thread of the bot's own tenant) belongs to?
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from adapters.teams.connector import parse_retry_after
from adapters.teams.ids import ConversationReference, TeamsConversationID
from bridge.errors import BridgeError
from bridge.ports import Clock

log = structlog.get_logger(__name__)

OBJECT_ID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_ATTEMPTS: Final = 3
MAX_RETRY_WAIT_S: Final = 5.0
BACKOFF_BASE_S: Final = 0.25
MAX_PAGES: Final = 20
MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
LOOKUP_DEADLINE_S: Final = 15.0
OWNER_ROLE: Final = "owner"
RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})

Sleep = Callable[[float], Awaitable[None]]


class GraphTokens(Protocol):
    """App-only Graph tokens (``tokens.CachingTokenProvider`` for ``teams.graph_scope``)."""

    async def token(self) -> str: ...

    def invalidate(self) -> None: ...


class GraphLookupError(Exception):
    """Graph gave no usable answer; ``reason`` is a short label for the log."""

    def __init__(self, reason: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code


class GraphClient:
    """Team ownership from Microsoft Graph, cached; never raises, denies when unsure."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        tokens: GraphTokens,
        graph_url: str,
        clock: Clock,
        cache_ttl_s: float,
        cache_size: int,
        timeout_s: float,
        deadline_s: float = LOOKUP_DEADLINE_S,
        sleep: Sleep = asyncio.sleep,
        jitter: random.Random | None = None,
    ) -> None:
        self._session = session
        self._tokens = tokens
        self._base = URL(graph_url.rstrip("/"))
        self._clock = clock
        self._ttl_s = cache_ttl_s
        self._cache_size = cache_size
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(5.0, timeout_s))
        self._deadline_s = deadline_s
        self._sleep = sleep
        self._jitter = jitter or random.Random()  # noqa: S311 - backoff jitter, not a secret
        self._cache: OrderedDict[tuple[str, str], tuple[bool, float]] = OrderedDict()

    async def is_team_owner(self, team_aad_group_id: str, user_aad_object_id: str) -> bool:
        """Whether the user is an owner of the team (both Entra object ids)."""
        team, user = team_aad_group_id.lower(), user_aad_object_id.lower()
        if not (OBJECT_ID.match(team) and OBJECT_ID.match(user)):
            log.info("teams_graph_lookup_skipped", reason="not_an_object_id")
            return False
        key = (team, user)
        cached = self._cached(key)
        if cached is not None:
            return cached
        try:
            async with asyncio.timeout(self._deadline_s):
                owner = await self._lookup(team, user)
        except GraphLookupError as exc:
            log.warning(
                "teams_graph_lookup_failed",
                team=team,
                reason=exc.reason,
                status=exc.status,
                code=exc.code,
            )
            return False
        except TimeoutError:
            log.warning("teams_graph_lookup_failed", team=team, reason="deadline")
            return False
        self._remember(key, owner=owner)
        return owner

    # -- the lookup ---------------------------------------------------------------

    async def _lookup(self, team: str, user: str) -> bool:
        criterion = f"(microsoft.graph.aadUserConversationMember/userId eq '{user}')"
        url: URL | None = URL(
            f"{self._base}/v1.0/teams/{team}/members?$filter={quote(criterion, safe='')}",
            encoded=True,
        )
        pages = 0
        while url is not None:
            pages += 1
            if pages > MAX_PAGES:
                raise GraphLookupError("too_many_pages")
            body = await self._get(url)
            verdict, next_link = _read_page(body, user)
            if verdict is not None:
                return verdict
            url = self._next_url(next_link) if next_link is not None else None
        return False  # not a member of the team at all

    def _next_url(self, link: str) -> URL:
        url = URL(link, encoded=True)
        if url.origin() != self._base.origin():
            raise GraphLookupError("foreign_next_link")  # the token must not go elsewhere
        return url

    async def _get(self, url: URL) -> Any:
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            token = await self._token()
            try:
                status, body, retry_after = await self._send(url, token)
            except GraphLookupError:
                if attempt >= MAX_ATTEMPTS:
                    raise
                await self._sleep(self._backoff(attempt))
                continue
            if status == 200:
                return _json(body)
            if status == 401 and not refreshed:
                refreshed = True
                attempt -= 1  # a stale token is not a failed attempt
                self._tokens.invalidate()
                continue
            code = _error_code(body)
            if status in RETRYABLE_STATUSES and attempt < MAX_ATTEMPTS:
                wait = retry_after if retry_after is not None else self._backoff(attempt)
                if wait > MAX_RETRY_WAIT_S:
                    raise GraphLookupError("retry_after_too_long", status=status, code=code)
                log.info("teams_graph_retrying", status=status, code=code, wait_s=round(wait, 3))
                await self._sleep(wait)
                continue
            raise GraphLookupError(f"http_{status}", status=status, code=code)

    async def _token(self) -> str:
        try:
            return await self._tokens.token()
        except BridgeError as exc:
            raise GraphLookupError("no_token", code=type(exc).__name__) from None

    async def _send(self, url: URL, token: str) -> tuple[int, bytes, float | None]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            async with self._session.get(url, headers=headers, timeout=self._timeout) as response:
                body = await response.content.read(MAX_RESPONSE_BYTES)
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"), self._clock.now()
                )
                return response.status, body, retry_after
        except TimeoutError:
            raise GraphLookupError("timeout") from None
        except aiohttp.ClientError as exc:
            raise GraphLookupError("connection", code=type(exc).__name__) from None

    def _backoff(self, attempt: int) -> float:
        return float(BACKOFF_BASE_S * 2 ** (attempt - 1) * self._jitter.uniform(0.5, 1.5))

    # -- the cache ----------------------------------------------------------------

    def _cached(self, key: tuple[str, str]) -> bool | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        owner, expires_at = entry
        if self._clock.monotonic() >= expires_at:
            del self._cache[key]
            return None
        return owner

    def _remember(self, key: tuple[str, str], *, owner: bool) -> None:
        if self._ttl_s <= 0:
            return
        self._cache[key] = (owner, self._clock.monotonic() + self._ttl_s)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _read_page(body: Any, user: str) -> tuple[bool | None, str | None]:
    """(owner or not if the user is on this page, else None; the next page's link)."""
    members = body.get("value") if isinstance(body, dict) else None
    if not isinstance(members, list):
        raise GraphLookupError("malformed_answer")
    for member in members:
        if not isinstance(member, dict):
            continue
        member_user = member.get("userId")
        if not isinstance(member_user, str) or member_user.lower() != user:
            continue
        roles = member.get("roles")
        if not isinstance(roles, list):
            return False, None
        return any(isinstance(r, str) and r.lower() == OWNER_ROLE for r in roles), None
    next_link = body.get("@odata.nextLink")
    return None, next_link if isinstance(next_link, str) and next_link else None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise GraphLookupError("malformed_answer") from None


def _error_code(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code[:64] if isinstance(code, str) else None


class ConversationLookup(Protocol):
    async def get(self, conversation_id: TeamsConversationID) -> ConversationReference | None: ...


class TeamGroupLookup(Protocol):
    async def get(self, team_id: str) -> str | None: ...


class TeamOwners:
    """Whether a user owns the team of a conversation (Graph, for the bot's own tenant)."""

    def __init__(
        self,
        *,
        graph: GraphClient,
        conversations: ConversationLookup,
        team_groups: TeamGroupLookup,
        tenant_id: str,
    ) -> None:
        self._graph = graph
        self._conversations = conversations
        self._team_groups = team_groups
        self._tenant_id = tenant_id.lower()

    async def owns(self, conversation_id: TeamsConversationID, user_aad_object_id: str) -> bool:
        """True only for a channel (or a thread in one) whose team the user owns.

        Chats, conversations never seen, teams whose AAD group id no activity has named
        yet and teams of other tenants (Graph tokens are the bot's tenant's) are False.
        """
        reference = await self._conversations.get(conversation_id)
        if reference is None or reference.conversation_type != "channel":
            return False
        if reference.team_id is None or reference.tenant_id.lower() != self._tenant_id:
            return False
        group_id = await self._team_groups.get(reference.team_id)
        if group_id is None:
            log.info("teams_team_group_unknown", team=reference.team_id)
            return False
        return await self._graph.is_team_owner(group_id, user_aad_object_id)
