"""What happened: every call the emulator served, and every activity it delivered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from devtools.teams_emulator.clock import Clock
from devtools.teams_emulator.faults import FaultKind
from devtools.teams_emulator.model import ActivityID, ConversationID
from devtools.teams_emulator.tokens import AuthCheck

HEADERS_OF_INTEREST = ("Content-Type", "Accept", "User-Agent")


class Operation(StrEnum):
    """What a call was for, named after the Bot Framework operation."""

    CREATE_CONVERSATION = "create_conversation"
    SEND_TO_CONVERSATION = "send_to_conversation"
    REPLY_TO_ACTIVITY = "reply_to_activity"
    UPDATE_ACTIVITY = "update_activity"
    DELETE_ACTIVITY = "delete_activity"
    GET_MEMBERS = "get_conversation_members"
    GET_MEMBER = "get_conversation_member"
    GET_PAGED_MEMBERS = "get_conversation_paged_members"
    ADD_REACTION = "add_reaction"
    DELETE_REACTION = "delete_reaction"
    GET_TEAM = "get_team_details"
    GET_CHANNELS = "get_team_channels"
    GET_ATTACHMENT_INFO = "get_attachment_info"
    GET_ATTACHMENT = "get_attachment"
    UNKNOWN_CONNECTOR = "unknown_connector_route"
    TOKEN = "token"  # noqa: S105 - an operation name
    TOKEN_DISCOVERY = "token_openid_configuration"  # noqa: S105 - an operation name
    CHANNEL_OPENID = "channel_openid_configuration"
    CHANNEL_KEYS = "channel_keys"
    TOKEN_KEYS = "token_keys"  # noqa: S105 - an operation name
    FILE_DOWNLOAD = "file_download"
    GRAPH_LIST_TEAM_MEMBERS = "graph_list_team_members"
    UNKNOWN_GRAPH = "unknown_graph_route"

    @property
    def is_graph(self) -> bool:
        return self in _GRAPH

    @property
    def is_connector(self) -> bool:
        return self not in _NOT_CONNECTOR


_NOT_CONNECTOR = frozenset(
    {
        Operation.TOKEN,
        Operation.TOKEN_DISCOVERY,
        Operation.CHANNEL_OPENID,
        Operation.CHANNEL_KEYS,
        Operation.TOKEN_KEYS,
        Operation.FILE_DOWNLOAD,
        Operation.GRAPH_LIST_TEAM_MEMBERS,
        Operation.UNKNOWN_GRAPH,
    }
)
_GRAPH = frozenset({Operation.GRAPH_LIST_TEAM_MEMBERS, Operation.UNKNOWN_GRAPH})


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """One request to the emulator; ``status`` is None while it is being served."""

    seq: int
    at: datetime
    monotonic: float
    method: str
    path: str
    query: str
    operation: Operation
    conversation_id: ConversationID | None = None
    activity_id: ActivityID | None = None
    auth: AuthCheck | None = None
    """The bearer token's verdict (connector and Graph calls, attachment downloads)."""
    headers: Mapping[str, str]
    body: Any = None
    """The JSON body (form fields for the token endpoint, secrets masked), or None."""
    status: int | None = None
    response: Any = None
    fault: FaultKind | None = None
    committed: bool = False
    """The call took effect although a fault answered it."""
    rate_limited: bool = False
    finished_at: datetime | None = None

    @property
    def accepted(self) -> bool:
        """Counted against the rate limits: authenticated, not refused by a limit or a fault."""
        if self.auth is None or not self.auth.valid or self.rate_limited:
            return False
        return self.fault is None or self.committed or self.fault is FaultKind.SLOW


class CallLog:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._records: list[CallRecord] = []
        self._changed = asyncio.Event()

    @property
    def records(self) -> tuple[CallRecord, ...]:
        return tuple(self._records)

    def begin(
        self,
        *,
        method: str,
        path: str,
        query: str,
        operation: Operation,
        headers: Mapping[str, str],
        conversation_id: str | None = None,
        activity_id: str | None = None,
    ) -> int:
        seq = len(self._records)
        self._records.append(
            CallRecord(
                seq=seq,
                at=self._clock.now(),
                monotonic=self._clock.monotonic(),
                method=method,
                path=path,
                query=query,
                operation=operation,
                conversation_id=ConversationID(conversation_id) if conversation_id else None,
                activity_id=ActivityID(activity_id) if activity_id else None,
                headers={k: v for k in HEADERS_OF_INTEREST if (v := headers.get(k)) is not None},
            )
        )
        self._notify()
        return seq

    def update(self, seq: int, **changes: Any) -> None:
        self._records[seq] = replace(self._records[seq], **changes)
        self._notify()

    def finish(self, seq: int, status: int, response: Any = None) -> None:
        self.update(seq, status=status, response=response, finished_at=self._clock.now())

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[tuple[CallRecord, ...]], bool], timeout_s: float
    ) -> tuple[CallRecord, ...]:
        """Wait (at most ``timeout_s`` of real time) until ``predicate(records)`` holds."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self.records):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the expected calls did not arrive in time")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                continue
        return self.records


class DeliveryOutcome(StrEnum):
    ANSWERED = "answered"
    TIMED_OUT = "timed_out"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One POST of an activity to the bot, and how the bot answered."""

    activity: Mapping[str, Any]
    endpoint: str
    authorization: str | None
    outcome: DeliveryOutcome
    status: int | None
    """The bot's HTTP status; None when it did not answer."""
    body: str = ""
    error: str | None = None
    sent_at: datetime
    elapsed_s: float

    @property
    def activity_id(self) -> str:
        return str(self.activity.get("id", ""))

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300
