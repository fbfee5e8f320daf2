"""The local stack: the whole product on loopback, in one command.

Starts a MongoDB-protocol server (SecantusDB), a Synapse homeserver (with the
bridge's application-service registration and a demo user), the Teams emulator
(with its web page), and the bridge daemon; links a demo room pair (a Matrix
room, ``#war-room``, and the emulator's "Incident war room" group chat); sets up
incidents (threads in the emulator's "Operations > General" channel, the demo
user and Alice Ops as operators, the incident API with a fresh token) and the demo
runbook catalog (``devtools/demo_runbooks``: a run is requested by one person and
approved by another); prints where each is and how to log in; stops everything it
started on Ctrl-C (or SIGTERM) in reverse order. State lives in ``.localstack/``
and is made anew on every start.

``--drill`` then plays a scripted incident through both chats (``devtools/drill.py``)
and prints where to look; ``--drill --exit`` stops the stack once the drill is over
(exit code 0 when it succeeded).

Run it through ``./devtools/local-stack.sh``, which prepares the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import yaml

from adapters.matrix.registration import build_registration
from devtools.drill import DrillTargets, DrillThread, TeamsPerson, incident_page
from devtools.servers import LOOPBACK, MongoServer, SynapseServer, free_port
from devtools.stack_config import (
    DEMO_RUNBOOKS,
    TEAMS_APP_ID,
    TEAMS_APP_PASSWORD,
    TEAMS_TENANT_ID,
    StackPeople,
    StackSettings,
)
from devtools.teams_emulator.clock import SystemClock
from devtools.teams_emulator.ids import IdFactory

ROOT: Final = Path(__file__).resolve().parents[1]
DEMO_USER: Final = "demo"
DEMO_PASSWORD: Final = "demo-password"  # noqa: S105 - a throwaway account on a loopback-only homeserver
DEMO_ROOM_ALIAS: Final = "war-room"
READY_TIMEOUT_S: Final = 60.0
EMULATOR_SEED: Final = "local"
"""The emulator's ids derive from it, so the stack knows its users' AAD object ids."""
WAR_ROOM: Final = "Incident war room"
"""The emulator's group chat linked to the demo Matrix room."""
INCIDENT_CHANNEL: Final = "Operations > General"
"""The emulator's channel where incidents get their threads: the team's General channel,
where the bot's install in the team is announced, so the bridge has heard from it."""
LEAD: Final = "Alice Ops"
"""An emulator user who is an operator and may approve runs."""
RESPONDER: Final = "Bob SRE"
"""An emulator user who may request runs."""
FIRST_INCIDENT: Final = "INC-1"
DRILL_STOP_TIMEOUT_S: Final = 15.0


class StackStoppedError(Exception):
    """Ctrl-C (or SIGTERM) came while the stack was starting."""


class BridgeProcess:
    """The bridge daemon as a child process, logging to a file."""

    def __init__(self, config: Path, log_path: Path, port: int) -> None:
        self._config = config
        self._log_path = log_path
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self._log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--config", str(self._config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=_bridge_environment(),
                start_new_session=True,  # Ctrl-C reaches us; we stop the bridge in order
            )
        finally:
            log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"the bridge exited with code {self._proc.returncode}; see {self._log_path}"
                )
            if _http_ok(f"http://{LOOPBACK}:{self.port}/readyz"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the bridge did not become ready; see {self._log_path}")

    def stop(self) -> None:
        _terminate(self._proc)

    def exited(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None


def _bridge_environment() -> dict[str, str]:
    """The bridge's environment: ours, with this interpreter's directory first on PATH
    (the demo runbook runs ``python3``: the project's interpreter, with what it installed)."""
    path = os.environ.get("PATH", os.defpath)
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), path])}


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback URL we built
            return bool(response.status == 200)
    except OSError:
        return False


