"""What the soak watches in the daemon: its resources, its log, and what reached each side.

``Sampler.sample`` reads the daemon's resident memory (``VmRSS``) and thread count from
``/proc/PID/status``, its open file descriptors from ``/proc/PID/fd`` and its event
loop's unfinished tasks from ``/metrics`` (``bridge_asyncio_tasks``; both the least of a
few reads in half a second, so that requests in flight do not count), the outbox (events
still owed to a room) and finished runbook runs from MongoDB, and what arrived on each
side: the bridge's new messages in the Matrix rooms (``MatrixReader``) and the bot's
messages in the Teams chats.

``LogScan`` reads the daemon's JSON log as it grows and counts what means an
unhandled exception: error- or critical-level lines (which include asyncio's "Task
exception was never retrieved" and ``background_task_crashed``) and tracebacks
written outside the log format; and the deliveries the daemon gave up.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.soak_matrix import MatrixReader, tokens_in
from bench.soak_stack import SoakStack
from bench.soak_traffic import Ledger

ERROR_LEVELS: Final = frozenset({"error", "critical", "exception", "fatal"})
NEVER_RETRIEVED: Final = "Task exception was never retrieved"
FAILED_DELIVERY: Final = "delivery_failed"
KEPT_LINES: Final = 10
READS: Final = 5
READ_GAP_S: Final = 0.1
FINAL_RUN_STATES: Final = ("succeeded", "failed", "timed_out", "cancelled", "unknown")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    offset_s: float
    """When it was due, from the start of the load (the schedule: warm-up ends at one)."""
    elapsed_s: float
    """When it was taken."""
    cpu_s: float
    """The daemon's CPU time so far."""
    rss_kib: int
    fds: int
    threads: int
    tasks: int
    t2m_sent: int
    t2m_delivered: int
    m2t_sent: int
    m2t_delivered: int
    runs_asked: int
    runs_done: int
    queued: int
    errors: int
    fd_kinds: tuple[tuple[str, int], ...]
    """What the descriptors are (see ``fd_kinds``)."""


