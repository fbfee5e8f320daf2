"""Liveness, readiness and metrics endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bridge.errors import BridgeError
from bridge.metrics import BridgeMetrics

log = structlog.get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]
"""Returns when the dependency is ready; raises (any error) when it is not."""


@dataclass
class Readiness:
    """What /readyz reports: every check passes and the process is not draining.

    Advisory checks (a platform's server that the bridge sends to, queuing meanwhile) are
    reported and exported like the others but do not make the process unready: taking
    every replica out of its Service while the homeserver is down would turn away Teams
    messages that the bridge can store and deliver later."""

    timeout_s: float
    metrics: BridgeMetrics
    draining: bool = False
    _checks: list[tuple[str, ReadinessCheck]] = field(default_factory=list)
    _advisory: list[tuple[str, ReadinessCheck]] = field(default_factory=list)

    def add(self, name: str, check: ReadinessCheck) -> None:
        self._checks.append((name, check))

    def add_advisory(self, name: str, check: ReadinessCheck) -> None:
        self._advisory.append((name, check))

    async def evaluate(self) -> tuple[bool, dict[str, str]]:
        ready, report, _ = await self.evaluate_all()
        return ready, report

    async def evaluate_all(self) -> tuple[bool, dict[str, str], dict[str, str]]:
        """Readiness, the gating checks' report and the advisory checks' report."""
        gating, advisory = await asyncio.gather(
            asyncio.gather(*(self._run(name, check) for name, check in self._checks)),
            asyncio.gather(*(self._run(name, check) for name, check in self._advisory)),
        )
        report = dict(gating)
        if self.draining:
            report["process"] = "shutting down"
        ready = all(v == "ok" for v in report.values())
        return ready, report, dict(advisory)

    async def _run(self, name: str, check: ReadinessCheck) -> tuple[str, str]:
        try:
            await asyncio.wait_for(check(), self.timeout_s)
        except TimeoutError:
            status = f"no answer within {self.timeout_s:g} s"
        except BridgeError as exc:
            status = str(exc)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; reported, not raised
            status = type(exc).__name__
        else:
            status = "ok"
        self.metrics.ready.labels(dependency=name).set(1 if status == "ok" else 0)
        return name, status


def health_routes(readiness: Readiness, metrics: BridgeMetrics) -> list[web.RouteDef]:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        ready, report, advisory = await readiness.evaluate_all()
        if not ready:
            log.info("not_ready", checks=report)
        body: dict[str, object] = {"ready": ready, "checks": report}
        if advisory:
            body["advisory"] = advisory
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_endpoint(_request: web.Request) -> web.Response:
        body = await asyncio.to_thread(metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics_endpoint),
    ]
