"""The Job a ``kubernetes-job`` runbook creates: its template rendered, and what the bridge
sets on it whatever the template says.

The bridge sets ``metadata.name`` (deterministic from the run id, a DNS-1123 label of at
most 63 characters), ``metadata.namespace``, its labels (``app.kubernetes.io/managed-by``,
``incident-bridge/run``; also on the pod template), the annotations
``incident-bridge/runbook`` and ``incident-bridge/manifest-digest`` (a hash of the
manifest with secrets masked: a Job found under the run's name is this run's only if the
digest matches), ``activeDeadlineSeconds`` (never more than the run's timeout),
``backoffLimit`` (0 unless the template sets it) and ``restartPolicy`` (``Never`` unless
the template sets it). Parameters fill string leaves only (``render_json``): a value is a
JSON string or number in the manifest and can never add keys or change its structure.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from bridge.runbooks.executors.base import MASK, ExecutorError, Invocation
from bridge.runbooks.model import KubernetesJobSpec, RunID
from bridge.runbooks.templates import json_placeholders, render_json

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "incident-bridge"
RUN_LABEL: Final = "incident-bridge/run"
RUNBOOK_ANNOTATION: Final = "incident-bridge/runbook"
DIGEST_ANNOTATION: Final = "incident-bridge/manifest-digest"
MAX_NAME: Final = 63
MAX_MANIFEST_BYTES: Final = 1_000_000
"""A Job larger than this is refused before it is sent (etcd stores objects of at most
about 1.5 MiB, and the API server takes request bodies of at most 3 MiB)."""
DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE: Final = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobManifest:
    namespace: str
    name: str
    run_label: str
    digest: str
    container: str | None
    """The container whose log is the run's output (the first one)."""
    body: dict[str, Any]
    """What is sent (secrets in place) for ``run``, or masked for a plan."""


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()[:8]


def job_name(prefix: str, run_id: RunID) -> str:
    """``<prefix>-<run id lowercased>``; a run id that does not fit a DNS-1123 label as it
    is gets a hash of itself appended, so different run ids never share a name."""
    lowered = run_id.lower()
    cleaned = re.sub(r"[^a-z0-9-]+", "-", lowered).strip("-")
    name = f"{prefix}-{cleaned}" if cleaned else prefix
    if cleaned != lowered or len(name) > MAX_NAME:
        keep = MAX_NAME - 9
        name = f"{name[:keep].rstrip('-')}-{_short_hash(run_id)}"
    return name


def run_label(run_id: RunID) -> str:
    if len(run_id) <= MAX_NAME and LABEL_VALUE.fullmatch(run_id):
        return run_id
    return f"run-{_short_hash(run_id)}"


def check_prefix(prefix: str) -> str:
    if len(prefix) > 40 or not DNS_LABEL.fullmatch(prefix):
        raise ExecutorError(
            "the Job name prefix must be a lowercase DNS-1123 label of at most 40 characters"
        )
    return prefix


def secret_names(spec: KubernetesJobSpec) -> frozenset[str]:
    return frozenset(ref.name for ref in spec.secrets) | json_placeholders(spec.template).secrets


