"""Templates of runbook executors: validated values and secrets put into text and JSON.

``{name}`` is the validated value of the parameter ``name`` (quoted by ``quote`` when
one is given, e.g. URL quoting), ``{secret:NAME}`` is the secret ``NAME``, and ``{{`` /
``}}`` are literal braces. Anything else between braces, an unknown name, or a lone
brace is an ``ExecutorError``. Rendering is one pass over the template: a value is
inserted as text and never read again (no second pass, no shell, no eval).

In JSON, a string leaf that is exactly ``"{name}"`` becomes the value with its JSON
type (a string stays one JSON string, whatever it holds); other string leaves are
rendered as text without quoting; keys and non-string leaves are kept as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from bridge.runbooks.executors.base import MASK, ExecutorError
from bridge.runbooks.model import Value

Quote = Callable[[str], str]

_SECRET_PREFIX: Final = "secret:"  # noqa: S105 - the placeholder syntax, not a secret
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
_PARAM_LEAF: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.-]{0,127})\}")


@dataclass(frozen=True, slots=True)
class _Literal:
    text: str


@dataclass(frozen=True, slots=True)
class _Param:
    name: str


@dataclass(frozen=True, slots=True)
class _Secret:
    name: str


_Piece = _Literal | _Param | _Secret


@dataclass(frozen=True, slots=True, kw_only=True)
class Placeholders:
    """The parameter and secret names a template refers to."""

    params: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()

    def __or__(self, other: Placeholders) -> Placeholders:
        return Placeholders(params=self.params | other.params, secrets=self.secrets | other.secrets)


def format_value(value: Value) -> str:
    """A validated value as text: booleans are ``true``/``false``, integers in decimal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return value


def render_text(
    template: str,
    values: Mapping[str, Value],
    secrets: Mapping[str, str],
    *,
    quote: Quote | None = None,
) -> str:
    """``template`` with its placeholders replaced (see the module docstring)."""

    def secret_text(name: str) -> str:
        value = _secret(secrets, name)
        return quote(value) if quote is not None else value

    return _render(template, values, secret_text, quote)


def render_masked(
    template: str,
    values: Mapping[str, Value],
    secret_names: frozenset[str] | set[str],
    *,
    quote: Quote | None = None,
) -> str:
    """Like ``render_text`` for a plan: each secret shows as ``MASK`` (never quoted), and
    only its name is needed."""

    def secret_text(name: str) -> str:
        if name not in secret_names:
            raise ExecutorError(f"unknown secret {name!r} in a template")
        return MASK

    return _render(template, values, secret_text, quote)


def render_json(template: Any, values: Mapping[str, Value], secrets: Mapping[str, str]) -> Any:
    """A JSON template rendered: mappings and lists walked, string leaves rendered."""
    if isinstance(template, str):
        whole = _PARAM_LEAF.fullmatch(template)
        if whole is not None:
            return _value(values, whole.group(1))
        return render_text(template, values, secrets)
    if isinstance(template, Mapping):
        return {key: render_json(item, values, secrets) for key, item in template.items()}
    if isinstance(template, list | tuple):
        return [render_json(item, values, secrets) for item in template]
    return template


def placeholders(template: str) -> Placeholders:
    """The names ``template`` refers to; raises ``ExecutorError`` when it is malformed."""
    params: set[str] = set()
    secrets: set[str] = set()
    for piece in _parse(template):
        if isinstance(piece, _Param):
            params.add(piece.name)
        elif isinstance(piece, _Secret):
            secrets.add(piece.name)
    return Placeholders(params=frozenset(params), secrets=frozenset(secrets))


def json_placeholders(template: Any) -> Placeholders:
    """The names a JSON template refers to (in its string leaves, never its keys)."""
    if isinstance(template, str):
        return placeholders(template)
    found = Placeholders()
    if isinstance(template, Mapping):
        for item in template.values():
            found |= json_placeholders(item)
    elif isinstance(template, list | tuple):
        for item in template:
            found |= json_placeholders(item)
    return found


def mask(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every occurrence of a secret's value replaced by ``MASK`` (the
    longest values first, so one secret inside another is masked whole)."""
    for value in sorted({value for value in secrets.values() if value}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def _render(
    template: str,
    values: Mapping[str, Value],
    secret_text: Callable[[str], str],
    quote: Quote | None,
) -> str:
    parts: list[str] = []
    for piece in _parse(template):
        if isinstance(piece, _Literal):
            parts.append(piece.text)
        elif isinstance(piece, _Param):
            text = format_value(_value(values, piece.name))
            parts.append(quote(text) if quote is not None else text)
        else:
            parts.append(secret_text(piece.name))
    return "".join(parts)


def _value(values: Mapping[str, Value], name: str) -> Value:
    try:
        return values[name]
    except KeyError:
        raise ExecutorError(f"unknown parameter {name!r} in a template") from None


def _secret(secrets: Mapping[str, str], name: str) -> str:
    try:
        return secrets[name]
    except KeyError:
        raise ExecutorError(f"unknown secret {name!r} in a template") from None


def _parse(template: str) -> Iterator[_Piece]:
    literal: list[str] = []
    index = 0
    end = len(template)
    while index < end:
        char = template[index]
        if char == "{" and template.startswith("{{", index):
            literal.append("{")
            index += 2
        elif char == "}" and template.startswith("}}", index):
            literal.append("}")
            index += 2
        elif char == "}":
            raise ExecutorError(f"a lone '}}' at position {index} of a template")
        elif char == "{":
            close = template.find("}", index + 1)
            if close < 0:
                raise ExecutorError(f"an unclosed '{{' at position {index} of a template")
            if literal:
                yield _Literal("".join(literal))
                literal = []
            yield _placeholder(template[index + 1 : close], index)
            index = close + 1
        else:
            literal.append(char)
            index += 1
    if literal:
        yield _Literal("".join(literal))


def _placeholder(inner: str, position: int) -> _Param | _Secret:
    if inner.startswith(_SECRET_PREFIX):
        name = inner[len(_SECRET_PREFIX) :]
        if _NAME.fullmatch(name):
            return _Secret(name)
    elif _NAME.fullmatch(inner):
        return _Param(inner)
    raise ExecutorError(f"a malformed placeholder at position {position} of a template")
