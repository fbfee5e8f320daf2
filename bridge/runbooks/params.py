"""Runbook arguments: ``key=value`` words checked against the runbook's parameters.

Every value arrives as text (``ParsedCommand.options``) and leaves as a ``Value`` of its
parameter's type, or the whole request is refused with a ``ParamError``. A string is
never altered: it is accepted exactly as given or refused (no trimming, no Unicode
normalisation). Strings may hold no control, format (bidi, zero-width), separator,
surrogate, private-use or unassigned characters, whatever the pattern says. Numbers are
ASCII digits only (``int()`` alone would take ``١٢``, ``1_000`` and `` 7``).

Messages name the parameter and the rule and show at most a short, escaped excerpt of
the value, so a hostile value is never echoed into chat or logs.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bridge.runbooks.model import ParamSpec, ParamType, Runbook, Value

BOOLEAN_WORDS: Final[Mapping[str, bool]] = {"true": True, "yes": True, "false": False, "no": False}
"""Accepted in any ASCII case."""

EXCERPT_CHARS: Final = 24
"""At most this many characters of a refused value are shown (escaped)."""

MAX_PROBLEMS_SHOWN: Final = 5

_INTEGER: Final = re.compile(r"[+-]?[0-9]{1,18}", re.ASCII)
_DURATION: Final = re.compile(
    r"(?:([0-9]{1,6})d)?(?:([0-9]{1,6})h)?(?:([0-9]{1,6})m)?(?:([0-9]{1,6})s)?", re.ASCII
)
_DURATION_UNITS: Final = (86400, 3600, 60, 1)
_ASCII_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_PLAIN: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ._:/@+=,-"
)


@dataclass(frozen=True, slots=True)
class ParamProblem:
    param: str
    rule: str
    """A short constant: ``unknown``, ``missing``, ``type``, ``range``, ``choice``,
    ``pattern``, ``max_length``, ``character``."""
    message: str

    def __str__(self) -> str:
        return f"{self.param}: {self.message}"


class ParamError(ValueError):
    """The arguments do not fit the runbook's parameters; the message is safe to show."""

    def __init__(self, problems: list[ParamProblem]) -> None:
        if not problems:
            raise ValueError("a ParamError needs at least one problem")
        self.problems = tuple(problems)
        shown = "; ".join(str(p) for p in problems[:MAX_PROBLEMS_SHOWN])
        more = len(problems) - MAX_PROBLEMS_SHOWN
        super().__init__(shown + (f"; and {more} more" if more > 0 else ""))

    @property
    def param(self) -> str:
        """The parameter of the first problem."""
        return self.problems[0].param

    @property
    def rule(self) -> str:
        """The rule of the first problem."""
        return self.problems[0].rule


class _RefusedError(ValueError):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def validate_args(runbook: Runbook, options: Mapping[str, str]) -> dict[str, Value]:
    """The validated arguments, in the order the parameters are declared, defaults filled
    in; ``ParamError`` listing every problem otherwise."""
    return validate_against(runbook.params, options)


def validate_against(params: tuple[ParamSpec, ...], options: Mapping[str, str]) -> dict[str, Value]:
    declared = {spec.name for spec in params}
    problems = [
        ParamProblem(excerpt(key), "unknown", "no such parameter")
        for key in sorted(options)
        if key not in declared
    ]
    values: dict[str, Value] = {}
    for spec in params:
        raw = options.get(spec.name)
        if raw is None:
            if spec.default is not None:
                values[spec.name] = spec.default
            elif spec.required:
                problems.append(ParamProblem(spec.name, "missing", "is required"))
            continue
        try:
            values[spec.name] = parse_value(spec, raw)
        except _RefusedError as exc:
            problems.append(ParamProblem(spec.name, exc.rule, str(exc)))
    if problems:
        raise ParamError(problems)
    return values