def build_manifest(
    invocation: Invocation,
    *,
    prefix: str,
    default_namespace: str,
    secrets: Mapping[str, str] | None,
) -> JobManifest:
    """The Job for ``invocation``; ``secrets=None`` masks every secret (a plan)."""
    spec = invocation.spec
    if not isinstance(spec, KubernetesJobSpec):
        raise ExecutorError("the runbook's executor is not kubernetes-job")
    _check_text(invocation)
    masked = dict.fromkeys(secret_names(spec), MASK)
    shown = _complete(
        render_json(spec.template, invocation.args, masked),
        invocation,
        spec,
        prefix=prefix,
        default_namespace=default_namespace,
    )
    digest = hashlib.sha256(
        json.dumps(shown, sort_keys=True, separators=(",", ":")).encode("ascii")
    ).hexdigest()
    if secrets is None:
        body = shown
    else:
        body = _complete(
            render_json(spec.template, invocation.args, secrets),
            invocation,
            spec,
            prefix=prefix,
            default_namespace=default_namespace,
        )
    body["metadata"]["annotations"][DIGEST_ANNOTATION] = digest
    size = len(json.dumps(body, separators=(",", ":")))
    if size > MAX_MANIFEST_BYTES:
        raise ExecutorError(
            f"the rendered Job is {size} bytes; at most {MAX_MANIFEST_BYTES} are sent to"
            " the Kubernetes API"
        )
    containers = body["spec"]["template"]["spec"].get("containers") or []
    first = containers[0] if isinstance(containers, list) and containers else {}
    container = first.get("name") if isinstance(first, Mapping) else None
    return JobManifest(
        namespace=body["metadata"]["namespace"],
        name=body["metadata"]["name"],
        run_label=run_label(invocation.run_id),
        digest=digest,
        container=container if isinstance(container, str) else None,
        body=body,
    )


def _check_text(invocation: Invocation) -> None:
    """A value JSON cannot carry as it is (lone surrogates) is refused, never altered."""
    for name, value in invocation.args.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ExecutorError(
                    f"the value of parameter {name!r} is not valid Unicode text"
                ) from None


def _mapping(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.setdefault(key, {})
    if not isinstance(value, dict):
        raise ExecutorError(f"the Job template's {where} must be a mapping")
    return value


def _complete(
    rendered: Any,
    invocation: Invocation,
    spec: KubernetesJobSpec,
    *,
    prefix: str,
    default_namespace: str,
) -> dict[str, Any]:
    if not isinstance(rendered, dict):
        raise ExecutorError("the Job template must be a mapping")
    api_version = rendered.setdefault("apiVersion", "batch/v1")
    kind = rendered.setdefault("kind", "Job")
    if api_version != "batch/v1" or kind != "Job":
        raise ExecutorError("the Job template must be a batch/v1 Job")
    namespace = spec.namespace or default_namespace
    metadata = _mapping(rendered, "metadata", "metadata")
    if metadata.get("namespace") not in (None, namespace):
        raise ExecutorError("the Job template names another namespace than the runbook's")
    metadata.pop("generateName", None)
    metadata["name"] = job_name(prefix, invocation.run_id)
    metadata["namespace"] = namespace
    ours = {MANAGED_BY_LABEL: MANAGED_BY, RUN_LABEL: run_label(invocation.run_id)}
    _mapping(metadata, "labels", "metadata.labels").update(ours)
    _mapping(metadata, "annotations", "metadata.annotations")[RUNBOOK_ANNOTATION] = (
        invocation.runbook.name
    )
    job_spec = _mapping(rendered, "spec", "spec")
    job_spec.setdefault("backoffLimit", 0)
    limit = max(1, math.floor(invocation.runbook.timeout.total_seconds()))
    deadline = job_spec.get("activeDeadlineSeconds")
    if not isinstance(deadline, int) or isinstance(deadline, bool) or not 0 < deadline <= limit:
        job_spec["activeDeadlineSeconds"] = limit
    template = _mapping(job_spec, "template", "spec.template")
    template_metadata = _mapping(template, "metadata", "spec.template.metadata")
    _mapping(template_metadata, "labels", "spec.template.metadata.labels").update(ours)
    pod_spec = _mapping(template, "spec", "spec.template.spec")
    pod_spec.setdefault("restartPolicy", "Never")
    return rendered


def show(manifest: JobManifest) -> str:
    """A plan: the request and the manifest, as JSON (non-ASCII escaped, so look-alike
    characters are visible)."""
    path = f"/apis/batch/v1/namespaces/{manifest.namespace}/jobs"
    return f"POST {path}\n" + json.dumps(manifest.body, indent=2, ensure_ascii=True)
