"""The runbook definition format: YAML documents checked strictly, then made ``Runbook``s.

``pydantic`` checks the shape (unknown keys, types); ``definition_problems`` then checks
the meaning (patterns compile, defaults fit, placeholders name declared parameters and
secrets, ...). Every problem names its key path inside the document (``params.0.pattern``).
See ``deploy/runbooks/`` for commented examples.

Placeholders follow the template rule of the executors: ``{name}`` is a validated
parameter, ``{secret:NAME}`` a declared secret, ``{{`` and ``}}`` are literal braces. In
an ``exec`` argv a parameter is always a whole element, and secrets never appear there
(a process's arguments are visible to every user of the machine).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import fields, is_dataclass, replace
from datetime import timedelta
from enum import Enum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from bridge.runbooks.model import (
    Access,
    ApprovalPolicy,
    ExecSpec,
    ExecutorSpec,
    HttpSpec,
    KubernetesJobSpec,
    ParamSpec,
    ParamType,
    Runbook,
    SecretRef,
    Value,
)
from bridge.runbooks.params import check_default, forbidden_character, parse_duration

RUNBOOK_NAME: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
PARAM_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")
"""Also the names of secrets."""
ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
AAD_ID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
MXID: Final = re.compile(r"@[^:\s]+:[^\s]+")
NAMESPACE: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
HTTP_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
NAME_HINT: Final = "must be lowercase letters, digits and _ (starting with a letter)"
DURATION_HINT: Final = "must be a duration such as 90s, 5m or 1h30m, or a number of seconds"
MAX_TIMEOUT: Final = timedelta(hours=24)
MAX_APPROVAL_WAIT: Final = timedelta(days=7)
MAX_STRING_LENGTH: Final = 4096
MAX_OUTPUT_BYTES: Final = 16 * 1024 * 1024

_TEMPLATE_TOKEN: Final = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_ARGV_PLACEHOLDER: Final = re.compile(r"\{([a-z][a-z0-9_]*|secret:[^{}]*)\}")


def _duration(value: object) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        # pydantic reports a ValueError (not a TypeError) as a validation problem
        raise ValueError(DURATION_HINT)  # noqa: TRY004
    return value


def _scalar(value: object) -> str | int | bool:
    if not isinstance(value, str | int | bool):
        raise ValueError("must be a string, a number or true/false")  # noqa: TRY004
    return value


DurationText = Annotated[int | str, PlainValidator(_duration)]
Scalar = Annotated[str | int | bool, PlainValidator(_scalar)]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ParamDoc(_Doc):
    name: str
    type: Literal["string", "enum", "integer", "boolean", "duration"]
    description: str = ""
    required: bool = False
    default: Scalar | None = None
    pattern: str | None = None
    max_length: int | None = None
    choices: list[str] | None = None
    minimum: DurationText | None = None
    maximum: DurationText | None = None


class AccessDoc(_Doc):
    aad_object_ids: list[str] = Field(default_factory=list)
    aad_groups: list[str] = Field(default_factory=list)
    mxids: list[str] = Field(default_factory=list)
    matrix_power_level: Annotated[int, Field(ge=0, le=100)] | None = None
    roles: list[str] = Field(default_factory=list)


class ApprovalsDoc(_Doc):
    count: Annotated[int, Field(ge=0, le=10)] = 0
    approvers: AccessDoc | None = None
    expires_after: DurationText = "30m"


class SecretDoc(_Doc):
    name: str
    file: str | None = None
    env: str | None = None


class HttpDoc(_Doc):
    type: Literal["http"]
    method: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    secrets: list[SecretDoc] = Field(default_factory=list)
    success_statuses: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])


class ExecDoc(_Doc):
    type: Literal["exec"]
    argv: Annotated[list[str], Field(min_length=1)]
    env: dict[str, str] = Field(default_factory=dict)
    inherit_env: list[str] = Field(default_factory=lambda: ["PATH", "LANG", "TZ"])
    cwd: str | None = None
    secrets: list[SecretDoc] = Field(default_factory=list)
    max_output_bytes: Annotated[int, Field(ge=1, le=MAX_OUTPUT_BYTES)] = 64 * 1024


class KubernetesJobDoc(_Doc):
    type: Literal["kubernetes-job"]
    namespace: str | None = None
    """Where the Job runs; by default the bridge's own namespace (its service account's)."""
    template: dict[str, Any]
    secrets: list[SecretDoc] = Field(default_factory=list)


class RunbookDoc(_Doc):
    name: str
    description: Annotated[str, Field(min_length=1)]
    params: list[ParamDoc] = Field(default_factory=list)
    access: AccessDoc
    approvals: ApprovalsDoc = ApprovalsDoc()
    timeout: DurationText
    concurrency: Annotated[int, Field(ge=1, le=100)] = 1
    outside_incident: bool = False
    executor: Annotated[HttpDoc | ExecDoc | KubernetesJobDoc, Field(discriminator="type")]


Problem = tuple[str, str]
"""A key path inside the document and what is wrong there."""


class Problems:
    """Problems found so far in one definition."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))

    def __len__(self) -> int:
        return len(self.items)


