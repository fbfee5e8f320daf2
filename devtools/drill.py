"""The scripted incident of ``./devtools/local-stack.sh --drill``, played on the real paths.

Teams people post through the emulator (activities it signs and delivers to the
bridge, as from its web page); the Matrix person is the demo user on the client-server
API, logged in with the printed password. The script:

1. Alice (Teams, an operator) declares an incident in the linked war room; the bridge
   creates its Matrix room (the demo user invited) and its thread in the incident channel.
2. The demo user joins the incident's Matrix room.
3. Bob (Teams) and the demo user (Matrix) talk in the incident's rooms, each line
   arriving on the other side.
4. Alice makes the demo user commander from Teams.
5. The demo user requests the ``service-check`` runbook in Matrix; it needs one approval.
6. Alice approves it in Teams (the requester may not).
7. The run's output and outcome reach both rooms.
8. The demo user moves the status to monitoring, then resolves the incident.
9. The demo user asks for the postmortem, posted in both rooms.
10. The record is read back over the bridge's API: resolved, a postmortem, one run
    that succeeded with one approval.

Each step waits (at most ``STEP_WITHIN_S``) for its visible result in both rooms and
prints one line. ``DrillThread`` runs the drill beside the local stack and stops it at
once when asked (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote

import aiohttp

from bridge.model import IncidentID
from bridge.web.auth import page_key
from devtools.drill_matrix import Event, MatrixDemoClient, event_text
from devtools.drill_teams import EmulatorClient, TeamsMessage, from_bot, plain_text
from devtools.drill_waits import DrillError, poll_until

STEP_WITHIN_S: Final = 60.0
"""The longest any step waits for its result."""
STEPS: Final = 10
TITLE: Final = "Checkout errors"
RUNBOOK: Final = "service-check"
SERVICE: Final = "checkout"
HEALTHY: Final = f"{SERVICE}: healthy"
"""The last line the runbook's program prints."""
TEAMS_LINE: Final = "checkout answers 500 to one request in five since 10:02"
MATRIX_LINE: Final = "seen here too: the checkout pods restarted at 10:01, looking at why"
API_TIMEOUT_S: Final = 30.0

Report = Callable[[str], None]
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class TeamsPerson:
    user: str
    """How the emulator knows them (their AAD object id)."""
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DrillTargets:
    """Where the stack's parts are, and who plays which part."""

    bridge_url: str
    api_token: str
    homeserver_url: str
    matrix_user: str
    """The demo user's localpart (logged in with ``matrix_password``)."""
    matrix_password: str
    matrix_room: str
    """The demo room, linked to ``war_room``."""
    emulator_url: str
    war_room: str
    """The Teams conversation linked to ``matrix_room``."""
    war_room_label: str
    incident_channel_label: str
    """Where the bridge starts incidents' Teams threads."""
    lead: TeamsPerson
    """A Teams operator who may approve runs: declares, assigns, approves."""
    responder: TeamsPerson
    """Another Teams user: talks in the incident's thread."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentRooms:
    incident_id: str
    matrix_room: str
    thread: str
    """The Teams thread's conversation id (``<channel>;messageid=<root>``)."""

    @property
    def root(self) -> str:
        return self.thread.partition(";messageid=")[2]


@dataclass(frozen=True, slots=True, kw_only=True)
class DrillOutcome:
    incident_id: str
    run_id: str
    matrix_room: str
    thread: str
    page_link: str
    """The incident's page, signed so a browser can open it."""
    took_s: float


def incident_page(bridge_url: str, api_token: str, incident_id: str) -> str:
    """The incident's page link with its key (what the bridge posts in chat)."""
    key = page_key(api_token, IncidentID(incident_id))
    return f"{bridge_url.rstrip('/')}/incidents/{quote(incident_id, safe='')}?key={key}"


def _text_has(fragment: str) -> Callable[[Event], bool]:
    return lambda event: fragment in event_text(event)


def _bot_says(fragment: str) -> Callable[[TeamsMessage], bool]:
    return lambda message: from_bot(message) and fragment in plain_text(message)


