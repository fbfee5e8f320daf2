"""Every validation rule of a runbook definition, each named by file and key path."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from bridge.runbooks.catalog import parse_file
from bridge.runbooks.model import Access, ExecSpec, HttpSpec, KubernetesJobSpec, SecretRef

ROLES = {"sre": Access(mxids=("@alice:example.org",))}

BASE: dict[str, Any] = {
    "name": "check",
    "description": "A runbook under test.",
    "params": [
        {"name": "word", "type": "string", "pattern": "[a-z]+", "required": True},
        {"name": "count", "type": "integer", "minimum": 1, "maximum": 9, "default": 3},
    ],
    "access": {"roles": ["sre"]},
    "timeout": "1m",
    "executor": {"type": "exec", "argv": ["/bin/echo", "{word}", "{count}"]},
}

HTTP: dict[str, Any] = {
    "type": "http",
    "method": "post",
    "url": "https://api.example.org/items/{word}?n={count}",
    "headers": {"Authorization": "Bearer {secret:token}"},
    "body": {"word": "{word}", "n": "{count}", "note": "literal {{braces}}"},
    "secrets": [{"name": "token", "env": "API_TOKEN"}],
}

JOB: dict[str, Any] = {
    "type": "kubernetes-job",
    "namespace": "ops",
    "template": {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox", "args": ["{word}"]}],
                }
            }
        },
    },
}


def problems(doc: Any) -> list[str]:
    runbooks, found = parse_file("check.yaml", yaml.safe_dump(doc), ROLES)
    assert (runbooks == []) == bool(found)
    return [str(p) for p in found]


def edited(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A copy of ``base`` with the value at a dotted ``path`` replaced (``...`` removes)."""
    doc = copy.deepcopy(base or BASE)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return doc


def test_the_base_definitions_are_valid() -> None:
    assert problems(BASE) == []
    assert problems(edited("executor", HTTP)) == []
    assert problems(edited("executor", JOB)) == []


def test_valid_definitions_become_runbooks_with_executor_specs() -> None:
    (runbook,), _ = parse_file("check.yaml", yaml.safe_dump(edited("executor", HTTP)), ROLES)
    assert runbook.executor == HttpSpec(
        method="POST",
        url=HTTP["url"],
        headers=HTTP["headers"],
        body=HTTP["body"],
        secrets=(SecretRef(name="token", env="API_TOKEN"),),
    )
    (runbook,), _ = parse_file("check.yaml", yaml.safe_dump(BASE), ROLES)
    assert runbook.executor == ExecSpec(argv=("/bin/echo", "{word}", "{count}"))
    assert runbook.params[1].default == 3
    (runbook,), _ = parse_file("check.yaml", yaml.safe_dump(edited("executor", JOB)), ROLES)
    assert runbook.executor == KubernetesJobSpec(namespace="ops", template=JOB["template"])


