"""Runbook arguments: every rule, defaults, and the digests approvals are for."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest

from bridge.runbooks.model import (
    Access,
    ApprovalPolicy,
    ExecSpec,
    ParamSpec,
    ParamType,
    Runbook,
    Value,
)
from bridge.runbooks.params import (
    ParamError,
    ParamProblem,
    args_digest,
    canonical_args,
    excerpt,
    parse_duration,
    validate_args,
)

PARAMS = (
    ParamSpec(
        name="service",
        type=ParamType.STRING,
        pattern="[a-z][a-z0-9-]*",
        max_length=20,
        required=True,
    ),
    ParamSpec(name="note", type=ParamType.STRING, max_length=40),
    ParamSpec(
        name="env", type=ParamType.ENUM, choices=("staging", "production"), default="staging"
    ),
    ParamSpec(name="replicas", type=ParamType.INTEGER, minimum=1, maximum=10, default=2),
    ParamSpec(name="force", type=ParamType.BOOLEAN, default=False),
    ParamSpec(name="grace", type=ParamType.DURATION, minimum=5, maximum=7200),
)


def runbook(params: tuple[ParamSpec, ...] = PARAMS, digest: str = "d1") -> Runbook:
    return Runbook(
        name="restart-api",
        description="",
        params=params,
        access=Access(),
        approvals=ApprovalPolicy(),
        timeout=timedelta(minutes=1),
        executor=ExecSpec(argv=("/bin/true",)),
        digest=digest,
    )


def refused(options: dict[str, str]) -> ParamError:
    with pytest.raises(ParamError) as exc:
        validate_args(runbook(), options)
    return exc.value


def test_valid_arguments_are_typed_and_defaults_filled_in() -> None:
    args = validate_args(
        runbook(), {"service": "api", "replicas": "+7", "force": "YES", "grace": "1h30m"}
    )
    assert args == {
        "service": "api",
        "env": "staging",
        "replicas": 7,
        "force": True,
        "grace": 5400,
    }
    assert list(args) == ["service", "env", "replicas", "force", "grace"]


def test_an_optional_parameter_without_default_is_left_out() -> None:
    args = validate_args(runbook(), {"service": "api"})
    assert "note" not in args
    assert "grace" not in args


@pytest.mark.parametrize(
    ("options", "param", "rule", "message"),
    [
        ({"service": "api", "servce": "x"}, '"servce"', "unknown", '"servce": no such parameter'),
        ({}, "service", "missing", "service: is required"),
        (
            {"service": "API"},
            "service",
            "pattern",
            'service: must match [a-z][a-z0-9-]* (got "API")',
        ),
        ({"service": "a" * 21}, "service", "max_length", "service: is longer than 20 characters"),
        (
            {"service": "api", "note": "a\x00b"},
            "note",
            "character",
            "note: contains a control or invisible character (\\x00) at position 2",
        ),
        (
            {"service": "api", "env": "prod"},
            "env",
            "choice",
            'env: must be one of staging, production (got "prod")',
        ),
        ({"service": "api", "replicas": "0"}, "replicas", "range", "replicas: must be at least 1"),
        ({"service": "api", "replicas": "11"}, "replicas", "range", "replicas: must be at most 10"),
        ({"service": "api", "replicas": "2.5"}, "replicas", "type", "replicas: must be a whole"),
        (
            {"service": "api", "force": "1"},
            "force",
            "type",
            "force: must be true, false, yes or no",
        ),
        ({"service": "api", "grace": "4s"}, "grace", "range", "grace: must be at least 5 s (got 4"),
        ({"service": "api", "grace": "3h"}, "grace", "range", "grace: must be at most 7200 s"),
        ({"service": "api", "grace": "soon"}, "grace", "type", "grace: must be a duration such"),
    ],
)
def test_each_rule_names_the_parameter(
    options: dict[str, str], param: str, rule: str, message: str
) -> None:
    error = refused(options)
    assert (error.param, error.rule) == (param, rule)
    assert str(error).startswith(message)


@pytest.mark.parametrize(
    "value",
    [" 3", "3 ", "1_000", "\u0663", "\uff13", "0x10", "1e3", "", "-", "9" * 19, "3\n"],
)
def test_integers_are_ascii_digits_only(value: str) -> None:
    assert refused({"service": "api", "replicas": value}).rule == "type"


@pytest.mark.parametrize("value", ["True", "no", "YES", "false"])
def test_booleans_take_four_words_in_any_case(value: str) -> None:
    assert validate_args(runbook(), {"service": "api", "force": value})["force"] == (
        value.lower() in ("true", "yes")
    )


@pytest.mark.parametrize(
    "value", ["on", "off", "1", "0", "y", "tru\u0435", "\uff59\uff45\uff53", ""]
)
def test_other_boolean_words_are_refused(value: str) -> None:
    assert refused({"service": "api", "force": value}).rule == "type"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("1h1m1s", 3661), ("0s", 0)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "5 m", "1m1h", "-5m", "1.5h", "\uff15m", "1w", "m"])
def test_malformed_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "char",
    [
        *("\n", "\r", "\t", "\x1b", "\x7f", "\x85", "\u200b", "\u200d", "\u202e", "\u2066"),
        *("\ufeff", "\u2028", "\u2029", "\ud800", "\ue000", "\U000e0041"),
    ],
)
def test_control_and_invisible_characters_are_refused_whatever_the_pattern(char: str) -> None:
    assert refused({"service": "api", "note": f"x{char}y"}).rule == "character"


def test_patterns_match_in_ascii_mode_and_whole() -> None:
    params = (ParamSpec(name="word", type=ParamType.STRING, pattern=r"\w+"),)
    assert validate_args(runbook(params), {"word": "abc_1"}) == {"word": "abc_1"}
    for value in ("p\u0430ypal", "caf\u00e9", "abc def", "abc;"):
        with pytest.raises(ParamError) as exc:
            validate_args(runbook(params), {"word": value})
        assert exc.value.rule == "pattern"


def test_every_problem_is_listed_and_the_message_is_capped() -> None:
    options = {f"k{i}": "x" for i in range(8)}
    error = refused(options)
    assert len(error.problems) == 9
    assert error.problems[-1] == ParamProblem("service", "missing", "is required")
    assert str(error).endswith("; and 4 more")


def test_a_hostile_value_is_shown_only_as_a_short_escaped_excerpt() -> None:
    hostile = "x`$(rm -rf /)`;\n<b>@room</b>" + "A" * 5000
    error = refused({"service": hostile[:20]})
    assert "`" not in str(error)
    assert "$" not in str(error)
    shown = excerpt(hostile)
    assert shown.startswith('"x\\x60\\x24\\x28rm -rf /\\x29\\x60\\x3b\\x0a\\x3cb\\x3e@room')
    assert shown.endswith('"... (5028 characters)')
    assert len(shown) < 120
    assert excerpt("\u202e") == '"\\u202e"'
    assert excerpt("\U0001f600") == '"\\U0001f600"'


def test_canonical_args_are_stable_json() -> None:
    first = canonical_args({"b": 1, "a": "x\u00e9", "c": True})
    second = canonical_args({"c": True, "a": "x\u00e9", "b": 1})
    assert first == second == '{"a":"x\\u00e9","b":1,"c":true}'
    assert json.loads(first) == {"a": "x\u00e9", "b": 1, "c": True}
    assert canonical_args({"a": 1}) != canonical_args({"a": True})


def test_the_args_digest_covers_name_definition_and_arguments() -> None:
    args: dict[str, Value] = {"service": "api", "replicas": 2}
    base = args_digest(runbook(), args)
    assert base == args_digest(runbook(), dict(reversed(list(args.items()))))
    assert base != args_digest(runbook(digest="d2"), args)
    assert base != args_digest(runbook(), {"service": "api", "replicas": 3})
    other = dataclasses.replace(runbook(), name="other")
    assert base != args_digest(other, args)
    assert len(base) == 64