async def _both(
    matrix: Coroutine[Any, Any, Event], teams: Coroutine[Any, Any, TeamsMessage]
) -> Event:
    """Wait for both; the first failure is raised and the other wait is stopped."""
    try:
        async with asyncio.TaskGroup() as group:
            in_matrix = group.create_task(matrix)
            group.create_task(teams)
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return in_matrix.result()


class Drill:
    """One run of the script (see the module documentation)."""

    def __init__(
        self,
        targets: DrillTargets,
        *,
        session: aiohttp.ClientSession,
        matrix: MatrixDemoClient,
        report: Report,
        within: float = STEP_WITHIN_S,
    ) -> None:
        self._t = targets
        self._session = session
        self._matrix = matrix
        self._teams = EmulatorClient(session, targets.emulator_url)
        self._report = report
        self._within = within
        self._step = 0
        self._mark = time.monotonic()

    async def run(self) -> DrillOutcome:
        started = time.monotonic()
        self._mark = started
        rooms = await self._declare()
        await self._join(rooms)
        await self._chat(rooms)
        await self._assign(rooms)
        run_id = await self._request_run(rooms)
        await self._approve(rooms, run_id)
        await self._output(rooms, run_id)
        await self._resolve(rooms)
        await self._postmortem(rooms)
        await self._check_record(rooms, run_id)
        return DrillOutcome(
            incident_id=rooms.incident_id,
            run_id=run_id,
            matrix_room=rooms.matrix_room,
            thread=rooms.thread,
            page_link=incident_page(self._t.bridge_url, self._t.api_token, rooms.incident_id),
            took_s=time.monotonic() - started,
        )

    def _done(self, text: str) -> None:
        self._step += 1
        now = time.monotonic()
        self._report(f"drill [{self._step}/{STEPS}] {text}  ({now - self._mark:.1f} s)")
        self._mark = now

    # -- the steps ------------------------------------------------------------------------

    async def _declare(self) -> IncidentRooms:
        t = self._t
        await self._teams.post(t.war_room, t.lead.user, f"!incident declare sev2 {TITLE}")
        said = f"declared (SEV2): {TITLE}"
        answer = await _both(
            self._matrix.wait_event(
                t.matrix_room, _text_has(said), within=self._within, what="the declaration"
            ),
            self._teams.wait_message(
                t.war_room, _bot_says(said), within=self._within, what="the declaration (Teams)"
            ),
        )
        found = re.search(r"(INC-\d+) declared", event_text(answer))
        if found is None:
            raise DrillError(f"no incident id in {event_text(answer)!r}")
        rooms = await self._incident_rooms(found.group(1))
        await self._matrix.wait_invite(
            rooms.matrix_room, within=self._within, what="the invite to the incident's room"
        )
        await self._teams.wait_message(
            rooms.thread,
            _bot_says(rooms.incident_id),
            within=self._within,
            what="the incident's thread (Teams)",
        )
        self._done(
            f'{t.lead.name} declared {rooms.incident_id} in Teams ("{t.war_room_label}"): '
            f"its Matrix room {rooms.matrix_room} invites {self._matrix.user_id}; "
            f'its Teams thread is in "{t.incident_channel_label}"'
        )
        return rooms

    async def _join(self, rooms: IncidentRooms) -> None:
        me = self._matrix.user_id
        await self._matrix.join(rooms.matrix_room)

        def joined(event: Event) -> bool:
            content = event.get("content")
            return (
                event.get("type") == "m.room.member"
                and event.get("state_key") == me
                and isinstance(content, Mapping)
                and content.get("membership") == "join"
            )

        await self._matrix.wait_event(
            rooms.matrix_room, joined, within=self._within, what="the join"
        )
        self._done(f"{me} joined {rooms.incident_id}'s Matrix room")

    async def _chat(self, rooms: IncidentRooms) -> None:
        t = self._t
        await self._teams.post(rooms.thread, t.responder.user, TEAMS_LINE, thread_root=rooms.root)
        await self._matrix.wait_event(
            rooms.matrix_room,
            _text_has(TEAMS_LINE),
            within=self._within,
            what=f"{t.responder.name}'s line in Matrix",
        )
        await self._matrix.send_text(rooms.matrix_room, MATRIX_LINE)
        await self._teams.wait_message(
            rooms.thread,
            _bot_says(MATRIX_LINE),
            within=self._within,
            what="the Matrix line in the Teams thread",
        )
        self._done(
            f"chat both ways: {t.responder.name} (Teams) -> Matrix, "
            f"{self._matrix.user_id} (Matrix) -> the Teams thread"
        )

    async def _assign(self, rooms: IncidentRooms) -> None:
        lead = self._t.lead
        me = self._matrix.user_id
        await self._teams_command(
            rooms,
            lead,
            f"!incident assign commander {me}",
            f"is now commander of {rooms.incident_id}",
        )
        self._done(f"{lead.name} (Teams) made {me} commander")

    async def _request_run(self, rooms: IncidentRooms) -> str:
        answer = await self._matrix_command(
            rooms, f"!runbook run {RUNBOOK} service={SERVICE}", "needs 1 approval(s)"
        )
        found = re.search(rf"(R-\d+): {RUNBOOK}", event_text(answer))
        if found is None:
            raise DrillError(f"no run id in {event_text(answer)!r}")
        run_id = found.group(1)
        self._done(
            f"{self._matrix.user_id} (Matrix) requested {run_id}: {RUNBOOK} service={SERVICE}, "
            "awaiting one approval"
        )
        return run_id

    async def _approve(self, rooms: IncidentRooms, run_id: str) -> None:
        lead = self._t.lead
        await self._teams_command(
            rooms, lead, f"!runbook approve {run_id}", f"{run_id} approved by {lead.name}"
        )
        self._done(f"{lead.name} (Teams) approved {run_id}; it started")

    async def _output(self, rooms: IncidentRooms, run_id: str) -> None:
        ended = f"{run_id} {RUNBOOK}: succeeded"

        def finished(text: str) -> bool:
            return ended in text and HEALTHY in text

        await _both(
            self._matrix.wait_event(
                rooms.matrix_room,
                lambda event: finished(event_text(event)),
                within=self._within,
                what=f"{run_id}'s output and outcome in Matrix",
            ),
            self._teams.wait_message(
                rooms.thread,
                lambda message: from_bot(message) and finished(plain_text(message)),
                within=self._within,
                what=f"{run_id}'s output and outcome in Teams",
            ),
        )
        self._done(f'{run_id} succeeded; its output ("{HEALTHY}") is in both rooms')

    async def _resolve(self, rooms: IncidentRooms) -> None:
        incident = rooms.incident_id
        await self._matrix_command(
            rooms, "!incident status monitoring", f"{incident} is now monitoring"
        )
        await self._matrix_command(rooms, "!incident resolve", f"{incident} resolved")
        self._done(f"{self._matrix.user_id} (Matrix) moved {incident} to monitoring, then resolved")

    async def _postmortem(self, rooms: IncidentRooms) -> None:
        incident = rooms.incident_id
        await self._matrix_command(
            rooms, "!incident postmortem", f"Postmortem of {incident} written"
        )
        self._done(f"the postmortem of {incident} is posted in both rooms")

    async def _check_record(self, rooms: IncidentRooms, run_id: str) -> None:
        incident = await self._api(f"/api/v1/incidents/{quote(rooms.incident_id, safe='')}")
        if incident.get("status") != "resolved" or not incident.get("postmortem"):
            raise DrillError(
                f"{rooms.incident_id} over the API: status {incident.get('status')!r}, "
                f"postmortem {'present' if incident.get('postmortem') else 'missing'}"
            )
        run = await self._api(f"/api/v1/runs/{quote(run_id, safe='')}")
        approvers = [str(a.get("user_id", "")).lower() for a in run.get("approvals", [])]
        if run.get("state") != "succeeded" or approvers != [self._t.lead.user.lower()]:
            raise DrillError(
                f"{run_id} over the API: state {run.get('state')!r}, approvals {approvers}"
            )
        self._done(
            f"the record: {rooms.incident_id} resolved with its postmortem; {run_id} "
            f"succeeded once, approved by {self._t.lead.name}"
        )

    # -- helpers --------------------------------------------------------------------------

    async def _matrix_command(self, rooms: IncidentRooms, command: str, answer: str) -> Event:
        """Say ``command`` in the incident's Matrix room; its answer, once in both rooms."""
        await self._matrix.send_text(rooms.matrix_room, command)
        return await self._answered(rooms, command, answer)

    async def _teams_command(
        self, rooms: IncidentRooms, person: TeamsPerson, command: str, answer: str
    ) -> Event:
        """``person`` says ``command`` in the incident's Teams thread; its answer, once in
        both rooms."""
        await self._teams.post(rooms.thread, person.user, command, thread_root=rooms.root)
        return await self._answered(rooms, command, answer)

    async def _answered(self, rooms: IncidentRooms, command: str, answer: str) -> Event:
        return await _both(
            self._matrix.wait_event(
                rooms.matrix_room,
                _text_has(answer),
                within=self._within,
                what=f"the answer to {command!r} in Matrix",
            ),
            self._teams.wait_message(
                rooms.thread,
                _bot_says(answer),
                within=self._within,
                what=f"the answer to {command!r} in Teams",
            ),
        )

    async def _incident_rooms(self, incident_id: str) -> IncidentRooms:
        async def probe() -> IncidentRooms | None:
            body = await self._api(f"/api/v1/incidents/{quote(incident_id, safe='')}")
            rooms = {
                str(r.get("platform")): str(r.get("room_id"))
                for r in body.get("rooms", [])
                if isinstance(r, Mapping)
            }
            if "matrix" not in rooms or ";messageid=" not in rooms.get("teams", ""):
                return None
            return IncidentRooms(
                incident_id=incident_id, matrix_room=rooms["matrix"], thread=rooms["teams"]
            )

        return await poll_until(probe, within=self._within, what=f"{incident_id}'s rooms")

    async def _api(self, path: str) -> dict[str, Any]:
        async with self._session.get(
            self._t.bridge_url.rstrip("/") + path,
            headers={"Authorization": f"Bearer {self._t.api_token}"},
            timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S),
        ) as response:
            body = await response.json(content_type=None)
            if response.status != 200 or not isinstance(body, dict):
                raise DrillError(f"the bridge's API: GET {path}: {response.status} {body}")
        return body


