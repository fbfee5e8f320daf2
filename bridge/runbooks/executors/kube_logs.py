"""Following a Job's pod logs into a run's output, in order and without repeats.

Each pod of the Job (oldest first) is followed with ``follow=true&timestamps=true``. A
stream that ends while the pod still runs (a dropped connection, an API server restart)
is opened again with ``sinceTime`` = the last line's time; lines already seen (by time,
and by count among lines of the same time) are skipped. A pod still ``Pending`` is tried
again every poll interval. The follower stops when the Job has finished
(``finished``) and every pod seen has been read to its end; it never raises a
``KubeError`` (a log it cannot read is noted in the output and skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from typing import Final

import structlog

from bridge.runbooks.executors.base import OutputSink
from bridge.runbooks.executors.kube_client import (
    KubeAuthError,
    KubeClient,
    KubeError,
    KubeNotFoundError,
)

log = structlog.get_logger(__name__)

_STAMP: Final = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) (.*)", re.DOTALL
)
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})

TimeKey = tuple[str, str, int]


@dataclass(slots=True)
class _Position:
    """Where a pod's log was read up to: the last line's time and how many lines of
    exactly that time were seen."""

    stamp: str | None = None
    key: TimeKey | None = None
    seen_at_key: int = 0
    skipping_at_key: int = 0

    def restart(self) -> None:
        self.skipping_at_key = self.seen_at_key

    def accept(self, line: str) -> str | None:
        """The text of a new line, or None for one already seen."""
        match = _STAMP.fullmatch(line)
        if match is None:
            return line
        whole, fraction, zone, text = match.groups()
        key: TimeKey = (whole, zone, int((fraction or "").ljust(9, "0")))
        if self.key is not None and key < self.key:
            return None
        if key == self.key:
            if self.skipping_at_key > 0:
                self.skipping_at_key -= 1
                return None
            self.seen_at_key += 1
        else:
            self.key, self.seen_at_key, self.skipping_at_key = key, 1, 0
            self.stamp = line.split(" ", 1)[0]
        return text


async def follow_job_logs(
    client: KubeClient,
    namespace: str,
    job_name: str,
    *,
    container: str | None,
    output: OutputSink,
    finished: asyncio.Event,
    poll_interval_s: float,
) -> None:
    done: set[str] = set()
    while True:
        try:
            pods = await client.list_job_pods(namespace, job_name)
        except KubeError as exc:
            if isinstance(exc, KubeAuthError):
                output(f"[logs unavailable: {exc}]\n")
                return
            pods = []
        todo = [pod for pod in pods if _name(pod) not in done]
        if not todo:
            if finished.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), poll_interval_s)
            continue
        for pod in todo:
            name = _name(pod)
            if not await _follow_pod(
                client,
                namespace=namespace,
                pod=name,
                container=container,
                output=output,
                finished=finished,
                poll_interval_s=poll_interval_s,
            ):
                return
            done.add(name)


def _name(pod: dict[str, object]) -> str:
    metadata = pod.get("metadata")
    return str(metadata.get("name", "")) if isinstance(metadata, dict) else ""


async def _follow_pod(
    client: KubeClient,
    *,
    namespace: str,
    pod: str,
    container: str | None,
    output: OutputSink,
    finished: asyncio.Event,
    poll_interval_s: float,
) -> bool:
    """Read one pod's log to its end; False when logs cannot be read at all."""
    position = _Position()
    while True:
        ended = False
        try:
            async for line in client.stream_pod_log(
                namespace, pod, container=container, since_time=position.stamp
            ):
                text = position.accept(line)
                if text is not None:
                    output(text + "\n")
            ended = True
        except KubeNotFoundError:
            return True  # the pod is gone
        except KubeAuthError as exc:
            output(f"[logs unavailable: {exc}]\n")
            return False
        except KubeError as exc:
            # 400 while the container is waiting to start; a dropped stream.
            log.debug("kube_pod_log_retry", pod=pod, status=exc.status, reason=exc.reason)
        try:
            phase = (await client.get_pod(namespace, pod)).get("status", {}).get("phase")
        except KubeNotFoundError:
            return True
        except KubeError:
            phase = None
        if phase in TERMINAL_PHASES and (ended or finished.is_set()):
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), poll_interval_s)
        position.restart()