def definition_problems(doc: RunbookDoc, roles: Mapping[str, Access]) -> list[Problem]:
    """Everything wrong with a well-shaped definition (empty when it is valid)."""
    out = Problems()
    if not RUNBOOK_NAME.fullmatch(doc.name):
        out.add("name", "must be lowercase letters, digits and dashes (at most 63)")
    _check_params(doc, out)
    params = {param.name for param in doc.params}
    _check_access(doc.access, "access", roles, out, required=True)
    _check_approvals(doc.approvals, roles, out)
    timeout = _seconds(doc.timeout, "timeout", out)
    if timeout is not None and not 1 <= timeout <= MAX_TIMEOUT.total_seconds():
        out.add("timeout", "must be between 1s and 24h")
    secrets = _check_secrets(doc.executor.secrets, out)
    if isinstance(doc.executor, ExecDoc):
        _check_exec(doc.executor, params, secrets, out)
    elif isinstance(doc.executor, HttpDoc):
        _check_http(doc.executor, params, secrets, out)
    else:
        _check_job(doc.executor, params, secrets, out)
    return out.items


def to_runbook(doc: RunbookDoc, source: str) -> Runbook:
    """The ``Runbook`` of a definition without problems, its digest computed."""
    runbook = Runbook(
        name=doc.name,
        description=doc.description,
        params=tuple(_param_spec(p) for p in doc.params),
        access=_access(doc.access),
        approvals=ApprovalPolicy(
            count=doc.approvals.count,
            approvers=_access(doc.approvals.approvers or AccessDoc()),
            expires_after=timedelta(seconds=_as_seconds(doc.approvals.expires_after)),
        ),
        timeout=timedelta(seconds=_as_seconds(doc.timeout)),
        concurrency=doc.concurrency,
        outside_incident=doc.outside_incident,
        executor=_executor(doc),
        source=source,
    )
    return _with_digest(runbook)


def digest_of(runbook: Runbook) -> str:
    """A stable hash of the normalised definition (not of its file or formatting)."""
    material = {k: v for k, v in _plain(runbook).items() if k not in ("source", "digest")}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- parameters ---------------------------------------------------------------


def _check_params(doc: RunbookDoc, out: Problems) -> None:
    seen: set[str] = set()
    for index, param in enumerate(doc.params):
        path = f"params.{index}"
        if not PARAM_NAME.fullmatch(param.name):
            out.add(f"{path}.name", NAME_HINT)
        elif param.name in seen:
            out.add(f"{path}.name", f"parameter {param.name} is declared twice")
        seen.add(param.name)
        before = len(out)
        _check_param_keys(param, path, out)
        if len(out) > before or param.default is None:
            continue
        if param.required:
            out.add(f"{path}.default", "a required parameter has no default")
            continue
        try:
            check_default(_param_spec(param, default=False), param.default)
        except ValueError as exc:
            out.add(f"{path}.default", str(exc))