class EmulatorProcess:
    """The Teams emulator as a child process; ready once it prints its ready line."""

    def __init__(self, *, port: int, bot_endpoint: str, log_path: Path) -> None:
        self.port = port
        self.base = f"http://{LOOPBACK}:{port}"
        self._bot_endpoint = bot_endpoint
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "TEAMS_EMULATOR_APP_PASSWORD": TEAMS_APP_PASSWORD}
        log = self._log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "devtools.teams_emulator",
                    "--app-id",
                    TEAMS_APP_ID,
                    "--tenant",
                    TEAMS_TENANT_ID,
                    "--bot-endpoint",
                    self._bot_endpoint,
                    "--port",
                    str(self.port),
                    "--seed",
                    EMULATOR_SEED,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        _wait_http(f"{self.base}/_emulator/api/directory", self._proc, self._log_path)

    def stop(self) -> None:
        _terminate(self._proc)

    def directory(self) -> dict[str, Any]:
        return _json("GET", f"{self.base}/_emulator/api/directory")

    def install_bot(self, conversation_id: str) -> None:
        """Add the bot (in a team's channel: to the team, announced on its General channel)."""
        answer = _json(
            "POST", f"{self.base}/_emulator/api/install", {"conversation": conversation_id}
        )
        if answer.get("statuses") != [200, 200]:
            raise RuntimeError(f"the bridge answered {answer.get('statuses')} to the bot's install")

    def conversation(self, label: str) -> dict[str, Any]:
        found = [c for c in self.directory()["conversations"] if c["label"] == label]
        if len(found) != 1:
            raise RuntimeError(f"the emulator has no conversation {label!r}")
        return dict(found[0])

    def user(self, name: str) -> TeamsPerson:
        """An emulator user by name, with the AAD object id the seed gives them."""
        if not any(u["name"] == name for u in self.directory()["users"]):
            raise RuntimeError(f"the emulator has no user {name!r}")
        aad_object_id = IdFactory(EMULATOR_SEED, SystemClock()).aad_object_id(name)
        return TeamsPerson(user=str(aad_object_id), name=name)


def _json(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return _call_json(method, url, body, {"Content-Type": "application/json"})


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}; see {log_path}")
        if _http_ok(url):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer; see {log_path}")


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _demo_room(synapse: SynapseServer, token: str, bot: str) -> str:
    """The demo user's Matrix room (``#war-room``), with the bridge's bot invited (and
    allowed to mark it)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    base = f"{synapse.base_url}/_matrix/client/v3"
    created = _call_json(
        "POST",
        f"{base}/createRoom",
        {
            "preset": "private_chat",
            "name": WAR_ROOM,
            "room_alias_name": DEMO_ROOM_ALIAS,
            "invite": [bot],
            # The bridge marks linked rooms (m.bridge state); the creator keeps their own
            # power (in room version 12 creators are above every level).
            "power_level_content_override": {"users": {bot: 50}},
        },
        headers,
    )
    return str(created["room_id"])


def _call_json(
    method: str, url: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            result = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise RuntimeError(f"{method} {url.split('?', 1)[0]}: {exc.code} {detail}") from None
    if not isinstance(result, dict):
        raise TypeError(f"{method} {url}: the answer is not a JSON object")
    return result


@dataclass(frozen=True, slots=True, kw_only=True)
class StackOptions:
    state_dir: Path
    drill: bool = False
    exit_after_drill: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningStack:
    """Where everything is, once up: what the banner prints and the drill uses."""

    state_dir: Path
    bridge_url: str
    bridge_config: Path
    mongo_uri: str
    synapse_url: str
    server_name: str
    demo_user: str
    matrix_room: str
    matrix_alias: str
    emulator_url: str
    war_room: str
    lead: TeamsPerson
    responder: TeamsPerson
    api_token: str

    @property
    def bridge_log(self) -> Path:
        return self.state_dir / "bridge.log"


def _say(text: str) -> None:
    """One whole line (or lines) to stdout at once: the drill's thread prints too."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise StackStoppedError


