"""``/api/v1/runs/{run_id}``: one runbook run with its whole (capped, redacted) output.

Guarded like the rest of the API: the bearer token, or, for a run in an incident's
rooms, that incident's page key (so the run's message can link to it).
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from bridge.errors import StoreError
from bridge.runbooks.model import Run, RunID
from bridge.runbooks.store import RunStore
from bridge.web.api import error_response, unauthorized, unconfigured
from bridge.web.auth import AccessDeniedError, AccessUnconfiguredError, ApiAuth

log = structlog.get_logger(__name__)


def run_json(run: Run) -> dict[str, Any]:
    def when(value: object) -> str | None:
        return value.isoformat() if value is not None and hasattr(value, "isoformat") else None

    return {
        "id": run.id,
        "runbook": run.runbook,
        "args": dict(run.args),
        "state": run.state.value,
        "dry_run": run.dry_run,
        "incident_id": run.incident_id,
        "requested_by": {
            "platform": run.requested_by.platform.value,
            "user_id": run.requested_by.user_id,
            "display_name": run.requested_by.display_name,
        },
        "approvals": [
            {"platform": a.by.platform.value, "user_id": a.by.user_id, "at": when(a.at)}
            for a in run.approvals
        ],
        "created_at": when(run.created_at),
        "started_at": when(run.started_at),
        "finished_at": when(run.finished_at),
        "outcome": run.outcome,
        "output": run.output,
        "output_truncated": run.output_truncated,
    }


class RunApi:
    def __init__(self, *, runs: RunStore, auth: ApiAuth) -> None:
        self._runs = runs
        self._auth = auth

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/v1/runs/{run_id}", self.get_run)]

    async def get_run(self, request: web.Request) -> web.StreamResponse:
        run_id = RunID(request.match_info["run_id"])
        try:
            run = await self._authorized(request, run_id)
        except AccessUnconfiguredError:
            return unconfigured()
        except AccessDeniedError:
            log.info("run_api_unauthorized")
            return unauthorized()
        except StoreError as exc:
            log.warning("run_api_store_error", error=str(exc))
            return error_response(503, "run storage is unavailable; try again")
        if run is None:
            return error_response(404, f"no run {run_id}")
        return web.json_response(run_json(run))

    async def _authorized(self, request: web.Request, run_id: RunID) -> Run | None:
        """The run, once the request may read it (the bearer token, or the page key of
        the run's incident); ``AccessDeniedError`` otherwise."""
        if "key" not in request.query:
            self._auth.check_bearer(request)
            return await self._runs.get(run_id)
        run = await self._runs.get(run_id)
        if run is None or run.incident_id is None:
            raise AccessDeniedError
        self._auth.check_page(request, run.incident_id)
        return run