def _check_param_keys(param: ParamDoc, path: str, out: Problems) -> None:
    kind = ParamType(param.type)
    allowed = {
        ParamType.STRING: {"pattern", "max_length"},
        ParamType.ENUM: {"choices"},
        ParamType.INTEGER: {"minimum", "maximum"},
        ParamType.DURATION: {"minimum", "maximum"},
        ParamType.BOOLEAN: set(),
    }[kind]
    for key in ("pattern", "max_length", "choices", "minimum", "maximum"):
        if getattr(param, key) is not None and key not in allowed:
            out.add(f"{path}.{key}", f"does not apply to a {kind.value} parameter")
    if param.pattern is not None:
        try:
            re.compile(param.pattern, re.ASCII)
        except re.error:
            out.add(f"{path}.pattern", "not a valid regular expression")
    if param.max_length is not None and not 1 <= param.max_length <= MAX_STRING_LENGTH:
        out.add(f"{path}.max_length", f"must be between 1 and {MAX_STRING_LENGTH}")
    if kind is ParamType.ENUM:
        _check_choices(param.choices, f"{path}.choices", out)
    low = _bound(param.minimum, kind, f"{path}.minimum", out)
    high = _bound(param.maximum, kind, f"{path}.maximum", out)
    if low is not None and high is not None and low > high:
        out.add(f"{path}.maximum", "must not be less than minimum")


def _check_choices(choices: list[str] | None, path: str, out: Problems) -> None:
    if not choices:
        out.add(path, "an enum parameter needs at least one choice")
        return
    if len(set(choices)) != len(choices):
        out.add(path, "a choice is listed twice")
    for index, choice in enumerate(choices):
        if not choice or forbidden_character(choice) is not None or len(choice) > 256:
            out.add(f"{path}.{index}", "must be 1-256 characters with no control characters")


def _bound(value: int | str | None, kind: ParamType, path: str, out: Problems) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and kind is not ParamType.DURATION:
        out.add(path, "must be a number")
        return None
    return _seconds(value, path, out)


def _param_spec(param: ParamDoc, *, default: bool = True) -> ParamSpec:
    kind = ParamType(param.type)
    spec = ParamSpec(
        name=param.name,
        type=kind,
        description=param.description,
        required=param.required,
        pattern=param.pattern,
        max_length=param.max_length if param.max_length is not None else 256,
        choices=tuple(param.choices or ()),
        minimum=None if param.minimum is None else _as_seconds(param.minimum),
        maximum=None if param.maximum is None else _as_seconds(param.maximum),
    )
    if not default or param.default is None:
        return spec
    value: Value = check_default(spec, param.default)
    return replace(spec, default=value)


# -- access -------------------------------------------------------------------


def _check_access(
    access: AccessDoc,
    path: str,
    roles: Mapping[str, Access],
    out: Problems,
    *,
    required: bool,
) -> None:
    for key, pattern, what in (
        ("aad_object_ids", AAD_ID, "an AAD object id (a GUID)"),
        ("aad_groups", AAD_ID, "an AAD group id (a GUID)"),
        ("mxids", MXID, "a Matrix user id (@name:server)"),
    ):
        for index, value in enumerate(getattr(access, key)):
            if not pattern.fullmatch(value):
                out.add(f"{path}.{key}.{index}", f"must be {what}")
    for index, role in enumerate(access.roles):
        if role not in roles:
            out.add(f"{path}.roles.{index}", f"no role named {role} in the runbooks settings")
    empty = not (
        access.aad_object_ids
        or access.aad_groups
        or access.mxids
        or access.roles
        or access.matrix_power_level is not None
    )
    if required and empty:
        out.add(path, "has no rule, so nobody could use it")


def _check_approvals(approvals: ApprovalsDoc, roles: Mapping[str, Access], out: Problems) -> None:
    if approvals.approvers is not None:
        _check_access(
            approvals.approvers, "approvals.approvers", roles, out, required=approvals.count > 0
        )
    elif approvals.count > 0:
        out.add("approvals.approvers", "required when count is more than 0")
    wait = _seconds(approvals.expires_after, "approvals.expires_after", out)
    if wait is not None and not 1 <= wait <= MAX_APPROVAL_WAIT.total_seconds():
        out.add("approvals.expires_after", "must be between 1s and 7d")