def _start(
    stack: ExitStack, state_dir: Path, stop: threading.Event
) -> tuple[RunningStack, BridgeProcess]:
    """Start every part, each registered on ``stack`` to be stopped in reverse order."""
    port = int(os.environ.get("BRIDGE_PORT", "0")) or free_port()
    _say("local stack: starting MongoDB-protocol server (SecantusDB) ...")
    mongo = MongoServer(state_dir / "mongo")
    mongo.start()
    stack.callback(mongo.stop)
    _check(stop)

    _say("local stack: starting Synapse ...")
    registration = build_registration(url=f"http://{LOOPBACK}:{port}", server_name="localhost")
    registration_path = state_dir / "registration.yaml"
    registration_path.write_text(yaml.safe_dump(registration.to_yaml_dict(), sort_keys=False))
    synapse = SynapseServer(
        state_dir / "synapse",
        server_name="localhost",
        app_service_config_files=[registration_path],
    )
    synapse.start()
    stack.callback(synapse.stop)
    demo_user, demo_token = synapse.register_user(DEMO_USER, DEMO_PASSWORD)
    matrix_room = _demo_room(synapse, demo_token, registration.namespace.bot)
    _check(stop)

    _say("local stack: starting the Teams emulator ...")
    emulator = EmulatorProcess(
        port=free_port(),
        bot_endpoint=f"http://{LOOPBACK}:{port}/api/messages",
        log_path=state_dir / "teams-emulator.log",
    )
    stack.callback(emulator.stop)
    emulator.start()
    war_room = emulator.conversation(WAR_ROOM)["id"]
    incident_channel = emulator.conversation(INCIDENT_CHANNEL)["id"]
    lead, responder = emulator.user(LEAD), emulator.user(RESPONDER)
    _check(stop)

    _say("local stack: starting the bridge ...")
    config = state_dir / "bridge.yaml"
    api_token = secrets.token_urlsafe(24)
    StackSettings(
        mongo_uri=mongo.uri,
        bridge_port=port,
        synapse_url=synapse.base_url,
        server_name=synapse.server_name,
        registration=registration,
        people=StackPeople(
            matrix_operator=demo_user,
            teams_operator=lead.user,
            teams_responders=[responder.user],
        ),
        emulator_base=emulator.base,
        emulator_host_port=f"{LOOPBACK}:{emulator.port}",
        matrix_room=matrix_room,
        teams_conversation=war_room,
        incident_channel=incident_channel,
        api_token=api_token,
    ).write(config)
    bridge = BridgeProcess(config, state_dir / "bridge.log", port)
    stack.callback(bridge.stop)
    bridge.start()
    emulator.install_bot(war_room)
    emulator.install_bot(incident_channel)
    return RunningStack(
        state_dir=state_dir,
        bridge_url=f"http://{LOOPBACK}:{port}",
        bridge_config=config,
        mongo_uri=mongo.uri,
        synapse_url=synapse.base_url,
        server_name=synapse.server_name,
        demo_user=demo_user,
        matrix_room=matrix_room,
        matrix_alias=f"#{DEMO_ROOM_ALIAS}:{synapse.server_name}",
        emulator_url=emulator.base,
        war_room=war_room,
        lead=lead,
        responder=responder,
        api_token=api_token,
    ), bridge


def _banner(up: RunningStack) -> str:
    base = up.bridge_url
    first_page = incident_page(base, up.api_token, FIRST_INCIDENT)
    return (
        "\nlocal stack is up:\n"
        f"  bridge        {base}  (health {base}/healthz, ready {base}/readyz, "
        f"metrics {base}/metrics)\n"
        f"  bridge log    {up.bridge_log}\n"
        f"  bridge config {up.bridge_config}\n"
        f"  MongoDB       {up.mongo_uri}\n"
        f"  Synapse       {up.synapse_url}  (server name {up.server_name})\n"
        f"  Matrix login  {up.demo_user} / {DEMO_PASSWORD}  (any Matrix client, "
        f"homeserver {up.synapse_url})\n"
        f'  Matrix room   {up.matrix_room}  ({up.matrix_alias}, "{WAR_ROOM}", linked)\n'
        f"  Teams page    {up.emulator_url}/  (post as {LEAD} or {RESPONDER} in "
        f'"{WAR_ROOM}"; incident threads are in "{INCIDENT_CHANNEL}")\n'
        f"  incidents     !incident declare sev2 <title>, in the war room (operators: "
        f"{up.demo_user}, {LEAD})\n"
        f"  runbooks      !runbook run service-check service=checkout "
        f"({DEMO_RUNBOOKS.relative_to(ROOT)}; approved by someone else: "
        f"{up.demo_user} or {LEAD})\n"
        f"  API token     {up.api_token}  (Authorization: Bearer ..., {base}/api/v1/incidents)\n"
        f"  incident page {first_page}  (the first incident; each incident's link comes "
        "with its postmortem)\n"
        "Ctrl-C stops everything."
    )