CASES: list[tuple[str, Any, str]] = [
    # shape
    ("color", "blue", "check.yaml: color: unknown key (misspelt?)"),
    ("description", ..., "check.yaml: description: required key is missing"),
    ("timeout", ..., "check.yaml: timeout: required key is missing"),
    ("concurrency", "2", "check.yaml: concurrency: Input should be a valid integer"),
    ("concurrency", 0, "check.yaml: concurrency: Input should be greater than or equal to 1"),
    ("outside_incident", "yes", "check.yaml: outside_incident: Input should be a valid boolean"),
    ("params.0.colour", "x", "check.yaml: params.0.colour: unknown key (misspelt?)"),
    # names
    ("name", "Restart API", "check.yaml: name: must be lowercase letters, digits and dashes"),
    ("name", "-x", "check.yaml: name: must be lowercase letters, digits and dashes"),
    ("name", "a" * 64, "check.yaml: name: must be lowercase letters, digits and dashes"),
    ("params.0.name", "Word", "check.yaml: params.0.name: must be lowercase letters"),
    ("params.1.name", "word", "check.yaml: params.1.name: parameter word is declared twice"),
    # parameter types and their constraints
    ("params.0.type", "text", "check.yaml: params.0.type: Input should be 'string', 'enum'"),
    ("params.0.pattern", "[a-z", "check.yaml: params.0.pattern: not a valid regular expression"),
    ("params.0.max_length", 0, "check.yaml: params.0.max_length: must be between 1 and 4096"),
    ("params.0.max_length", 5000, "check.yaml: params.0.max_length: must be between 1 and 4096"),
    ("params.0.minimum", 1, "check.yaml: params.0.minimum: does not apply to a string parameter"),
    ("params.1.pattern", "x", "check.yaml: params.1.pattern: does not apply to a integer"),
    ("params.1.choices", ["a"], "check.yaml: params.1.choices: does not apply to a integer"),
    ("params.1.minimum", "5m", "check.yaml: params.1.minimum: must be a number"),
    ("params.1.minimum", 10, "check.yaml: params.1.maximum: must not be less than minimum"),
    ("params.1.default", 10, "check.yaml: params.1.default: must be at most 9 (got 10)"),
    ("params.1.default", "3", "check.yaml: params.1.default: must be a number"),
    ("params.1.default", True, "check.yaml: params.1.default: must be a number"),
    ("params.0.default", "A1", "check.yaml: params.0.default: a required parameter has no"),
    ("params.1.required", True, "check.yaml: params.1.default: a required parameter has no"),
    ("params.1.default", [1], "check.yaml: params.1.default: must be a string, a number or"),
    # approvals
    ("approvals", {"count": 1}, "check.yaml: approvals.approvers: required when count is more"),
    (
        "approvals",
        {"count": 1, "approvers": {}},
        "check.yaml: approvals.approvers: has no rule, so nobody could use it",
    ),
    ("approvals", {"count": -1}, "check.yaml: approvals.count: Input should be greater than"),
    (
        "approvals",
        {"count": 1, "approvers": {"roles": ["sre"]}, "expires_after": "0s"},
        "check.yaml: approvals.expires_after: must be between 1s and 7d",
    ),
    # access
    ("access", {}, "check.yaml: access: has no rule, so nobody could use it"),
    ("access", {"roles": ["dba"]}, "check.yaml: access.roles.0: no role named dba"),
    ("access", {"mxids": ["alice"]}, "check.yaml: access.mxids.0: must be a Matrix user id"),
    ("access", {"aad_object_ids": ["alice@x.org"]}, "check.yaml: access.aad_object_ids.0: must"),
    ("access", {"aad_groups": ["Admins"]}, "check.yaml: access.aad_groups.0: must be an AAD"),
    (
        "access",
        {"matrix_power_level": 101},
        "check.yaml: access.matrix_power_level: Input should be less than or equal to 100",
    ),
    # timeout and concurrency
    ("timeout", "0s", "check.yaml: timeout: must be between 1s and 24h"),
    ("timeout", "25h", "check.yaml: timeout: must be between 1s and 24h"),
    ("timeout", "soon", "check.yaml: timeout: must be a duration such as 90s, 5m or 1h30m"),
    ("timeout", 1.5, "check.yaml: timeout: must be a duration such as 90s"),
    # exec
    ("executor.type", "shell", "check.yaml: executor: type must be http, exec or kubernetes-job"),
    ("executor.type", ..., "check.yaml: executor: needs a type: http, exec or kubernetes-job"),
    ("executor.argv", [], "check.yaml: executor.argv: List should have at least 1 item"),
    ("executor.argv", "/bin/echo {word}", "check.yaml: executor.argv: Input should be a valid"),
    ("executor.argv", ["/bin/echo", 1], "check.yaml: executor.argv.1: Input should be a valid"),
    ("executor.argv.1", "{other}", "check.yaml: executor.argv.1: names no declared parameter"),
    ("executor.argv.1", "--w={word}", "check.yaml: executor.argv.1: a parameter must be a whole"),
    ("executor.argv.0", "{word}", "check.yaml: executor.argv.0: the program cannot be a param"),
    ("executor.argv.0", "", "check.yaml: executor.argv.0: the program cannot be empty"),
    ("executor.env", {"T": "{nope}"}, "check.yaml: executor.env.T: names no declared parameter"),
    ("executor.env", {"1X": "a"}, "check.yaml: executor.env.1X: not a valid environment"),
    ("executor.inherit_env", ["A B"], "check.yaml: executor.inherit_env.0: not a valid"),
    ("executor.cwd", "work", "check.yaml: executor.cwd: must be an absolute path"),
    ("executor.max_output_bytes", 0, "check.yaml: executor.max_output_bytes: Input should be"),
    ("executor.url", "http://x/", "check.yaml: executor.url: unknown key (misspelt?)"),
]


