"""The ``kubernetes-job`` executor: a runbook's work as a Kubernetes Job.

``run`` creates the Job (see ``kubejob_manifest`` for what the bridge sets on it) through
the Kubernetes API. A Job of the same name that carries this run's label and manifest
digest means the run was already dispatched (a redelivery, a second replica, a retried
create whose first answer was lost): the executor follows that Job instead of failing,
and says so in the output. A Job of that name that is not this run's is never touched.

It then polls the Job's status until a ``Complete`` or ``Failed`` condition, while
following its pods' logs (``follow=true`` with timestamps; a dropped stream resumes from
the last line seen, without repeating lines) into ``output``. The outcome is SUCCEEDED
or FAILED with the condition's reason (and the container's exit code when known).

On cancellation (the run's timeout or ``!runbook cancel``) it deletes the Job with
``Background`` propagation, so Kubernetes stops its pods, bounded by
``delete_timeout_s``, and re-raises. The Job's ``activeDeadlineSeconds`` (at most the
run's timeout) stops it in the cluster even if the bridge dies.

Errors are shown with secret values masked; the token is never in a log or a message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from bridge.runbooks.executors.base import ExecutorError, Invocation, Outcome, OutputSink
from bridge.runbooks.executors.kube_client import (
    KubeAlreadyExistsError,
    KubeAuthError,
    KubeClient,
    KubeError,
    KubeNotFoundError,
    KubeUnavailableError,
)
from bridge.runbooks.executors.kube_logs import follow_job_logs
from bridge.runbooks.executors.kubejob_manifest import (
    DIGEST_ANNOTATION,
    RUN_LABEL,
    JobManifest,
    build_manifest,
    check_prefix,
    show,
)
from bridge.runbooks.model import RunState
from bridge.runbooks.templates import mask
from bridge.tasks import finish_despite_cancel

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeJobSettings:
    job_name_prefix: str = "runbook"
    """Job names are ``<prefix>-<run id>``: give each bridge deployment sharing a
    namespace its own prefix."""
    poll_interval_s: float = 1.0
    """How often the Job's status is read, and a pending pod's log tried again."""
    delete_timeout_s: float = 4.0
    """The bound on deleting the Job when the run is cancelled (the bar is 5 s)."""
    log_drain_s: float = 2.0
    """After the Job finished, how long the last log lines may take to arrive."""


@dataclass(frozen=True, slots=True)
class _Finished:
    condition: str
    """``Complete`` or ``Failed``; empty when the Job disappeared."""
    reason: str
    message: str


class _ForeignJobError(ExecutorError):
    """A Job of the run's name exists and is not this run's."""


class KubernetesJobExecutor:
    """Runs ``KubernetesJobSpec`` runbooks; see the module docstring."""

    def __init__(self, *, client: KubeClient, settings: KubeJobSettings | None = None) -> None:
        self._client = client
        self._settings = settings or KubeJobSettings()
        self._prefix = check_prefix(self._settings.job_name_prefix)

    def _manifest(self, invocation: Invocation, secrets: Mapping[str, str] | None) -> JobManifest:
        return build_manifest(
            invocation,
            prefix=self._prefix,
            default_namespace=self._client.settings.namespace,
            secrets=secrets,
        )

    def plan(self, invocation: Invocation) -> str:
        return show(self._manifest(invocation, None))

    async def run(self, invocation: Invocation, output: OutputSink) -> Outcome:
        job = self._manifest(invocation, invocation.secrets)
        bound = log.bind(run_id=invocation.run_id, namespace=job.namespace, job=job.name)
        ours = True  # until a Job of this name proves to be another's
        try:
            try:
                attached = await self._create_or_attach(job, invocation.secrets)
            except _ForeignJobError:
                ours = False
                raise
            if attached:
                bound.info("kube_job_attached")
                output(
                    f"Job {job.namespace}/{job.name} already exists: this run was already"
                    " dispatched; following it\n"
                )
            else:
                bound.info("kube_job_created")
            return await self._follow(job, output, invocation.secrets)
        except asyncio.CancelledError:
            if ours:
                await self._delete(job, bound)
            raise

    async def _create_or_attach(self, job: JobManifest, secrets: Mapping[str, str]) -> bool:
        """Create the Job; True if this run's Job already existed."""
        try:
            await self._client.create_job(job.namespace, job.body)
        except KubeAlreadyExistsError:
            pass
        except KubeUnavailableError as exc:
            # The create may have been carried out: nothing may run unobserved.
            await self._delete(job, log.bind(namespace=job.namespace, job=job.name))
            raise ExecutorError(_safe(exc, secrets)) from None
        except KubeError as exc:
            raise ExecutorError(_safe(exc, secrets)) from None
        else:
            return False
        try:
            existing = await self._client.get_job(job.namespace, job.name)
        except KubeError as exc:
            raise ExecutorError(_safe(exc, secrets)) from None
        metadata = existing.get("metadata", {})
        labels = metadata.get("labels") or {}
        annotations = metadata.get("annotations") or {}
        if (
            labels.get(RUN_LABEL) != job.run_label
            or annotations.get(DIGEST_ANNOTATION) != job.digest
        ):
            raise _ForeignJobError(
                f"a Job named {job.name} already exists in namespace {job.namespace} and was"
                " not created for this run (another runbook definition or another bridge"
                " deployment); it was left alone"
            )
        return True

    async def _follow(
        self, job: JobManifest, output: OutputSink, secrets: Mapping[str, str]
    ) -> Outcome:
        finished = asyncio.Event()
        follower = asyncio.get_running_loop().create_task(
            follow_job_logs(
                self._client,
                job.namespace,
                job.name,
                container=job.container,
                output=output,
                finished=finished,
                poll_interval_s=self._settings.poll_interval_s,
            ),
            name=f"kube-job-logs:{job.name}",
        )
        try:
            try:
                result = await self._wait_finished(job)
            except KubeError as exc:
                await self._delete(job, log.bind(namespace=job.namespace, job=job.name))
                return Outcome(
                    state=RunState.FAILED,
                    summary=f"lost track of Job {job.name}; it was deleted: {_safe(exc, secrets)}",
                )
            finished.set()
            await asyncio.wait({follower}, timeout=self._settings.log_drain_s)
        finally:
            if not follower.done():
                follower.cancel()
            await asyncio.wait({follower})
            if not follower.cancelled() and (crash := follower.exception()) is not None:
                log.error("kube_job_logs_crashed", job=job.name, exc_info=crash)
        return await self._outcome(job, result)

    async def _wait_finished(self, job: JobManifest) -> _Finished:
        while True:
            try:
                body = await self._client.get_job(job.namespace, job.name)
            except KubeNotFoundError:
                return _Finished("", "", "")
            except KubeUnavailableError:
                log.info("kube_job_status_unavailable", job=job.name)
            else:
                for condition in body.get("status", {}).get("conditions") or []:
                    kind = condition.get("type")
                    if kind in ("Complete", "Failed") and condition.get("status") == "True":
                        return _Finished(
                            str(kind),
                            str(condition.get("reason", "")),
                            str(condition.get("message", "")),
                        )
            await asyncio.sleep(self._settings.poll_interval_s)

    async def _outcome(self, job: JobManifest, result: _Finished) -> Outcome:
        if not result.condition:
            return Outcome(
                state=RunState.FAILED, summary=f"Job {job.name} was deleted before it finished"
            )
        summary = f"Job {job.name} {result.condition}"
        if result.reason:
            summary += f" ({result.reason})"
        if result.condition == "Complete":
            return Outcome(state=RunState.SUCCEEDED, summary=summary)
        code = await self._exit_code(job)
        if code is not None:
            summary += f"; exit code {code}"
        return Outcome(state=RunState.FAILED, summary=summary)

    async def _exit_code(self, job: JobManifest) -> int | None:
        try:
            pods = await self._client.list_job_pods(job.namespace, job.name)
        except KubeError:
            return None
        for pod in reversed(pods):
            for status in pod.get("status", {}).get("containerStatuses") or []:
                if job.container is not None and status.get("name") != job.container:
                    continue
                code = status.get("state", {}).get("terminated", {}).get("exitCode")
                if isinstance(code, int):
                    return code
        return None

    async def _delete(self, job: JobManifest, bound: Any) -> None:
        """Delete the Job (Background propagation) within ``delete_timeout_s``. A cancel of
        the caller while this runs does not cut it short: it is raised once this is done."""
        await finish_despite_cancel(self._delete_within_deadline(job, bound))

    async def _delete_within_deadline(self, job: JobManifest, bound: Any) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            found = await asyncio.wait_for(
                self._client.delete_job(job.namespace, job.name),
                timeout=self._settings.delete_timeout_s,
            )
        except TimeoutError:
            took_ms = round((loop.time() - started) * 1000)
            bound.warning("kube_job_delete_failed", error="timeout", took_ms=took_ms)
        except KubeError as failure:
            took_ms = round((loop.time() - started) * 1000)
            bound.warning(
                "kube_job_delete_failed",
                error=type(failure).__name__,
                status=getattr(failure, "status", None),
                took_ms=took_ms,
            )
        else:
            took_ms = round((loop.time() - started) * 1000)
            bound.info("kube_job_deleted", found=found, took_ms=took_ms)


def _safe(exc: KubeError, secrets: Mapping[str, str]) -> str:
    """An error's message with secret values masked (the API may quote the manifest)."""
    prefix = "" if isinstance(exc, KubeAuthError) else "Kubernetes API: "
    return mask(prefix + str(exc), secrets)