def _drill_targets(up: RunningStack) -> DrillTargets:
    return DrillTargets(
        bridge_url=up.bridge_url,
        api_token=up.api_token,
        homeserver_url=up.synapse_url,
        matrix_user=DEMO_USER,
        matrix_password=DEMO_PASSWORD,
        matrix_room=up.matrix_room,
        emulator_url=up.emulator_url,
        war_room=up.war_room,
        war_room_label=WAR_ROOM,
        incident_channel_label=INCIDENT_CHANNEL,
        lead=up.lead,
        responder=up.responder,
    )


def _drill_report(up: RunningStack, drill: DrillThread) -> str:
    outcome = drill.outcome
    if outcome is None:
        return f"drill: FAILED: {drill.failure}\n  bridge log    {up.bridge_log}"
    incident = outcome.incident_id
    return (
        f"drill: succeeded in {outcome.took_s:.1f} s ({incident} declared from Teams, "
        f"{outcome.run_id} requested in Matrix and approved in Teams, resolved, "
        "postmortem written)\n"
        "where to look:\n"
        f"  incident page {outcome.page_link}\n"
        f"  Matrix room   {outcome.matrix_room}  ({incident}'s room; log in as "
        f"{up.demo_user} / {DEMO_PASSWORD} at {up.synapse_url})\n"
        f'  Teams page    {up.emulator_url}/  ("{INCIDENT_CHANNEL}": {incident}\'s thread; '
        f'"{WAR_ROOM}": the declaration)'
    )


def _serve(
    stack: ExitStack,
    up: RunningStack,
    bridge: BridgeProcess,
    stop: threading.Event,
    options: StackOptions,
) -> int:
    """Until Ctrl-C (or the drill's end, with ``--exit``); the exit code."""
    drill: DrillThread | None = None
    if options.drill:
        drill = DrillThread(_drill_targets(up), _say)
        stack.callback(drill.stop, DRILL_STOP_TIMEOUT_S)  # stopped before the servers
        _say("drill: starting (Ctrl-C stops the drill and the stack)")
        drill.start()
    reported = False
    while not stop.wait(0.5):
        if bridge.exited():
            _say("local stack: the bridge exited; stopping")
            return 1
        if drill is not None and not reported and drill.finished.is_set():
            reported = True
            _say(_drill_report(up, drill))
            if options.exit_after_drill:
                return 0 if drill.outcome is not None else 1
            _say("local stack: still running (Ctrl-C stops everything)")
    if drill is not None and not drill.finished.is_set():
        _say("drill: stopped before it finished")
    return 0


def run(options: StackOptions) -> int:
    state_dir = options.state_dir
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    code = 0
    with ExitStack() as stack:
        try:
            up, bridge = _start(stack, state_dir, stop)
        except StackStoppedError:
            pass
        else:
            _say(_banner(up))
            code = _serve(stack, up, bridge, stop, options)
        _say("local stack: stopping ...")
    _say("local stack: stopped")
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--state-dir", type=Path, default=ROOT / ".localstack", help="where servers keep data"
    )
    parser.add_argument(
        "--drill", action="store_true", help="play a scripted incident once the stack is up"
    )
    parser.add_argument(
        "--exit", action="store_true", help="with --drill: stop the stack when the drill is over"
    )
    arguments = parser.parse_args()
    if arguments.exit and not arguments.drill:
        parser.error("--exit goes with --drill")
    return run(
        StackOptions(
            state_dir=arguments.state_dir,
            drill=arguments.drill,
            exit_after_drill=arguments.exit,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
