"""Process managers for the real servers behind integration tests and the local stack.

Both managers are synchronous so they fit session-scoped pytest fixtures as well
as a plain script. Every server listens on the loopback interface only, every
wait is bounded by a deadline, and a failure to start raises
:class:`ServerStartError` carrying the tail of the server's own log.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import yaml
from pymongo import MongoClient
from pymongo.errors import PyMongoError

LOOPBACK: Final = "127.0.0.1"

_POLL_INTERVAL: Final = 0.05
_LOG_TAIL_LINES: Final = 40
_STOP_TIMEOUT: Final = 15.0
_KILL_TIMEOUT: Final = 10.0

# Key under which each SynapseServer publishes a random id in its client
# well-known document, to tell its own process from a stranger on the port.
_INSTANCE_KEY: Final = "org.incident_bridge.devtools.instance"

# Every client-facing rate limit Synapse reads, relaxed so that tests which
# create many rooms, users and messages in quick succession are never throttled.
_RATE_PER_SECOND: Final = 100_000
_RATE_BURST: Final = 100_000
_RATE_LIMIT_KEYS: Final = (
    "rc_message",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_admin_redaction",
    "rc_joins_per_room",
    "rc_key_requests",
    "rc_3pid_validation",
    "rc_third_party_invite",
    "rc_media_create",
    "rc_delayed_event_mgmt",
    "rc_room_creation",
    "rc_reports",
    "rc_user_directory",
    "rc_profile",
)
_NESTED_RATE_LIMIT_KEYS: Final = (
    ("rc_login", ("address", "account", "failed_attempts")),
    ("rc_joins", ("local", "remote")),
    ("rc_invites", ("per_room", "per_user", "per_issuer")),
    ("rc_presence", ("per_user",)),
)


def _unlimited() -> dict[str, int]:
    return {"per_second": _RATE_PER_SECOND, "burst_count": _RATE_BURST}


class ServerStartError(RuntimeError):
    """A managed server did not come up (it exited, timed out or its port was taken)."""


class _ForeignServerError(Exception):
    """The port answered, but not from the process this manager started."""


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could bind ``host:port`` now and nothing is listening there.

    The bind probe sets ``SO_REUSEADDR`` like the servers themselves do, so
    connections lingering in TIME_WAIT after a previous run do not count as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return not _accepts_connections(host, port)


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    if not path.exists():
        return "<not written>"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "<empty>"


class _ManagedProcess:
    """Shared lifecycle for one server subprocess: spawn, readiness, stop, kill."""

    name: str

    def __init__(self, port: int | None) -> None:
        self._port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _log_files(self) -> Sequence[Path]:
        raise NotImplementedError

    def _diagnostics(self) -> str:
        return "\n".join(
            f"--- last lines of {path} ---\n{_tail(path)}" for path in self._log_files()
        )

    def _fail(self, reason: str) -> ServerStartError:
        return ServerStartError(
            f"{self.name} on port {self._port}: {reason}\n{self._diagnostics()}"
        )

    def _ensure_port_free(self) -> None:
        if self.running:
            raise ServerStartError(f"{self.name} on port {self._port} is already running")
        if not port_is_free(self._port):
            raise ServerStartError(
                f"{self.name}: port {LOOPBACK}:{self._port} is already in use by another process"
            )

    def _spawn(self, argv: Sequence[str], *, cwd: Path, output: Path) -> None:
        self._close_output()
        self._output = output.open("ab")
        self._proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )

    def _wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready`` until it holds; fail if the process exits or time runs out."""
        proc = self._proc
        if proc is None:
            raise self._fail("was never started")
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._close_output()
                raise self._fail(f"exited with status {code} while starting")
            try:
                answered = ready()
            except _ForeignServerError as exc:
                # Ours will die on "address already in use"; do not leave it behind.
                self._terminate()
                raise self._fail(str(exc)) from None
            if answered:
                # The answer must come while our process is alive, not from its
                # last breath or from a stranger sharing the port.
                if proc.poll() is None:
                    return
                continue
            if time.monotonic() >= deadline:
                self._terminate()
                raise self._fail(f"not ready after {timeout:.0f}s")
            time.sleep(_POLL_INTERVAL)

    def _terminate(self, timeout: float = _STOP_TIMEOUT) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=_KILL_TIMEOUT)
        self._close_output()

    def _close_output(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Safe to call twice."""
        self._terminate(timeout)

    def kill(self) -> None:
        """SIGKILL the server at once, as a crash would; data on disk stays."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=_KILL_TIMEOUT)
        self._close_output()

    def start(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class MongoServer(_ManagedProcess):
    """A SecantusDB daemon (MongoDB wire protocol) running as a subprocess.

    The data directory holds the storage files, an empty config file (so no
    ``secantusd.toml`` from the working or home directory is picked up) and the
    server log. Stopping or killing and then starting again reuses the same port
    and data, which is how tests simulate an outage.
    """

    name = "SecantusDB"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(port)
        self._dir = Path(data_dir).resolve()
        self._start_timeout = start_timeout

    @property
    def uri(self) -> str:
        """Connection string; ``directConnection`` keeps the driver on this one node."""
        return f"mongodb://{LOOPBACK}:{self._port}/?directConnection=true"

    @property
    def data_dir(self) -> Path:
        return self._dir

    @property
    def log_path(self) -> Path:
        return self._dir / "secantusd.log"

    def _log_files(self) -> Sequence[Path]:
        return (self.log_path,)

    def _command(self) -> list[str]:
        if importlib.util.find_spec("secantus") is None:
            raise ServerStartError(
                "SecantusDB is not installed in this interpreter; run ./devtools/bootstrap.sh"
            )
        config = self._dir / "secantusd.toml"
        if not config.exists():
            config.write_text("# Every setting comes from the command line.\n")
        return [
            sys.executable,
            "-m",
            "secantus",
            "--config",
            str(config),
            "--host",
            LOOPBACK,
            "--port",
            str(self._port),
            "--storage-path",
            str(self._dir / "db"),
            "--log-level",
            "INFO",
        ]

    def start(self) -> None:
        """Start the daemon and return once it answers a ``ping``."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self._ensure_port_free()
        self._spawn(self._command(), cwd=self._dir, output=self.log_path)
        self._wait_until(self._answers_ping, self._start_timeout)

    def _answers_ping(self) -> bool:
        """Whether *our* daemon answers: ``serverStatus`` must report this process's pid."""
        if self._proc is None or not _accepts_connections(LOOPBACK, self._port):
            return False
        client: MongoClient[dict[str, Any]] = MongoClient(
            self.uri,
            serverSelectionTimeoutMS=1000,
            connectTimeoutMS=1000,
            socketTimeoutMS=2000,
        )
        try:
            status = client.admin.command("serverStatus")
        except PyMongoError:
            return False
        finally:
            client.close()
        if status.get("pid") != self._proc.pid:
            raise _ForeignServerError(
                f"another server (pid {status.get('pid')}) answers on the port"
            )
        return True


class SynapseServer(_ManagedProcess):
    """A Synapse homeserver (SQLite, client API only) running as a subprocess.

    Everything the server writes (config, signing key, database, media, logs)
    lives in the config directory. Federation is off and every rate limit is
    relaxed, so the server talks to nothing but its local clients.
    """

    name = "Synapse"

    def __init__(
        self,
        config_dir: str | os.PathLike[str],
        server_name: str = "localhost",
        port: int | None = None,
        app_service_config_files: Sequence[str | os.PathLike[str]] | None = None,
        *,
        start_timeout: float = 120.0,
    ) -> None:
        super().__init__(port)
        self._dir = Path(config_dir).resolve()
        self._server_name = server_name
        self._app_services = [str(Path(p).resolve()) for p in app_service_config_files or ()]
        self._start_timeout = start_timeout
        self._shared_secret = secrets.token_hex(32)
        self._macaroon_secret = secrets.token_hex(32)
        self._form_secret = secrets.token_hex(32)
        self._instance_id = secrets.token_hex(16)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self._port}"

    @property
    def server_name(self) -> str:
        return self._server_name

    @property
    def config_dir(self) -> Path:
        return self._dir

    @property
    def config_path(self) -> Path:
        return self._dir / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        return self._dir / "homeserver.log"

    @property
    def _output_path(self) -> Path:
        return self._dir / "homeserver.out"

    @property
    def _signing_key_path(self) -> Path:
        return self._dir / f"{self._server_name}.signing.key"

    def _log_files(self) -> Sequence[Path]:
        return (self._output_path, self.log_path)

    def _write_log_config(self) -> Path:
        path = self._dir / "log_config.yaml"
        log_config = {
            "version": 1,
            "formatters": {
                "precise": {"format": "%(asctime)s %(levelname)s %(name)s:%(lineno)d %(message)s"}
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_path),
                    "encoding": "utf8",
                }
            },
            "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        path.write_text(yaml.safe_dump(log_config, sort_keys=False))
        return path

    def _homeserver_config(self, log_config: Path) -> dict[str, Any]:
        config: dict[str, Any] = {
            "server_name": self._server_name,
            "public_baseurl": f"{self.base_url}/",
            "report_stats": False,
            "listeners": [
                {
                    "port": self._port,
                    "bind_addresses": [LOOPBACK],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self._dir / "homeserver.db")},
            },
            "log_config": str(log_config),
            "media_store_path": str(self._dir / "media_store"),
            "signing_key_path": str(self._signing_key_path),
            "registration_shared_secret": self._shared_secret,
            "macaroon_secret_key": self._macaroon_secret,
            "form_secret": self._form_secret,
            "enable_registration": False,
            "bcrypt_rounds": 4,
            "federation_domain_whitelist": [],
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            "enable_metrics": False,
            "background_updates": {"sleep_enabled": False},
            "app_service_config_files": list(self._app_services),
            # Served at /.well-known/matrix/client; start() reads it back to be
            # sure the server answering on the port is this one.
            "extra_well_known_client_content": {_INSTANCE_KEY: self._instance_id},
        }
        for key in _RATE_LIMIT_KEYS:
            config[key] = _unlimited()
        for key, parts in _NESTED_RATE_LIMIT_KEYS:
            config[key] = {part: _unlimited() for part in parts}
        return config

    def _homeserver_command(self) -> list[str]:
        return [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)]

    def start(self) -> None:
        """Write the config, start the homeserver and return once ``/health`` answers 200."""
        if importlib.util.find_spec("synapse") is None:
            raise ServerStartError(
                "Synapse is not installed in this interpreter; run ./devtools/bootstrap.sh"
            )
        self._dir.mkdir(parents=True, exist_ok=True)
        self._ensure_port_free()
        log_config = self._write_log_config()
        self.config_path.write_text(
            yaml.safe_dump(self._homeserver_config(log_config), sort_keys=False)
        )
        # By default Synapse writes a missing signing key itself before serving.
        self._spawn(self._homeserver_command(), cwd=self._dir, output=self._output_path)
        self._wait_until(self._healthy, self._start_timeout)

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(LOOPBACK, self._port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            payload = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _healthy(self) -> bool:
        """Whether ``/health`` answers 200 and the answering server is this instance."""
        try:
            status, _ = self._request("GET", "/health", timeout=1.0)
            if status != 200:
                return False
            status, raw = self._request("GET", "/.well-known/matrix/client", timeout=1.0)
        except (OSError, http.client.HTTPException):
            return False
        try:
            instance = json.loads(raw).get(_INSTANCE_KEY) if status == 200 else None
        except ValueError:
            instance = None
        if instance != self._instance_id:
            raise _ForeignServerError("another server answers on the port")
        return True

    def register_user(
        self, localpart: str, password: str, *, admin: bool = False
    ) -> tuple[str, str]:
        """Create a user through the shared-secret admin API; return (user_id, access_token)."""
        path = "/_synapse/admin/v1/register"
        status, raw = self._request("GET", path)
        if status != 200:
            raise RuntimeError(f"{self.name}: GET {path} answered {status}: {raw[:500]!r}")
        nonce = str(json.loads(raw)["nonce"])
        mac = hmac.new(self._shared_secret.encode(), digestmod=hashlib.sha1)
        for part in (nonce, localpart, password):
            mac.update(part.encode())
            mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        status, raw = self._request("POST", path, body)
        if status != 200:
            raise RuntimeError(
                f"{self.name}: registering {localpart!r} answered {status}: {raw[:500]!r}"
            )
        reply = json.loads(raw)
        return str(reply["user_id"]), str(reply["access_token"])
