"""The API server's checks of a created Job, those a client can get wrong."""

from __future__ import annotations

import re
from typing import Any

from devtools.fake_kube.objects import DNS_LABEL, DNS_SUBDOMAIN, invalid, status

LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
MAX_JOB_NAME = 63
"""A Job's name becomes the value of its pods' ``job-name`` label."""


class RejectedError(Exception):
    """The request is refused with ``code`` and the ``Status`` ``body``."""

    def __init__(self, code: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message", ""))
        self.code = code
        self.body = body


def _bad_request(message: str) -> RejectedError:
    return RejectedError(400, status(400, "BadRequest", message))


def check_job(namespace: str, manifest: dict[str, Any]) -> None:
    """Raise ``RejectedError`` as the API server would answer (400 or 422)."""
    if manifest.get("apiVersion") != "batch/v1" or manifest.get("kind") != "Job":
        raise _bad_request("the body must be a batch/v1 Job")
    metadata = manifest.get("metadata")
    if not isinstance(metadata, dict):
        raise _bad_request("metadata: must be an object")
    if metadata.get("namespace") not in (None, namespace):
        raise _bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    name = str(metadata.get("name") or metadata.get("generateName") or "")
    causes = _metadata_causes(metadata)
    spec = manifest.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("template"), dict):
        causes.append("spec.template: Required value")
    else:
        causes.extend(_spec_causes(spec))
    if causes:
        raise RejectedError(422, invalid("jobs", "batch", name, causes))


def _metadata_causes(metadata: dict[str, Any]) -> list[str]:
    causes: list[str] = []
    name = metadata.get("name") or metadata.get("generateName")
    if not isinstance(name, str) or not name:
        causes.append("metadata.name: Required value: name or generateName is required")
    elif metadata.get("name") and (len(name) > MAX_JOB_NAME or not DNS_SUBDOMAIN.fullmatch(name)):
        causes.append(
            f'metadata.name: Invalid value: "{name}": must be a lowercase RFC 1123'
            f" subdomain of at most {MAX_JOB_NAME} characters"
        )
    for key, value in (metadata.get("labels") or {}).items():
        if not isinstance(value, str):
            raise _bad_request(f"metadata.labels.{key}: must be a string")
        if len(value) > 63 or not LABEL_VALUE.fullmatch(value):
            causes.append(f'metadata.labels: Invalid value: "{value}": a valid label value')
    return causes


def _spec_causes(spec: dict[str, Any]) -> list[str]:
    causes: list[str] = []
    for field_name in ("backoffLimit", "activeDeadlineSeconds"):
        value = spec.get(field_name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            causes.append(f"spec.{field_name}: Invalid value: must be a non-negative integer")
    pod_spec = spec["template"].get("spec")
    if not isinstance(pod_spec, dict):
        return [*causes, "spec.template.spec: Required value"]
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        causes.append(
            'spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"'
        )
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [*causes, "spec.template.spec.containers: Required value"]
    for index, container in enumerate(containers):
        causes.extend(_container_causes(f"spec.template.spec.containers[{index}]", container))
    return causes


def _container_causes(where: str, container: Any) -> list[str]:
    if not isinstance(container, dict):
        raise _bad_request(f"{where}: must be an object")
    for list_field in ("command", "args"):
        items = container.get(list_field) or []
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise _bad_request(
                f"json: cannot unmarshal into Go struct field Container.{where}.{list_field}"
                " of type string"
            )
    for item in container.get("env") or []:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("value", ""), str)
        ):
            raise _bad_request(f"{where}.env: each entry needs a string name and value")
    causes: list[str] = []
    if not isinstance(container.get("name"), str) or not DNS_LABEL.fullmatch(container["name"]):
        causes.append(f"{where}.name: Invalid value: a lowercase RFC 1123 label")
    if not container.get("image"):
        causes.append(f"{where}.image: Required value")
    return causes
