"""Templates: values and secrets put into text and JSON once, literally, or refused."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from bridge.runbooks.executors.base import MASK, ExecutorError
from bridge.runbooks.model import Value
from bridge.runbooks.templates import (
    Placeholders,
    format_value,
    json_placeholders,
    mask,
    placeholders,
    render_json,
    render_masked,
    render_text,
)

VALUES: dict[str, Value] = {
    "host": "db-1",
    "count": 3,
    "force": True,
    "quiet": False,
    "text": "{count}",
}
SECRETS = {"TOKEN": "s3cr3t/value"}


def url_quote(text: str) -> str:
    return quote(text, safe="")


def test_values_and_secrets_are_put_in() -> None:
    rendered = render_text(
        "restart {host} x{count} {force}/{quiet} {secret:TOKEN}", VALUES, SECRETS
    )
    assert rendered == "restart db-1 x3 true/false s3cr3t/value"


def test_doubled_braces_are_literal_braces() -> None:
    assert render_text("{{host}} {{ {host} }}", VALUES, SECRETS) == "{host} { db-1 }"


def test_a_value_is_never_rendered_again() -> None:
    assert render_text("{text}", VALUES, SECRETS) == "{count}"
    assert render_text("{text}", {"text": "{secret:TOKEN}"}, SECRETS) == "{secret:TOKEN}"


def test_quote_applies_to_values_and_secrets_not_to_the_template() -> None:
    rendered = render_text(
        "https://h/a/{text}?t={secret:TOKEN}", {"text": "../x?y#z"}, SECRETS, quote=url_quote
    )
    assert rendered == "https://h/a/..%2Fx%3Fy%23z?t=s3cr3t%2Fvalue"


@pytest.mark.parametrize(
    "template",
    [
        "{missing}",
        "{secret:MISSING}",
        "{",
        "}",
        "a { b",
        "{host",
        "{}",
        "{secret:}",
        "{a b}",
        "{$x}",
    ],
)
def test_unknown_or_malformed_placeholders_are_refused(template: str) -> None:
    with pytest.raises(ExecutorError):
        render_text(template, VALUES, SECRETS)


def test_an_error_never_shows_a_secret_value() -> None:
    with pytest.raises(ExecutorError) as raised:
        render_text("{secret:OTHER} {secret:TOKEN}", VALUES, SECRETS)
    assert SECRETS["TOKEN"] not in str(raised.value)


def test_values_are_formatted_by_type() -> None:
    assert [format_value(v) for v in (True, False, 0, -7, "x")] == ["true", "false", "0", "-7", "x"]


def test_render_masked_shows_secrets_as_the_mask_unquoted() -> None:
    rendered = render_masked(
        "https://h/{host}?t={secret:TOKEN}", VALUES, frozenset({"TOKEN"}), quote=url_quote
    )
    assert rendered == f"https://h/db-1?t={MASK}"
    with pytest.raises(ExecutorError):
        render_masked("{secret:OTHER}", VALUES, frozenset({"TOKEN"}))


def test_json_whole_leaves_keep_their_type() -> None:
    template = {
        "count": "{count}",
        "force": "{force}",
        "host": "{host}",
        "message": "on {host} ({count})",
        "auth": "Bearer {secret:TOKEN}",
        "nested": [{"n": "{count}"}, 5, None, False, "{{literal}}"],
        "{host}": "keys are never templated",
    }
    assert render_json(template, VALUES, SECRETS) == {
        "count": 3,
        "force": True,
        "host": "db-1",
        "message": "on db-1 (3)",
        "auth": "Bearer s3cr3t/value",
        "nested": [{"n": 3}, 5, None, False, "{literal}"],
        "{host}": "keys are never templated",
    }


@pytest.mark.parametrize(
    "hostile", ['"; rm -rf /', '{"a": 1}', "{count}", "\x00\n\r", "a\\u0000", "'$(id)`id`"]
)
def test_json_string_values_stay_one_string(hostile: str) -> None:
    assert render_json({"v": "{v}", "l": ["{v}"]}, {"v": hostile}, {}) == {
        "v": hostile,
        "l": [hostile],
    }


def test_json_unknown_parameter_is_refused() -> None:
    with pytest.raises(ExecutorError):
        render_json({"a": ["{nope}"]}, VALUES, SECRETS)


def test_placeholders_are_listed() -> None:
    assert placeholders("{a} {{b}} {secret:S} {c}") == Placeholders(
        params=frozenset({"a", "c"}), secrets=frozenset({"S"})
    )
    assert json_placeholders({"{k}": ["{a}", {"x": "{secret:S}"}], "n": 1}) == Placeholders(
        params=frozenset({"a"}), secrets=frozenset({"S"})
    )
    with pytest.raises(ExecutorError):
        placeholders("{unclosed")


def test_mask_replaces_every_secret_longest_first() -> None:
    secrets = {"A": "abc", "B": "abcdef", "EMPTY": ""}
    assert mask("x abcdef y abc z", secrets) == f"x {MASK} y {MASK} z"
    assert mask("nothing here", secrets) == "nothing here"
