"""What the ``kubernetes-job`` tests share: runbooks, invocations, collected output."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from bridge.runbooks.executors.base import Invocation
from bridge.runbooks.model import (
    Access,
    ApprovalPolicy,
    KubernetesJobSpec,
    ParamSpec,
    ParamType,
    Runbook,
    RunID,
    SecretRef,
    Value,
)

NAMESPACE = "ops"


def job_template(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    job_spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "registry.example/tools:1",
        "args": list(args),
    }
    if env:
        container["env"] = [{"name": name, "value": value} for name, value in env.items()]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": {"team": "sre"}},
        "spec": {
            **copy.deepcopy(dict(job_spec or {})),
            "template": {"spec": {"containers": [container]}},
        },
    }


def runbook(
    template: Mapping[str, Any],
    params: Sequence[str] = (),
    *,
    timeout_s: float = 60,
    secrets: Sequence[str] = (),
    namespace: str = NAMESPACE,
) -> Runbook:
    return Runbook(
        name="job-under-test",
        description="a Kubernetes Job runbook under test",
        params=tuple(ParamSpec(name=name, type=ParamType.STRING) for name in params),
        access=Access(),
        approvals=ApprovalPolicy(),
        timeout=timedelta(seconds=timeout_s),
        executor=KubernetesJobSpec(
            namespace=namespace,
            template=template,
            secrets=tuple(SecretRef(name=name, env=name) for name in secrets),
        ),
    )


def invocation(
    template: Mapping[str, Any],
    args: Mapping[str, Value] | None = None,
    *,
    run_id: str = "R-1",
    secrets: Mapping[str, str] | None = None,
    timeout_s: float = 60,
) -> Invocation:
    values = dict(args or {})
    return Invocation(
        run_id=RunID(run_id),
        runbook=runbook(template, tuple(values), timeout_s=timeout_s, secrets=tuple(secrets or ())),
        args=values,
        secrets=dict(secrets or {}),
    )


class Collected:
    """An ``OutputSink`` that keeps the text and wakes waiters as it grows."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self._grew = asyncio.Event()

    def __call__(self, text: str) -> None:
        self.chunks.append(text)
        self._grew.set()

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    async def seen(self, needle: str, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while needle not in self.text:
                self._grew.clear()
                await self._grew.wait()
