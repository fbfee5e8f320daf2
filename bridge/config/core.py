"""The settings model: one frozen section per concern, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, StringConstraints, model_validator

from bridge.config.matrix import MatrixSettings
from bridge.config.section import Section
from bridge.config.teams import TeamsSettings


class HttpSettings(Section):
    host: str = "0.0.0.0"  # noqa: S104 - a container listens on all interfaces
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    public_url: str = "http://localhost:8080"
    """How platforms reach this daemon (the homeserver's AS URL, the Teams endpoint)."""


class MongoSettings(Section):
    uri: SecretStr
    """A MongoDB connection string; it may hold credentials, so it is never logged."""
    database: str = "incident_bridge"
    write_concern: str | int = "majority"
    """The ``w`` of writes that acknowledge a platform (always journaled)."""
    server_selection_timeout_s: Annotated[float, Field(gt=0, le=120)] = 3.0
    startup_timeout_s: Annotated[float, Field(ge=0, le=600)] = 30.0
    """How long start-up keeps trying to reach MongoDB before exiting with code 69."""


class LoggingSettings(Section):
    format: Literal["auto", "json", "console"] = "auto"
    """``auto``: readable on a terminal, JSON otherwise."""
    level: Literal["debug", "info", "warning", "error"] = "info"


class ShutdownSettings(Section):
    readiness_grace_s: Annotated[float, Field(ge=0, le=60)] = 0.0
    """After SIGTERM, keep serving (while /readyz says 503) this long before stopping intake."""
    drain_timeout_s: Annotated[float, Field(gt=0, le=600)] = 20.0
    """Deadline for in-flight requests and outbox deliveries to finish."""


class ReadinessSettings(Section):
    check_timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0


class OperatorSettings(Section):
    matrix: tuple[str, ...] = ()
    """MXIDs allowed to run operator commands (linking, unlinking) anywhere."""
    teams: tuple[str, ...] = ()
    """AAD object ids allowed to run operator commands anywhere."""


class CommandSettings(Section):
    operators: OperatorSettings = OperatorSettings()
    matrix_power_level: Annotated[int, Field(ge=0, le=100)] = 50
    """Matrix users at or above this power level in the room are operators there."""
    pairing_code_ttl_s: Annotated[int, Field(ge=30, le=3600)] = 600
    """How long a ``!bridge link`` code stays valid."""


class DeliveryOptions(Section):
    instance_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    """Names this process on its outbox leases. Default: host name and process id. Give
    each replica its own stable id (the pod name) and a restarted replica takes its rooms
    back at once, instead of after the leases expire; two live processes must never
    share one."""
    max_rooms: Annotated[int, Field(ge=1, le=10000)] = 512
    """Target rooms delivered to at once by this process."""
    lease_ttl_s: Annotated[float, Field(ge=5, le=600)] = 30.0
    """How long a room's delivery lease lasts without renewal: how soon another replica
    takes over the rooms of one that died (renewed every third of it)."""
    retry_base_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    """The first wait after a failed delivery; it doubles with each attempt, with jitter."""
    retry_cap_s: Annotated[float, Field(ge=1, le=3600)] = 60.0
    """The longest wait between attempts (a platform's Retry-After may ask for longer)."""


class IncidentSettings(Section):
    matrix_responders: tuple[str, ...] = ()
    """MXIDs invited to every new incident's Matrix room."""
    teams_channel: str | None = None
    """The Teams channel (``19:...@thread.tacv2``) in which each incident gets its thread.
    Without it, incidents get a Matrix room only."""
    declare_rooms: tuple[str, ...] = ()
    """Room ids (either platform) where ``!incident declare`` may be used besides linked
    rooms. Empty: any linked room."""
    key_event_reaction: str = "📌"
    """A reaction with this key on any message in an incident room marks a key event."""
    room_name_prefix: str = "incident"


class ApiSettings(Section):
    token: SecretStr | None = None
    """Bearer token of the timeline API (give ``token_file`` to read it from a mounted
    Secret). Without one, the API and the incident pages answer 503."""


class LinkSettings(Section):
    """A room pair linked by configuration."""

    matrix_room: Annotated[str, Field(pattern=r"^!.+")]
    """A Matrix room id (``!...``); the bot must be invited to it."""
    teams_conversation: Annotated[str, Field(min_length=3)]
    """A Teams conversation id: a channel (``19:...@thread.tacv2``), a thread
    (``...;messageid=<root>``) or a chat."""
    threads: Literal["thread", "reply"] = "thread"
    """How the channel's threads show in Matrix: Matrix threads, or reply chains."""


class RunbookRoleSettings(Section):
    """A named set of people, used by runbooks' ``access`` and ``approvals.approvers``:
    anyone matching any rule (platform ids only)."""

    aad_object_ids: tuple[str, ...] = ()
    aad_groups: tuple[str, ...] = ()
    """AAD group ids; they count only where the Teams activity carries the groups."""
    mxids: tuple[str, ...] = ()
    matrix_power_level: Annotated[int, Field(ge=0, le=100)] | None = None
    """Matrix users at or above this power level in the room the command is said in."""


RoleName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


class RunbookSettings(Section):
    catalog_dir: Path | None = None
    """The directory of runbook definitions (``*.yaml``, ``*.yml``; a mounted ConfigMap
    in Kubernetes). Without it there are no runbooks."""
    reload_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """How often the catalog's files are checked for changes (SIGHUP reloads at once)."""
    roles: dict[RoleName, RunbookRoleSettings] = Field(default_factory=dict)
    """Role name -> who has it."""
    heartbeat_interval_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    """How often this process marks its running runs alive in MongoDB."""
    stale_after_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """A run without a heartbeat for this long is ``unknown`` (its process died); never
    re-run. Keep it several heartbeats long."""
    sweep_interval_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    """How often each process looks for stale runs (and once at start-up)."""
    output_edit_interval_s: Annotated[float, Field(ge=0.2, le=60)] = 2.0
    """The least time between two edits of a run's message as its output grows."""
    max_output_chars: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 256 * 1024
    """How much of a run's output is kept (the rest is cut, and said so)."""

    @model_validator(mode="after")
    def _stale_after_heartbeats(self) -> RunbookSettings:
        if self.stale_after_s < 3 * self.heartbeat_interval_s:
            raise ValueError(
                "stale_after_s must be at least three heartbeat_interval_s, or a live"
                " run could be taken for dead"
            )
        return self


class Settings(Section):
    mongo: MongoSettings
    http: HttpSettings = HttpSettings()
    logging: LoggingSettings = LoggingSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    readiness: ReadinessSettings = ReadinessSettings()
    matrix: MatrixSettings = MatrixSettings()
    teams: TeamsSettings = TeamsSettings()
    links: tuple[LinkSettings, ...] = ()
    commands: CommandSettings = CommandSettings()
    delivery: DeliveryOptions = DeliveryOptions()
    incidents: IncidentSettings = IncidentSettings()
    api: ApiSettings = ApiSettings()
    runbooks: RunbookSettings = RunbookSettings()
