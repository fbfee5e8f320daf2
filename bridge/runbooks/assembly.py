"""The runbook feature as the daemon builds it: catalog, executors, run store, service,
execution (heartbeats, sweeper), commands and the run API route."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import structlog
from aiohttp import web
from pymongo.asynchronous.database import AsyncDatabase

from bridge.config import Settings
from bridge.ids import UlidFactory
from bridge.model import AppendResult, Platform
from bridge.ports import ChatAdapter, Clock, SupportsPrivilege, TimelineStore
from bridge.runbooks.catalog import RunbookCatalog
from bridge.runbooks.execution import ExecutionSettings, RunExecution
from bridge.runbooks.executors.base import Executor
from bridge.runbooks.executors.exec import ExecExecutor
from bridge.runbooks.executors.http import HttpExecutor
from bridge.runbooks.executors.kube_client import KubeClient, KubeConfigError, KubeSettings
from bridge.runbooks.executors.kubejob import KubernetesJobExecutor
from bridge.runbooks.model import ExecSpec, HttpSpec, KubernetesJobSpec, Run
from bridge.runbooks.mongo_store import MongoRunStore
from bridge.runbooks.params import validate_args
from bridge.runbooks.rules import RoleAccess
from bridge.runbooks.secrets import resolve_secrets
from bridge.runbooks.service import RunbookService, RunRecorder
from bridge.web.auth import ApiAuth, page_key
from bridge.web.runs import RunApi

log = structlog.get_logger(__name__)


@dataclass
class Runbooks:
    catalog: RunbookCatalog
    runs: MongoRunStore
    service: RunbookService
    execution: RunExecution
    http: HttpExecutor
    kube: KubeClient | None

    async def start(self) -> None:
        """Recognise runs a dead process left (``unknown``), then watch and poll."""
        await self.execution.recover()
        self.execution.start_watching()
        await self.catalog.start()

    def reload(self) -> None:
        """SIGHUP: read the catalog again."""
        self.catalog.reload()

    async def close(self) -> None:
        """In-flight runs are left as they are (their heartbeat stops)."""
        await self.catalog.close()
        await self.execution.close()
        await self.http.close()
        if self.kube is not None:
            await self.kube.close()


async def build_runbooks(
    *,
    settings: Settings,
    database: AsyncDatabase[dict[str, Any]],
    store: TimelineStore,
    clock: Clock,
    ids: UlidFactory,
    adapters: Sequence[ChatAdapter],
    instance_id: str,
    on_stored: Callable[[Sequence[AppendResult]], None],
    web_app: web.Application,
) -> Runbooks:
    catalog = RunbookCatalog.from_settings(settings.runbooks)
    runs = MongoRunStore(database)
    await runs.ensure_indexes()
    http = HttpExecutor()
    kube = _kube_client()
    executors: dict[type, Executor] = {ExecSpec: ExecExecutor(), HttpSpec: http}
    if kube is not None:
        executors[KubernetesJobSpec] = KubernetesJobExecutor(client=kube)
    matrix = {a.platform: a for a in adapters}.get(Platform.MATRIX)
    privilege = matrix.privilege if isinstance(matrix, SupportsPrivilege) else None
    execution = RunExecution(
        runs=runs,
        store=store,
        catalog=catalog,
        executors=executors,
        secrets=resolve_secrets,
        recorder=RunRecorder(store=store, clock=clock, ids=ids),
        clock=clock,
        ids=ids,
        settings=_execution_settings(settings, instance_id),
        on_stored=on_stored,
        run_link=_run_link(settings),
    )
    service = RunbookService(
        runs=runs,
        store=store,
        catalog=catalog,
        schema=validate_args,
        access=RoleAccess(catalog.roles, privilege),
        executors=executors,
        execution=execution,
        clock=clock,
        ids=ids,
    )
    web_app.add_routes(RunApi(runs=runs, auth=ApiAuth.from_settings(settings.api)).routes())
    return Runbooks(
        catalog=catalog, runs=runs, service=service, execution=execution, http=http, kube=kube
    )


def _kube_client() -> KubeClient | None:
    try:
        return KubeClient(KubeSettings.in_cluster())
    except KubeConfigError as exc:
        log.info("kubernetes_jobs_unavailable", reason=str(exc))
        return None


def _run_link(settings: Settings) -> Callable[[Run], str | None]:
    token = ApiAuth.from_settings(settings.api).token
    base = settings.http.public_url.rstrip("/")

    def link(run: Run) -> str | None:
        if token is None or run.incident_id is None:
            return None
        key = page_key(token, run.incident_id)
        return f"{base}/api/v1/runs/{quote(run.id, safe='')}?key={key}"

    return link


def _execution_settings(settings: Settings, instance_id: str) -> ExecutionSettings:
    runbooks = settings.runbooks
    return ExecutionSettings(
        instance_id=instance_id,
        heartbeat_s=runbooks.heartbeat_interval_s,
        stale_after_s=runbooks.stale_after_s,
        sweep_s=runbooks.sweep_interval_s,
        edit_interval_s=runbooks.output_edit_interval_s,
        max_output_chars=runbooks.max_output_chars,
    )
