"""The API server's JSON shapes: ``Status`` errors, times, label selectors, name rules."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A ``Status`` object, as the API server answers every error."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    if code < 400:
        del body["message"]
        del body["reason"]
    return body


def not_found(kind: str, group: str, name: str) -> dict[str, Any]:
    resource = f"{kind}.{group}" if group else kind
    return status(
        404, "NotFound", f'{resource} "{name}" not found', name=name, group=group, kind=kind
    )


def already_exists(kind: str, group: str, name: str) -> dict[str, Any]:
    resource = f"{kind}.{group}" if group else kind
    return status(
        409,
        "AlreadyExists",
        f'{resource} "{name}" already exists',
        name=name,
        group=group,
        kind=kind,
    )


def invalid(kind: str, group: str, name: str, causes: list[str]) -> dict[str, Any]:
    resource = f"{kind.rstrip('s').capitalize()}.{group}" if group else kind
    return status(
        422,
        "Invalid",
        f'{resource} "{name}" is invalid: ' + ", ".join(causes),
        name=name,
        group=group,
        kind=kind.rstrip("s").capitalize(),
        causes=[{"reason": "FieldValueInvalid", "message": cause} for cause in causes],
    )


def rfc3339(ns: int) -> str:
    """Seconds precision, as object timestamps are."""
    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_nano(ns: int) -> str:
    """Go's ``RFC3339Nano``: trailing zeros of the fraction dropped, as log timestamps are."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{whole}.{fraction}Z" if fraction else f"{whole}Z"


def parse_time(text: str) -> int | None:
    """An RFC 3339 time (fraction optional) -> nanoseconds since the epoch."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    seconds = datetime.fromisoformat(whole + zone).timestamp()
    return int(seconds) * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


def now_ns() -> int:
    return time.time_ns()


def label_selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma-joined."""
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True
