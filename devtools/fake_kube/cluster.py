"""The fake cluster's objects and their controllers: Jobs, their Pods, the Pods' logs.

A created Job starts at once: its controller makes a Pod (``<job>-<5 chars>``, labelled
``job-name``, ``batch.kubernetes.io/job-name``, ``controller-uid``), which is ``Pending``
for ``start_delay_s``, then ``Running`` its program (see ``programs``), then
``Succeeded`` or ``Failed``. A failed Pod is replaced until ``backoffLimit`` failures
are exceeded. The Job's conditions follow the API of Kubernetes 1.31+:
``SuccessCriteriaMet`` then ``Complete``, or ``FailureTarget`` then ``Failed`` (reasons
``BackoffLimitExceeded``, ``DeadlineExceeded``). ``activeDeadlineSeconds`` stops a Job
that runs too long. Deleting a Job with ``Background`` or ``Foreground`` propagation
stops and removes its Pods; ``Orphan`` (the API's default for Jobs) leaves them running.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from devtools.fake_kube.objects import now_ns, rfc3339, rfc3339_nano
from devtools.fake_kube.programs import Container, Program, builtin_program, container_argv

POD_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True, slots=True)
class LogLine:
    at_ns: int
    text: str


@dataclass(slots=True, eq=False)
class FakePod:
    namespace: str
    name: str
    uid: str
    job_name: str
    job_uid: str
    created_ns: int
    spec: dict[str, Any]
    labels: dict[str, str]
    phase: str = "Pending"
    started_ns: int | None = None
    finished_ns: int | None = None
    exit_code: int | None = None
    terminated_reason: str = ""
    deleted: bool = False
    logs: list[LogLine] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def container_names(self) -> list[str]:
        return [str(c.get("name", "")) for c in self.spec.get("containers", [])]

    @property
    def running(self) -> bool:
        return self.phase in ("Pending", "Running") and not self.deleted

    @property
    def terminated(self) -> bool:
        return self.phase in ("Succeeded", "Failed") or self.deleted

    def notify(self) -> None:
        """Wake every log follower: they hold the old event, later ones get a new one."""
        self.changed.set()
        self.changed = asyncio.Event()

    def write(self, text: str) -> None:
        self.logs.append(LogLine(now_ns(), text))
        self.notify()

    def to_json(self) -> dict[str, Any]:
        names = self.container_names
        statuses = [
            self._container_status(name, main=index == 0) for index, name in enumerate(names)
        ]
        body: dict[str, Any] = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name,
                "generateName": f"{self.job_name}-",
                "namespace": self.namespace,
                "uid": self.uid,
                "creationTimestamp": rfc3339(self.created_ns),
                "labels": dict(self.labels),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": self.job_name,
                        "uid": self.job_uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": copy.deepcopy(self.spec),
            "status": {"phase": self.phase, "containerStatuses": statuses},
        }
        if self.started_ns is not None:
            body["status"]["startTime"] = rfc3339(self.started_ns)
        return body

    def _container_status(self, name: str, *, main: bool) -> dict[str, Any]:
        state: dict[str, Any]
        if self.phase == "Pending" or self.started_ns is None:
            state = {"waiting": {"reason": "ContainerCreating"}}
        elif self.finished_ns is None:
            state = {"running": {"startedAt": rfc3339(self.started_ns)}}
        else:
            code = (self.exit_code or 0) if main else 0
            state = {
                "terminated": {
                    "exitCode": code,
                    "reason": self.terminated_reason or ("Completed" if code == 0 else "Error"),
                    "startedAt": rfc3339(self.started_ns),
                    "finishedAt": rfc3339(self.finished_ns),
                }
            }
        return {
            "name": name,
            "state": state,
            "ready": "running" in state,
            "restartCount": 0,
            "image": "fake",
        }


@dataclass(slots=True, eq=False)
class FakeJob:
    namespace: str
    name: str
    uid: str
    manifest: dict[str, Any]
    """The stored object (metadata filled in, spec defaulted); ``status`` is computed."""
    created_ns: int
    resource_version: int
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    start_ns: int | None = None
    completion_ns: int | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    pods: list[FakePod] = field(default_factory=list)
    controller: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        return any(
            c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in self.conditions
        )

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.manifest["spec"]
        return spec

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.manifest["metadata"].get("labels", {})
        return labels

    def condition(self, kind: str, reason: str, message: str) -> None:
        stamp = rfc3339(now_ns())
        self.conditions.append(
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": stamp,
                "lastTransitionTime": stamp,
            }
        )

    def to_json(self) -> dict[str, Any]:
        body = copy.deepcopy(self.manifest)
        body["metadata"]["resourceVersion"] = str(self.resource_version)
        job_status: dict[str, Any] = {
            "active": self.active,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "ready": sum(1 for pod in self.pods if pod.phase == "Running"),
            "terminating": 0,
            "uncountedTerminatedPods": {},
        }
        if self.start_ns is not None:
            job_status["startTime"] = rfc3339(self.start_ns)
        if self.completion_ns is not None:
            job_status["completionTime"] = rfc3339(self.completion_ns)
        if self.conditions:
            job_status["conditions"] = copy.deepcopy(self.conditions)
        body["status"] = {k: v for k, v in job_status.items() if v != 0 or k == "ready"}
        return body


class Cluster:
    """The fake cluster's state and the tasks that drive it (owned, cancelled by ``close``)."""

    def __init__(self, *, program: Program | None = None, start_delay_s: float = 0.0) -> None:
        self.jobs: dict[tuple[str, str], FakeJob] = {}
        self.pods: dict[tuple[str, str], FakePod] = {}
        self.program: Program = program or builtin_program
        self.start_delay_s = start_delay_s
        self._resource_version = 1000
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def _start(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for pod in self.pods.values():
            pod.deleted = True
            pod.notify()

    def next_version(self) -> int:
        self._resource_version += 1
        return self._resource_version

    # -- jobs -----------------------------------------------------------------------------

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> FakeJob:
        created = now_ns()
        uid = str(uuid.uuid4())
        metadata = manifest.setdefault("metadata", {})
        metadata.update(
            {
                "namespace": namespace,
                "uid": uid,
                "creationTimestamp": rfc3339(created),
                "generation": 1,
            }
        )
        spec = manifest["spec"]
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("manualSelector", False)
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template_labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
        template_labels.update(self._pod_labels(metadata["name"], uid))
        job = FakeJob(
            namespace=namespace,
            name=metadata["name"],
            uid=uid,
            manifest=manifest,
            created_ns=created,
            resource_version=self.next_version(),
        )
        self.jobs[(namespace, job.name)] = job
        job.controller = self._start(self._control(job), f"fake-kube-job:{job.name}")
        return job

    @staticmethod
    def _pod_labels(job_name: str, uid: str) -> dict[str, str]:
        return {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": job_name,
            "controller-uid": uid,
            "job-name": job_name,
        }

    def delete_job(self, job: FakeJob, propagation: str) -> None:
        del self.jobs[(job.namespace, job.name)]
        if job.controller is not None:
            job.controller.cancel()
        if propagation in ("Background", "Foreground"):
            for pod in job.pods:
                self.delete_pod(pod)

    def delete_pod(self, pod: FakePod) -> None:
        pod.deleted = True
        if pod.task is not None:
            pod.task.cancel()
        self.pods.pop((pod.namespace, pod.name), None)
        pod.notify()

    async def _control(self, job: FakeJob) -> None:
        """The Job controller for one Job: one Pod at a time (parallelism 1)."""
        deadline = job.spec.get("activeDeadlineSeconds")
        backoff_limit = int(job.spec.get("backoffLimit", 6))
        job.start_ns = now_ns()
        pod: FakePod | None = None
        try:
            async with asyncio.timeout(float(deadline) if deadline is not None else None):
                while True:
                    pod = self._make_pod(job)
                    job.active = 1
                    job.resource_version = self.next_version()
                    await self._wait_pod(pod)
                    job.active = 0
                    if pod.exit_code == 0:
                        job.succeeded += 1
                        job.completion_ns = now_ns()
                        job.condition(
                            "SuccessCriteriaMet",
                            "CompletionsReached",
                            "Reached expected number of succeeded pods",
                        )
                        job.condition(
                            "Complete",
                            "CompletionsReached",
                            "Reached expected number of succeeded pods",
                        )
                        break
                    job.failed += 1
                    if job.failed > backoff_limit:
                        message = "Job has reached the specified backoff limit"
                        job.condition("FailureTarget", "BackoffLimitExceeded", message)
                        job.condition("Failed", "BackoffLimitExceeded", message)
                        break
        except TimeoutError:
            if pod is not None and pod.running:
                self._stop_pod(pod, reason="DeadlineExceeded")
                job.failed += 1
            job.active = 0
            message = "Job was active longer than specified deadline"
            job.condition("FailureTarget", "DeadlineExceeded", message)
            job.condition("Failed", "DeadlineExceeded", message)
        job.resource_version = self.next_version()

    def _make_pod(self, job: FakeJob) -> FakePod:
        suffix = "".join(secrets.choice(POD_SUFFIX_ALPHABET) for _ in range(5))
        template = job.spec["template"]
        pod = FakePod(
            namespace=job.namespace,
            name=f"{job.name}-{suffix}",
            uid=str(uuid.uuid4()),
            job_name=job.name,
            job_uid=job.uid,
            created_ns=now_ns(),
            spec=copy.deepcopy(template.get("spec", {})),
            labels=dict(template.get("metadata", {}).get("labels", {})),
        )
        job.pods.append(pod)
        self.pods[(pod.namespace, pod.name)] = pod
        pod.task = self._start(self._run_pod(pod), f"fake-kube-pod:{pod.name}")
        return pod

    async def _wait_pod(self, pod: FakePod) -> None:
        while not pod.terminated:
            event = pod.changed
            await event.wait()

    async def _run_pod(self, pod: FakePod) -> None:
        if self.start_delay_s > 0:
            await asyncio.sleep(self.start_delay_s)
        containers = pod.spec.get("containers", [])
        main: Mapping[str, Any] = containers[0] if containers else {}
        container = Container(
            name=str(main.get("name", "")),
            argv=container_argv(main.get("command"), main.get("args")),
            env={
                str(item.get("name")): str(item.get("value", ""))
                for item in main.get("env", [])
                if isinstance(item, Mapping)
            },
        )
        pod.phase = "Running"
        pod.started_ns = now_ns()
        pod.notify()
        code = await self.program(container, pod.write)
        pod.exit_code = code
        pod.finished_ns = now_ns()
        pod.phase = "Succeeded" if code == 0 else "Failed"
        pod.notify()

    def _stop_pod(self, pod: FakePod, *, reason: str) -> None:
        if pod.task is not None:
            pod.task.cancel()
        pod.exit_code = 137
        pod.terminated_reason = reason
        pod.finished_ns = now_ns()
        pod.phase = "Failed"
        pod.notify()

    def running_pods(self) -> list[FakePod]:
        return [pod for pod in self.pods.values() if pod.running]

    def log_lines(self, pod: FakePod) -> list[str]:
        return [line.text for line in pod.logs]

    @staticmethod
    def log_line_json(line: LogLine, *, timestamps: bool) -> str:
        return f"{rfc3339_nano(line.at_ns)} {line.text}\n" if timestamps else f"{line.text}\n"
