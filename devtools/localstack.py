"""The local stack: every server the bridge needs, on loopback, in one command.

Starts a MongoDB-protocol server (SecantusDB), a Synapse homeserver with a demo
user, and the bridge daemon; prints where each is; stops everything it started
on Ctrl-C (or SIGTERM) in reverse order. State lives in ``.localstack/`` and is
made anew on every start.

Run it through ``./devtools/local-stack.sh``, which prepares the environment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from devtools.servers import LOOPBACK, MongoServer, SynapseServer, free_port

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
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def exited(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None


def _http_ok(url: str) -> bool:
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback URL we built
            return bool(response.status == 200)
    except OSError:
        return False


def _write_bridge_config(path: Path, mongo: MongoServer, port: int) -> None:
    path.write_text(
        "# Written by the local stack; see deploy/config.example.yaml for every setting.\n"
        f"mongo:\n  uri: '{mongo.uri}'\n  database: incident_bridge\n"
        f"http:\n  host: {LOOPBACK}\n  port: {port}\n  public_url: http://{LOOPBACK}:{port}\n"
        "logging:\n  format: json\n  level: info\n"
    )


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
        print("local stack: starting MongoDB-protocol server (SecantusDB) ...", flush=True)
        mongo = MongoServer(state_dir / "mongo")
        mongo.start()
        stack.callback(mongo.stop)

        print("local stack: starting Synapse ...", flush=True)
        synapse = SynapseServer(state_dir / "synapse", server_name="localhost")
        synapse.start()
        stack.callback(synapse.stop)
        demo_user, _token = synapse.register_user(DEMO_USER, DEMO_PASSWORD)

        print("local stack: starting the bridge ...", flush=True)
        port = int(os.environ.get("BRIDGE_PORT", "0")) or free_port()
        config = state_dir / "bridge.yaml"
        _write_bridge_config(config, mongo, port)
        bridge = BridgeProcess(config, state_dir / "bridge.log", port)
        stack.callback(bridge.stop)
        bridge.start()

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
            f"homeserver {synapse.base_url})\n",
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