def _access(doc: AccessDoc) -> Access:
    return Access(
        aad_object_ids=tuple(v.lower() for v in doc.aad_object_ids),
        aad_groups=tuple(v.lower() for v in doc.aad_groups),
        mxids=tuple(doc.mxids),
        matrix_power_level=doc.matrix_power_level,
        roles=tuple(doc.roles),
    )


# -- secrets and executors ----------------------------------------------------


def _check_secrets(secrets: list[SecretDoc], out: Problems) -> set[str]:
    names: set[str] = set()
    for index, secret in enumerate(secrets):
        path = f"executor.secrets.{index}"
        if not PARAM_NAME.fullmatch(secret.name):
            out.add(f"{path}.name", NAME_HINT)
        elif secret.name in names:
            out.add(f"{path}.name", f"secret {secret.name} is declared twice")
        names.add(secret.name)
        if (secret.file is None) == (secret.env is None):
            out.add(path, "give either file or env")
        if secret.file is not None and not secret.file.startswith("/"):
            out.add(f"{path}.file", "must be an absolute path")
        if secret.env is not None and not ENV_NAME.fullmatch(secret.env):
            out.add(f"{path}.env", "not a valid environment variable name")
    return names


def _check_exec(spec: ExecDoc, params: set[str], secrets: set[str], out: Problems) -> None:
    for index, element in enumerate(spec.argv):
        path = f"executor.argv.{index}"
        whole = re.fullmatch(r"\{([a-z][a-z0-9_]*)\}", element)
        if whole is not None:
            if index == 0:
                out.add(path, "the program cannot be a parameter")
            elif whole.group(1) not in params:
                out.add(path, f"names no declared parameter ({whole.group(1)})")
            continue
        found = _ARGV_PLACEHOLDER.search(element)
        if found is not None and found.group(1).startswith("secret:"):
            out.add(path, "secrets cannot be put in argv (every user sees it); use env")
        elif found is not None:
            out.add(path, "a parameter must be a whole argv element, e.g. - {name}")
    if not spec.argv[0]:
        out.add("executor.argv.0", "the program cannot be empty")
    for name, value in spec.env.items():
        if not ENV_NAME.fullmatch(name):
            out.add(f"executor.env.{name}", "not a valid environment variable name")
        _check_template(value, f"executor.env.{name}", params, secrets, out)
    for index, name in enumerate(spec.inherit_env):
        if not ENV_NAME.fullmatch(name):
            out.add(f"executor.inherit_env.{index}", "not a valid environment variable name")
    if spec.cwd is not None and (not spec.cwd.startswith("/") or "{" in spec.cwd):
        out.add("executor.cwd", "must be an absolute path (no placeholders)")


def _check_http(spec: HttpDoc, params: set[str], secrets: set[str], out: Problems) -> None:
    if spec.method.upper() not in HTTP_METHODS:
        out.add("executor.method", f"must be one of {', '.join(sorted(HTTP_METHODS))}")
    if _check_template(spec.url, "executor.url", params, secrets, out):
        head = spec.url.split("{", 1)[0] if "{" in spec.url else spec.url + "/"
        if not re.match(r"https?://[^/?#{}\s@]+[/?#]", head):
            out.add(
                "executor.url",
                "must be an http:// or https:// URL whose host is written out "
                "(placeholders only after the host)",
            )
    for name, value in spec.headers.items():
        if not HEADER_NAME.fullmatch(name):
            out.add(f"executor.headers.{name}", "not a valid header name")
        _check_template(value, f"executor.headers.{name}", params, secrets, out)
    for path, leaf in _json_leaves(spec.body, "executor.body", out):
        if isinstance(leaf, str):
            _check_template(leaf, path, params, secrets, out)
    if not spec.success_statuses:
        out.add("executor.success_statuses", "needs at least one status")
    for index, status in enumerate(spec.success_statuses):
        if not 100 <= status <= 599:
            out.add(f"executor.success_statuses.{index}", "must be an HTTP status (100-599)")


