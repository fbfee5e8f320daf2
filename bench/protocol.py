"""What the benchmark process and its load process say to each other (pickled over a pipe).

The load process plays the outside world: Teams (the emulator: channel,
connector, token authority), a Matrix homeserver (``homeserver.FakeHomeserver``)
and the people posting. Times are ``time.monotonic()`` seconds; on Linux that
is ``CLOCK_MONOTONIC``, the same clock as ``time.perf_counter()`` in the
benchmark process, so times taken in either process can be subtracted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

APP_ID: Final = "0b3c9a52-4d1e-4f7a-8c62-5e9d1a7b3f40"
APP_PASSWORD: Final = "bench-app-password"  # noqa: S105 - a loopback emulator's secret
TENANT_ID: Final = "9e4f2b17-6c3a-4d85-b1e0-7a2c5f8d3e91"
SERVER_NAME: Final = "bench.test"
SEQ_HEADER: Final = "X-Bench-Seq"
"""Header naming the sequence numbers a request carries (comma-separated), for the
bridge's arrival stamp."""


class Direction(StrEnum):
    TO_MATRIX = "teams->matrix"
    """A Teams post to the bridge's messaging endpoint, mirrored into a Matrix room."""
    TO_TEAMS = "matrix->teams"
    """A Matrix message in an AS transaction, mirrored into a Teams channel."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorldSpec:
    """The world to build: ``rooms`` linked pairs (a Teams channel and a Matrix room)."""

    rooms: int
    users: int = 5
    hs_token: str
    teams_rate_limits: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class World:
    """Where the outside world listens and what it holds."""

    openid_metadata_url: str
    token_authority: str
    service_host: str
    """``host:port`` of the connector's serviceUrl (the bridge allow-lists exactly this)."""
    homeserver_url: str
    teams_channels: tuple[str, ...]
    matrix_rooms: tuple[str, ...]
    teams_users: tuple[tuple[str, str], ...]
    """(AAD object id, name) of each Teams user."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Attach:
    """The bridge listens at ``bridge_url``."""

    bridge_url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """Post at constant rates (open loop, round-robin over rooms), then wait for arrivals.

    Teams posts go as they happen, each in its own request (several may be in
    flight). Matrix messages go as a homeserver sends them: one transaction in
    flight at a time, carrying every event that happened while the previous one was.

    Room ``r`` always has the same sender (user ``r % users``), so a warm-up of one
    message per room meets every first-time cost (ghosts, joins, names, tokens).
    """

    to_matrix_rate: float
    to_teams_rate: float
    seconds: float
    first_seq: int
    settle_s: float
    """After the last scheduled request: how long re-sends and arrivals may take. The
    load ends ``seconds + settle_s`` after it started, whatever is still pending."""
    await_arrivals: bool = True
    """False: report once every request is answered (the bridge is not delivering)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Expect:
    """Wait (at most ``timeout_s``) until messages ``first_seq..first_seq+count-1`` arrive."""

    direction: Direction
    first_seq: int
    count: int
    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """One message's request to the bridge and how it was finally answered.

    ``status`` is None when no attempt was answered in time; ``attempts`` counts the
    requests made (a platform re-sends what the bridge does not take).
    """

    seq: int
    direction: Direction
    room: int
    sent_at: float
    answered_at: float
    status: int | None
    attempts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """One message the bridge delivered to a target (every delivery, duplicates too)."""

    seq: int
    direction: Direction
    room_id: str
    key: str
    """The Matrix transaction id, or the Teams activity id."""
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Pacing:
    """What the Teams connector saw of the bridge's outbound calls."""

    connector_calls: int
    violations: tuple[str, ...]
    rate_limited_calls: int
    peak_tenant_1s: int
    peak_conversation_1s: int
    peak_conversation_30s: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadReport:
    sent: tuple[Sent, ...]
    arrivals: tuple[Arrival, ...]
    pacing: Pacing
    complete: bool
    """Every answered (2xx) message arrived before the deadline."""
    matrix_retried_transactions: int


Request = Attach | Load | Expect | Stop
Reply = World | Ack | LoadReport
