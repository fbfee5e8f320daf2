"""The bridge daemon as a child process: started, awaited ready, stopped, killed, restarted.

It runs ``python -m bridge run --config FILE`` exactly as an operator does, with
the environment of the test run minus any ``BRIDGE__`` overrides, and writes its
log to a file that assertion messages quote from.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final

import aiohttp

from bridge import exitcodes
from tests.support.waiting import eventually

ROOT: Final = Path(__file__).resolve().parents[2]
READY_WITHIN_S: Final = 60.0
STOP_WITHIN_S: Final = 30.0
LOG_TAIL_LINES: Final = 60


class DaemonExitedError(AssertionError):
    """The daemon stopped on its own while it was expected to run."""


class BridgeDaemon:
    """One bridge process at a time, on a fixed port, from one settings file."""

    def __init__(self, *, config: Path, port: int, log_path: Path) -> None:
        self.config = config
        self.port = port
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE__")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )

    async def start(self, session: aiohttp.ClientSession) -> None:
        """Start the process and return once ``/readyz`` answers 200."""
        if self.running:
            raise RuntimeError("the daemon is already running")
        self._proc = self._spawn()
        self.starts += 1
        proc = self._proc

        async def ready() -> bool:
            if proc.poll() is not None:
                raise DaemonExitedError(
                    f"the bridge exited with code {proc.returncode} while starting\n{self.tail()}"
                )
            try:
                async with session.get(f"{self.base_url}/readyz") as response:
                    await response.read()
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        try:
            await eventually(ready, within=READY_WITHIN_S, interval=0.1, what="the bridge ready")
        except AssertionError as exc:
            if isinstance(exc, DaemonExitedError):
                raise
            raise AssertionError(f"{exc}\n{self.tail()}") from None

    async def stop(self) -> int:
        """SIGTERM and wait; the exit code (0 for a clean stop)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else exitcodes.OK
        self.terminate()
        return await self.wait_exit(STOP_WITHIN_S)

    def terminate(self) -> None:
        """Send SIGTERM, as Kubernetes does to a pod it stops, and return at once."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise DaemonExitedError(f"the bridge was not running to be stopped\n{self.tail()}")
        proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, within: float) -> int:
        """The exit code, once the process has exited; killed and failed after ``within`` s."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("the daemon was never started")
        try:
            return await asyncio.to_thread(proc.wait, within)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, STOP_WITHIN_S)
            raise AssertionError(
                f"the bridge did not exit within {within} s of SIGTERM\n{self.tail()}"
            ) from None

    async def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no cleanup runs."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise DaemonExitedError(
                f"the bridge was not running when it was to be killed\n{self.tail()}"
            )
        proc.kill()
        await asyncio.to_thread(proc.wait, STOP_WITHIN_S)

    async def restart(self, session: aiohttp.ClientSession) -> None:
        code = await self.stop()
        assert code == exitcodes.OK, f"the bridge stopped with code {code}\n{self.tail()}"
        await self.start(session)

    def ensure_alive(self) -> None:
        if not self.running:
            code = self._proc.returncode if self._proc is not None else None
            raise DaemonExitedError(f"the bridge is not running (exit code {code})\n{self.tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = self.log_text().splitlines()[-lines:]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text)

    async def close(self) -> None:
        """Stop whatever still runs (at the end of a test, whatever happened)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            await self.stop()
        finally:
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait, STOP_WITHIN_S)