async def run_drill(targets: DrillTargets, report: Report) -> DrillOutcome:
    """Log in as the demo user and play the script; ``DrillError`` names a failed step."""
    async with aiohttp.ClientSession() as session:
        matrix = MatrixDemoClient(session, targets.homeserver_url)
        await matrix.login(targets.matrix_user, targets.matrix_password)
        async with matrix.synced():
            return await Drill(targets, session=session, matrix=matrix, report=report).run()


class DrillThread:
    """The drill on an event loop of its own, beside the (synchronous) local stack.

    ``start()`` begins it; ``finished`` is set when it has ended, with ``outcome`` (it
    succeeded) or ``failure`` (why not) set; ``stop()`` cancels it wherever it is and
    waits for the thread (bounded).
    """

    def __init__(self, targets: DrillTargets, report: Report) -> None:
        self._targets = targets
        self._report = report
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        # A daemon thread: should it outlive ``stop()``'s bound, it cannot keep the
        # process from exiting.
        self._thread = threading.Thread(target=self._main, name="drill", daemon=True)
        self.finished = threading.Event()
        self.outcome: DrillOutcome | None = None
        self.failure: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        with self._lock:
            self._cancelled = True
            if self._loop is not None and self._task is not None and not self.finished.is_set():
                self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        finally:
            self.finished.set()

    async def _run(self) -> None:
        with self._lock:
            if self._cancelled:
                self.failure = "stopped"
                return
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
        try:
            self.outcome = await run_drill(self._targets, self._report)
        except asyncio.CancelledError:
            self.failure = "stopped"
        except DrillError as exc:
            self.failure = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure ends the drill and is reported
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._loop = None  # nothing to cancel from here on