@pytest.mark.parametrize(("path", "value", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_is_reported_with_its_key_path(path: str, value: Any, expected: str) -> None:
    found = problems(edited(path, value))
    assert any(p.startswith(expected) for p in found), found


def test_a_secret_in_argv_is_refused() -> None:
    doc = edited("executor.argv.1", "{secret:token}")
    doc["executor"]["secrets"] = [{"name": "token", "env": "T"}]
    assert problems(doc) == [
        "check.yaml: executor.argv.1: secrets cannot be put in argv (every user sees it); use env"
    ]


def test_literal_braces_in_argv_stay_literal() -> None:
    assert problems(edited("executor.argv.1", "{a: .b}")) == []


def with_http(path: str, value: Any) -> dict[str, Any]:
    return edited("executor", edited(path, value, HTTP))


HTTP_CASES: list[tuple[str, Any, str]] = [
    ("method", "FETCH", "executor.method: must be one of DELETE, GET, HEAD"),
    ("url", "ftp://files.example.org/x", "executor.url: must be an http:// or https:// URL"),
    ("url", "https://{word}.example.org/", "executor.url: must be an http:// or https:// URL"),
    ("url", "https://api.example.org{word}", "executor.url: must be an http:// or https:// URL"),
    ("url", "file:///etc/passwd", "executor.url: must be an http:// or https:// URL"),
    ("url", "https://x.org/{nope}", "executor.url: names no declared parameter (nope)"),
    ("url", "https://x.org/{", "executor.url: a lone { or }: write {{ or }}"),
    ("headers", {"Bad Name": "x"}, "executor.headers.Bad Name: not a valid header name"),
    ("headers", {"X-Key": "{secret:other}"}, "executor.headers.X-Key: names no declared secret"),
    ("body", {"a": "{nope}"}, "executor.body.a: names no declared parameter (nope)"),
    ("body", {"a": ["ok", "{x}"]}, "executor.body.a.1: names no declared parameter (x)"),
    ("body", {"a": float("nan")}, "executor.body.a: must be a finite number"),
    ("success_statuses", [], "executor.success_statuses: needs at least one status"),
    ("success_statuses", [99], "executor.success_statuses.0: must be an HTTP status"),
    ("secrets", [{"name": "token"}], "executor.secrets.0: give either file or env"),
    (
        "secrets",
        [{"name": "token", "env": "A", "file": "/a"}],
        "executor.secrets.0: give either file or env",
    ),
    ("secrets", [{"name": "token", "file": "rel"}], "executor.secrets.0.file: must be an absol"),
    ("secrets", [{"name": "token", "env": "A-B"}], "executor.secrets.0.env: not a valid environ"),
    (
        "secrets",
        [{"name": "token", "env": "A"}, {"name": "token", "env": "B"}],
        "executor.secrets.1.name: secret token is declared twice",
    ),
    ("secrets", [{"name": "Token", "env": "A"}], "executor.secrets.0.name: must be lowercase"),
]


@pytest.mark.parametrize(("path", "value", "expected"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_each_http_rule_is_reported(path: str, value: Any, expected: str) -> None:
    found = problems(with_http(path, value))
    assert any(p.startswith(f"check.yaml: {expected}") for p in found), found


def with_job(path: str, value: Any) -> dict[str, Any]:
    return edited("executor", edited(path, value, JOB))


JOB_CASES: list[tuple[str, Any, str]] = [
    ("namespace", "Ops!", "executor.namespace: must be a Kubernetes namespace name"),
    ("template.apiVersion", "batch/v2", "executor.template.apiVersion: must be batch/v1"),
    ("template.kind", "Pod", "executor.template.kind: must be Job"),
    ("template.metadata", {"name": "fixed"}, "executor.template.metadata.name: is set by the"),
    ("template.metadata", {"generateName": "x-"}, "executor.template.metadata.generateName"),
    ("template.metadata", {"namespace": "other"}, "executor.template.metadata.namespace: must"),
    ("template.metadata", "x", "executor.template.metadata: must be a mapping"),
    ("template.spec", {}, "executor.template.spec.template.spec.containers: needs at least one"),
    ("template.extra", "{nope}", "executor.template.extra: names no declared parameter"),
]


@pytest.mark.parametrize(("path", "value", "expected"), JOB_CASES, ids=[c[0] for c in JOB_CASES])
def test_each_kubernetes_job_rule_is_reported(path: str, value: Any, expected: str) -> None:
    found = problems(with_job(path, value))
    assert any(p.startswith(f"check.yaml: {expected}") for p in found), found


def test_enum_and_duration_rules() -> None:
    enum: dict[str, Any] = {"name": "count", "type": "enum", "choices": []}
    assert problems(edited("params.1", enum)) == [
        "check.yaml: params.1.choices: an enum parameter needs at least one choice"
    ]
    enum = {"name": "count", "type": "enum", "choices": ["a", "a"]}
    assert problems(edited("params.1", enum)) == [
        "check.yaml: params.1.choices: a choice is listed twice"
    ]
    enum = {"name": "count", "type": "enum", "choices": ["a"], "default": "b"}
    assert problems(edited("params.1", enum)) == [
        'check.yaml: params.1.default: must be one of a (got "b")'
    ]
    duration: dict[str, Any] = {"name": "count", "type": "duration", "default": "30s"}
    duration["minimum"] = "1m"
    assert problems(edited("params.1", duration)) == [
        "check.yaml: params.1.default: must be at least 60 s (got 30 s)"
    ]
    duration = {"name": "count", "type": "duration", "maximum": "1h", "default": 600}
    assert problems(edited("params.1", duration)) == []
    boolean: dict[str, Any] = {"name": "count", "type": "boolean", "default": "yes"}
    assert problems(edited("params.1", boolean)) == [
        "check.yaml: params.1.default: must be true or false"
    ]


def test_a_yaml_mapping_with_a_key_twice_is_refused() -> None:
    text = yaml.safe_dump(BASE) + "timeout: 2m\n"
    line = text.count("\n")
    _, found = parse_file("check.yaml", text, ROLES)
    assert [str(p) for p in found] == [
        f"check.yaml: not valid YAML at line {line}: the key timeout is given twice"
    ]


def test_a_list_item_that_is_not_a_mapping_is_named_by_index() -> None:
    _, found = parse_file("check.yaml", yaml.safe_dump([BASE, "oops"]), ROLES)
    assert [str(p) for p in found] == ["check.yaml: 1: must be a mapping"]


def test_a_problem_in_a_listed_runbook_has_its_index_in_the_path() -> None:
    second = edited("name", "second")
    second["params"][0]["pattern"] = "("
    _, found = parse_file("check.yaml", yaml.safe_dump([BASE, second]), ROLES)
    assert [str(p) for p in found] == [
        "check.yaml: 1.params.0.pattern: not a valid regular expression"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("? [a, b]\n: c\n", "check.yaml: not valid YAML at line 1: a key must be a plain value"),
        ("&a [*a]\n", "check.yaml: 0: must be a mapping"),
        ("- &a {name: *a}\n", "check.yaml: not valid YAML at line 1"),
        ("just text\n", "check.yaml: must be a mapping"),
    ],
)
def test_odd_yaml_is_reported_not_raised(text: str, expected: str) -> None:
    _, found = parse_file("check.yaml", text, ROLES)
    assert [str(p) for p in found][:1] == [expected]


def test_a_job_template_of_the_wrong_shape_is_reported_not_raised() -> None:
    found = problems(with_job("template.spec", {"template": ["not", "a", "mapping"]}))
    assert found == [
        "check.yaml: executor.template.spec.template.spec.containers: needs at least one container"
    ]


@pytest.mark.parametrize("depth", [50, 500])
def test_deep_nesting_is_reported_not_raised(depth: int) -> None:
    text = yaml.safe_dump(edited("executor", edited("body", ["placeholder"], HTTP)))
    nested = "[" * depth + "]" * depth
    text = text.replace("  body:\n  - placeholder\n", f"  body: {nested}\n")
    _, found = parse_file("check.yaml", text, ROLES)
    assert [str(p) for p in found] == ([] if depth < 100 else ["check.yaml: nested too deeply"])


def test_a_job_without_a_namespace_runs_in_the_bridges_own() -> None:
    job = {k: v for k, v in JOB.items() if k != "namespace"}
    (runbook,), found = parse_file("check.yaml", yaml.safe_dump(edited("executor", job)), ROLES)
    assert found == []
    assert isinstance(runbook.executor, KubernetesJobSpec)
    assert runbook.executor.namespace == ""  # the executor's default: its service account's
    named = edited("template.metadata", {"namespace": "ops"}, job)
    assert any("metadata.namespace: must be" in p for p in problems(edited("executor", named)))