class LogScan:
    """See the module docstring."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""
        self.lines = 0
        self.errors = 0
        self.never_retrieved = 0
        self.stray_tracebacks = 0
        self.unstructured = 0
        self.warnings: Counter[str] = Counter()
        self.failed_deliveries: Counter[str] = Counter()
        """Deliveries the daemon gave up (``delivery_failed``), by kind, target and error."""
        self.first_errors: list[str] = []

    @property
    def exceptions(self) -> int:
        return self.errors + self.stray_tracebacks

    def read_new(self) -> None:
        try:
            with self._path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            self._line(raw.decode("utf-8", errors="replace"))

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        self.lines += 1
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            self.unstructured += 1
            if "Traceback" in line or NEVER_RETRIEVED in line:
                self.stray_tracebacks += 1
                self._keep(line)
            return
        level = str(entry.get("level", "")).lower()
        event = str(entry.get("event", ""))
        if level in ERROR_LEVELS:
            self.errors += 1
            self.never_retrieved += NEVER_RETRIEVED in event
            self._keep(line)
        elif level == "warning":
            self.warnings[event] += 1
        if event == FAILED_DELIVERY:
            platform = str(entry.get("target", "")).split("|", 1)[0]
            what = f"{entry.get('kind')} to {platform}: {entry.get('error')}"
            self.failed_deliveries[what] += 1

    def _keep(self, line: str) -> None:
        if len(self.first_errors) < KEPT_LINES:
            self.first_errors.append(line[:400])


def proc_status(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, threads) of a live process."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "VmRSS":
            rss = int(value.split()[0])
        elif name == "Threads":
            threads = int(value.strip())
    return rss, threads


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(stack: SoakStack) -> dict[str, float]:
    """CPU seconds used so far by each process of the soak."""
    own = os.times()
    pids = {
        "daemon": stack.daemon.pid,
        "Synapse": stack.synapse.pid,
        "SecantusDB": stack.mongo_server.pid,
    }
    used = {name: cpu_seconds(pid) for name, pid in pids.items() if pid is not None}
    used["load + Teams emulator"] = own.user + own.system
    return used


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _socket_ports(pid: int) -> dict[str, tuple[int, int]]:
    """Socket inode -> (local port, remote port) of the process's TCP sockets."""
    ports: dict[str, tuple[int, int]] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            ports[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
    return ports


def fd_kinds(pid: int, *, own_port: int, peers: Mapping[int, str]) -> Counter[str]:
    """What the process's descriptors are: TCP connections by peer (``peers``: port ->
    name), connections to its own port, pipes, files, other kinds."""
    ports = _socket_ports(pid)
    kinds: Counter[str] = Counter()
    directory = Path(f"/proc/{pid}/fd")
    for entry in directory.iterdir():
        try:
            target = os.readlink(entry)
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            local, remote = ports.get(target[8:-1], (0, 0))
            if local == own_port:
                kinds["tcp: inbound" if remote else "tcp: listening"] += 1
            else:
                kinds[f"tcp -> {peers.get(remote, 'other')}" if remote else "socket: other"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds[target] += 1
        else:
            kinds["file"] += 1
    return kinds


def teams_tokens(stack: SoakStack) -> tuple[Counter[str], dict[str, str]]:
    """Tokens in the bot's live Teams messages (counted per message), and the text of the
    (last) message carrying each."""
    counts: Counter[str] = Counter()
    text_of: dict[str, str] = {}
    for pair in stack.pairs:
        for message in stack.emulator.messages(pair.teams):
            if message.from_bot and not message.deleted:
                found = tokens_in(message.text)
                counts.update(found)
                text_of.update(dict.fromkeys(found, message.text))
    return counts, text_of


class Sampler:
    """See the module docstring."""

    def __init__(
        self, stack: SoakStack, ledger: Ledger, reader: MatrixReader, log: LogScan
    ) -> None:
        self._stack = stack
        self.ledger = ledger
        self.reader = reader
        self.log = log

    def fd_kinds(self) -> Counter[str]:
        stack = self._stack
        peers = {
            stack.synapse.port: "Synapse",
            stack.mongo_server.port: "MongoDB",
            stack.emulator_port: "Teams emulator",
        }
        return fd_kinds(stack.daemon.pid, own_port=stack.daemon.port, peers=peers)

    async def tasks(self) -> int:
        async with self._stack.session.get(f"{self._stack.daemon.base_url}/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith("bridge_asyncio_tasks "):
                return int(float(line.split()[1]))
        raise RuntimeError("the daemon's /metrics has no bridge_asyncio_tasks")

    async def _settled_counts(self) -> tuple[int, int]:
        """(tasks, fds): the least of ``READS`` reads ``READ_GAP_S`` apart, which leaves out
        the requests in flight at one instant (a leaked task or descriptor stays in all)."""
        tasks, fds = [], []
        for n in range(READS):
            if n:
                await asyncio.sleep(READ_GAP_S)  # spaced reads of another process's state
            tasks.append(await self.tasks())
            fds.append(open_fds(self._stack.daemon.pid))
        return min(tasks), min(fds)

    async def queued(self) -> int:
        timeline = self._stack.database["timeline"]
        return int(await timeline.count_documents({"queue.0": {"$exists": True}}))

    async def runs(self) -> Counter[str]:
        """Runbook runs by state."""
        states: Counter[str] = Counter()
        async for doc in self._stack.database["runbook_runs"].find({}, {"state": 1}):
            states[str(doc.get("state"))] += 1
        return states

    async def sample(self, offset_s: float, elapsed_s: float) -> Sample:
        daemon = self._stack.daemon
        daemon.ensure_alive()
        tasks, fds = await self._settled_counts()
        rss, threads = proc_status(daemon.pid)
        await self.reader.catch_up()
        self.log.read_new()
        runs = await self.runs()
        ledger = self.ledger
        return Sample(
            offset_s=offset_s,
            elapsed_s=elapsed_s,
            cpu_s=cpu_seconds(daemon.pid),
            rss_kib=rss,
            fds=fds,
            threads=threads,
            tasks=tasks,
            t2m_sent=ledger.t2m_sent,
            t2m_delivered=sum(1 for t in self.reader.bridged if t.startswith("t2m")),
            m2t_sent=ledger.m2t_sent,
            m2t_delivered=sum(1 for t in teams_tokens(self._stack)[0] if t.startswith("m2t")),
            runs_asked=ledger.runs_asked,
            runs_done=sum(runs[s] for s in FINAL_RUN_STATES),
            queued=await self.queued(),
            errors=self.log.exceptions,
            fd_kinds=tuple(sorted(self.fd_kinds().items())),
        )


HEADER: Final = (
    f"{'elapsed':>8} {'cpu %':>6} {'rss MiB':>8} {'fds':>5} {'tasks':>6} {'thr':>4} "
    f"{'t2m sent/deliv':>15} {'m2t sent/deliv':>15} {'runs':>7} {'queued':>6} {'errors':>6}"
)


def row(sample: Sample, previous: Sample | None, *, warm_up: bool) -> str:
    """One line of the table; CPU is the daemon's share of one core since ``previous``."""
    minutes, seconds = divmod(round(sample.offset_s), 60)
    cpu = (
        (sample.cpu_s - previous.cpu_s) / (sample.elapsed_s - previous.elapsed_s) * 100
        if previous is not None and sample.elapsed_s > previous.elapsed_s
        else 0.0
    )
    return (
        f"{minutes:>5}:{seconds:02d} {cpu:>6.1f} {sample.rss_kib / 1024:>8.1f} {sample.fds:>5} "
        f"{sample.tasks:>6} {sample.threads:>4} "
        f"{f'{sample.t2m_sent}/{sample.t2m_delivered}':>15} "
        f"{f'{sample.m2t_sent}/{sample.m2t_delivered}':>15} "
        f"{f'{sample.runs_done}/{sample.runs_asked}':>7} {sample.queued:>6} {sample.errors:>6}"
        + ("  warm-up" if warm_up else "")
    )