def _check_job(spec: KubernetesJobDoc, params: set[str], secrets: set[str], out: Problems) -> None:
    if spec.namespace is not None and not NAMESPACE.fullmatch(spec.namespace):
        out.add("executor.namespace", "must be a Kubernetes namespace name")
    template = spec.template
    if template.get("apiVersion") != "batch/v1":
        out.add("executor.template.apiVersion", "must be batch/v1")
    if template.get("kind") != "Job":
        out.add("executor.template.kind", "must be Job")
    metadata = template.get("metadata", {})
    if not isinstance(metadata, dict):
        out.add("executor.template.metadata", "must be a mapping")
    else:
        for key in ("name", "generateName"):
            if key in metadata:
                out.add(f"executor.template.metadata.{key}", "is set by the bridge (from the run)")
        if metadata.get("namespace", spec.namespace) != spec.namespace:
            out.add(
                "executor.template.metadata.namespace",
                "must be the executor's namespace (leave both out for the bridge's own)",
            )
    containers = _dig(template, "spec", "template", "spec", "containers")
    if not isinstance(containers, list) or not containers:
        out.add("executor.template.spec.template.spec.containers", "needs at least one container")
    for path, leaf in _json_leaves(template, "executor.template", out):
        if isinstance(leaf, str):
            _check_template(leaf, path, params, secrets, out)


def _dig(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _check_template(
    text: str, path: str, params: set[str], secrets: set[str], out: Problems
) -> bool:
    ok = True
    for token in _TEMPLATE_TOKEN.finditer(text):
        if token.group(0) in ("{{", "}}"):
            continue
        inner = token.group(1)
        if inner is None:
            out.add(path, "a lone { or }: write {{ or }} for a literal brace")
            ok = False
        elif inner.startswith("secret:"):
            if inner.removeprefix("secret:") not in secrets:
                out.add(path, f"names no declared secret ({inner.removeprefix('secret:')})")
                ok = False
        elif inner not in params:
            out.add(path, f"names no declared parameter ({inner})")
            ok = False
    return ok


def _json_leaves(node: Any, path: str, out: Problems) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, child in node.items():
            if not isinstance(key, str):
                out.add(path, "keys must be strings")
                continue
            yield from _json_leaves(child, f"{path}.{key}", out)
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _json_leaves(child, f"{path}.{index}", out)
    elif isinstance(node, float) and not math.isfinite(node):
        out.add(path, "must be a finite number")
    elif node is None or isinstance(node, str | int | float | bool):
        yield path, node
    else:
        out.add(path, "must be JSON (a string, number, true/false, null, list or mapping)")


def _executor(doc: RunbookDoc) -> ExecutorSpec:
    spec = doc.executor
    secrets = tuple(SecretRef(name=s.name, file=s.file, env=s.env) for s in spec.secrets)
    if isinstance(spec, ExecDoc):
        return ExecSpec(
            argv=tuple(spec.argv),
            env=dict(spec.env),
            inherit_env=tuple(spec.inherit_env),
            cwd=spec.cwd,
            secrets=secrets,
            max_output_bytes=spec.max_output_bytes,
        )
    if isinstance(spec, HttpDoc):
        return HttpSpec(
            method=spec.method.upper(),
            url=spec.url,
            headers=dict(spec.headers),
            body=spec.body,
            secrets=secrets,
            success_statuses=tuple(spec.success_statuses),
        )
    return KubernetesJobSpec(
        namespace=spec.namespace or "", template=spec.template, secrets=secrets
    )


# -- durations and digests ----------------------------------------------------


def _seconds(value: int | str, path: str, out: Problems) -> int | None:
    try:
        return _as_seconds(value)
    except ValueError:
        out.add(path, DURATION_HINT)
        return None


def _as_seconds(value: int | str) -> int:
    return value if isinstance(value, int) else parse_duration(value)


def _with_digest(runbook: Runbook) -> Runbook:
    return replace(runbook, digest=digest_of(runbook))


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
