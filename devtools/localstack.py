"""The local stack: the whole product on loopback, in one command.

Starts a MongoDB-protocol server (SecantusDB), a Synapse homeserver (with the
bridge's application-service registration and a demo user), the Teams emulator
(with its web page), and the bridge daemon; links a demo room pair (a Matrix
room and the emulator's "Incident war room" group chat); prints where each is
and how to log in; stops everything it started on Ctrl-C (or SIGTERM) in
reverse order. State lives in ``.localstack/`` and is made anew on every start.

Run it through ``./devtools/local-stack.sh``, which prepares the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import yaml

from adapters.matrix.registration import build_registration
from devtools.servers import LOOPBACK, MongoServer, SynapseServer, free_port
from devtools.stack_config import (
    TEAMS_APP_ID,
    TEAMS_APP_PASSWORD,
    TEAMS_TENANT_ID,
    StackSettings,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - a throwaway account on a loopback-only homeserver
READY_TIMEOUT_S = 60.0


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
                    "local",
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
        _json("POST", f"{self.base}/_emulator/api/install", {"conversation": conversation_id})


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
    """The demo user's Matrix room, with the bridge's bot invited (and allowed to mark it)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    base = f"{synapse.base_url}/_matrix/client/v3"
    created = _call_json(
        "POST",
        f"{base}/createRoom",
        {"preset": "private_chat", "name": "Incident war room", "invite": [bot]},
        headers,
    )
    room_id = str(created["room_id"])
    levels_url = f"{base}/rooms/{quote(room_id, safe='')}/state/m.room.power_levels"
    levels = _call_json("GET", levels_url, None, headers)
    levels.setdefault("users", {})[bot] = 50  # the bridge marks linked rooms (m.bridge state)
    _call_json("PUT", levels_url, levels, headers)
    return room_id


def _call_json(
    method: str, url: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        result = json.loads(response.read())
    assert isinstance(result, dict)
    return result


def run(state_dir: Path) -> int:
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    with ExitStack() as stack:
        port = int(os.environ.get("BRIDGE_PORT", "0")) or free_port()
        print("local stack: starting MongoDB-protocol server (SecantusDB) ...", flush=True)
        mongo = MongoServer(state_dir / "mongo")
        mongo.start()
        stack.callback(mongo.stop)

        print("local stack: starting Synapse ...", flush=True)
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

        print("local stack: starting the Teams emulator ...", flush=True)
        emulator = EmulatorProcess(
            port=free_port(),
            bot_endpoint=f"http://{LOOPBACK}:{port}/api/messages",
            log_path=state_dir / "teams-emulator.log",
        )
        stack.callback(emulator.stop)
        emulator.start()
        war_room = next(
            c for c in emulator.directory()["conversations"] if "war room" in c["label"].lower()
        )

        print("local stack: starting the bridge ...", flush=True)
        config = state_dir / "bridge.yaml"
        StackSettings(
            mongo_uri=mongo.uri,
            bridge_port=port,
            synapse_url=synapse.base_url,
            server_name=synapse.server_name,
            registration=registration,
            matrix_operator=demo_user,
            emulator_base=emulator.base,
            emulator_host_port=f"{LOOPBACK}:{emulator.port}",
            matrix_room=matrix_room,
            teams_conversation=war_room["id"],
        ).write(config)
        bridge = BridgeProcess(config, state_dir / "bridge.log", port)
        stack.callback(bridge.stop)
        bridge.start()
        emulator.install_bot(war_room["id"])

        base = f"http://{LOOPBACK}:{port}"
        print(
            "\nlocal stack is up (Ctrl-C stops everything):\n"
            f"  bridge        {base}  (health {base}/healthz, ready {base}/readyz, "
            f"metrics {base}/metrics)\n"
            f"  bridge log    {state_dir / 'bridge.log'}\n"
            f"  bridge config {config}\n"
            f"  MongoDB       {mongo.uri}\n"
            f"  Synapse       {synapse.base_url}  (server name {synapse.server_name})\n"
            f"  Matrix login  {demo_user} / {DEMO_PASSWORD}  (any Matrix client, "
            f"homeserver {synapse.base_url})\n"
            f'  Matrix room   {matrix_room}  ("Incident war room", linked)\n'
            f'  Teams page    {emulator.base}/  (chat as a Teams user in "{war_room["label"]}")\n',
            flush=True,
        )
        while not stop.wait(0.5):
            if bridge.exited():
                print("local stack: the bridge exited; stopping", file=sys.stderr, flush=True)
                return 1
        print("local stack: stopping ...", flush=True)
    print("local stack: stopped", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--state-dir", type=Path, default=ROOT / ".localstack", help="where servers keep data"
    )
    return run(parser.parse_args().state_dir)


if __name__ == "__main__":
    sys.exit(main())