def parse_value(spec: ParamSpec, raw: str) -> Value:
    """One argument's text as a value of ``spec``'s type (``_RefusedError`` if it does not fit)."""
    if spec.type is ParamType.STRING:
        return _check_string(spec, raw)
    if spec.type is ParamType.ENUM:
        if raw not in spec.choices:
            raise _RefusedError(
                "choice", f"must be one of {', '.join(spec.choices)} (got {excerpt(raw)})"
            )
        return raw
    if spec.type is ParamType.INTEGER:
        if not _INTEGER.fullmatch(raw):
            raise _RefusedError("type", f"must be a whole number (got {excerpt(raw)})")
        return _check_range(spec, int(raw), "")
    if spec.type is ParamType.BOOLEAN:
        word = raw.lower() if raw.isascii() else ""
        if word not in BOOLEAN_WORDS:
            raise _RefusedError("type", f"must be true, false, yes or no (got {excerpt(raw)})")
        return BOOLEAN_WORDS[word]
    try:
        seconds = parse_duration(raw)
    except ValueError:
        raise _RefusedError(
            "type", f"must be a duration such as 30s, 5m or 1h30m (got {excerpt(raw)})"
        ) from None
    return _check_range(spec, seconds, " s")


def check_default(spec: ParamSpec, value: Value) -> Value:
    """A default from the catalog checked against its own parameter: the value as
    stored (a duration may be given as text such as ``5m``); ``ValueError`` if not."""
    if spec.type is ParamType.BOOLEAN:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if spec.type in (ParamType.INTEGER, ParamType.DURATION) and isinstance(value, int):
        if isinstance(value, bool):
            raise ValueError("must be a number")
        try:
            return _check_range(spec, value, " s" if spec.type is ParamType.DURATION else "")
        except _RefusedError as exc:
            raise ValueError(str(exc)) from None
    if spec.type is ParamType.INTEGER or not isinstance(value, str):
        raise ValueError(f"must be a {'number' if spec.type is ParamType.INTEGER else 'string'}")
    try:
        return parse_value(spec, value)
    except _RefusedError as exc:
        raise ValueError(str(exc)) from None


def parse_duration(text: str) -> int:
    """``30s``, ``5m``, ``1h30m``, ``2d`` -> seconds; ``ValueError`` otherwise."""
    match = _DURATION.fullmatch(text)
    if match is None or not text:
        raise ValueError("not a duration")
    return sum(
        int(part) * unit
        for part, unit in zip(match.groups(), _DURATION_UNITS, strict=True)
        if part is not None
    )


def forbidden_character(text: str) -> int | None:
    """The index of the first character a string argument may never hold, or None."""
    if text.isascii():
        found = _ASCII_CONTROL.search(text)
        return None if found is None else found.start()
    for index, char in enumerate(text):
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return index
    return None


def excerpt(value: str) -> str:
    """A short quoted excerpt of ``value`` safe to show anywhere: anything but letters,
    digits and a few punctuation marks is escaped (``\\x3b``, ``\\u202e``)."""
    head = "".join(_escape(char) for char in value[:EXCERPT_CHARS])
    more = f"... ({len(value)} characters)" if len(value) > EXCERPT_CHARS else ""
    return f'"{head}"{more}'


def canonical_args(args: Mapping[str, Value]) -> str:
    """Arguments as stable JSON: sorted keys, no spaces, ASCII only."""
    return json.dumps(dict(args), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def args_digest(runbook: Runbook, args: Mapping[str, Value]) -> str:
    """What an approval is for: this runbook, this exact definition, these arguments."""
    material = json.dumps(
        {"runbook": runbook.name, "definition": runbook.digest, "args": canonical_args(args)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _check_string(spec: ParamSpec, raw: str) -> str:
    if len(raw) > spec.max_length:
        raise _RefusedError("max_length", f"is longer than {spec.max_length} characters")
    index = forbidden_character(raw)
    if index is not None:
        raise _RefusedError(
            "character",
            f"contains a control or invisible character ({_escape(raw[index])}) "
            f"at position {index + 1}",
        )
    if spec.pattern is not None and re.fullmatch(spec.pattern, raw, re.ASCII) is None:
        raise _RefusedError("pattern", f"must match {spec.pattern} (got {excerpt(raw)})")
    return raw


def _check_range(spec: ParamSpec, number: int, unit: str) -> int:
    if spec.minimum is not None and number < spec.minimum:
        raise _RefusedError("range", f"must be at least {spec.minimum}{unit} (got {number}{unit})")
    if spec.maximum is not None and number > spec.maximum:
        raise _RefusedError("range", f"must be at most {spec.maximum}{unit} (got {number}{unit})")
    return number


def _escape(char: str) -> str:
    if char in _PLAIN:
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
