"""S6 at the schema: generated hostile values are refused or kept exactly as given.

Each property runs many thousands of generated values (newline, ``;``, ``&``, ``|``,
``$()``, backticks, ``../``, NUL, look-alike Unicode, bidi controls, zero-width
characters, 64 KB strings) through ``validate_args``. A value is either refused with a
``ParamError`` whose message shows no hostile character, or returned unchanged; with a
typical pattern no shell or path character ever gets through.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.runbooks.model import Access, ApprovalPolicy, ExecSpec, ParamSpec, ParamType, Runbook
from bridge.runbooks.params import ParamError, validate_args

HOSTILE = [
    "\n", "\r\n", "\r", ";", "&", "&&", "|", "||", "$(", ")", "$(id)", "`", "`id`", "../",
    "..\\", "/etc/passwd", "\x00", "\t", "\x1b[2J", "\x7f", "\x85", ">", ">>", "<", "*", "?",
    "~", "'", '"', "\\", "$HOME", "${IFS}", "%0a", "%00", "-", "--", "-rf", "=", " ", "#",
    "!", "{", "}", "{secret:token}", "\u0430", "\u0435", "\u043e", "\u0455", "\u03bf",
    "\u217c", "\uff50", "\u0131", "\u212a", "\u202e", "\u202d", "\u2066", "\u2069", "\u200b",
    "\u200c", "\u200d", "\u2060", "\ufeff", "\u2028", "\u2029", "\u00a0", "\u3000", "\ud800",
    "\udfff", "\ue000", "\U000e0041", "\u0663", "\uff11", "\u0301",
]  # fmt: skip
"""Shell and path syntax, control characters, and Unicode look-alikes and invisibles."""

PLAIN = ["api", "web-01", "db", "a", "0", "x.y", "prod"]

HOSTILE_VALUES = st.one_of(
    st.lists(st.sampled_from(HOSTILE + PLAIN), min_size=1, max_size=8).map("".join),
    st.text(max_size=30),
    st.tuples(st.sampled_from(HOSTILE), st.integers(0, 65536)).map(
        lambda pair: "a" * pair[1] + pair[0]
    ),
    st.sampled_from(["a" * 65536, "a" * 63, "a" * 64, "a" * 4096, "a" * 4097]),
)

HOST_PATTERN = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
SPECS = (
    ParamSpec(name="host", type=ParamType.STRING, pattern=HOST_PATTERN, max_length=63),
    ParamSpec(name="text", type=ParamType.STRING, max_length=4096),
)
SHOWN_NEVER = set("\n\r\x00`$;&|<>'") | {"\u202e", "\u200b", "\u2066", "\ufeff"}
EXAMPLES = 10_000


def runbook() -> Runbook:
    return Runbook(
        name="hostile",
        description="",
        params=SPECS,
        access=Access(),
        approvals=ApprovalPolicy(),
        timeout=timedelta(minutes=1),
        executor=ExecSpec(argv=("/bin/echo", "{host}", "{text}")),
    )


def check(name: str, value: str) -> bool:
    """Whether ``value`` was accepted; asserts the property either way."""
    try:
        args = validate_args(runbook(), {name: value})
    except ParamError as exc:
        message = str(exc)
        assert len(message) < 200
        assert not SHOWN_NEVER & set(message), message
        assert all(32 <= ord(c) < 127 for c in message), message
        return False
    assert args == {name: value}
    assert args[name] is value  # the very object given: never altered
    return True


@settings(
    max_examples=EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(value=HOSTILE_VALUES)
def _property(counts: Counter[str], value: str) -> None:
    counts["values"] += 1
    counts["hostile"] += any(h in value for h in HOSTILE)
    if check("host", value):
        assert re.fullmatch(HOST_PATTERN, value, re.ASCII)
        assert value.isascii()
        assert not set(value) & set(";&|$`\\/'\"<> \n\x00")
    if check("text", value):
        assert len(value) <= 4096
        assert not set(value) & {"\x00", "\n", "\r", "\u202e", "\u200b", "\ufeff", "\u2028"}


def test_hostile_values_are_refused_by_the_schema_or_kept_exactly() -> None:
    counts: Counter[str] = Counter()
    _property(counts)
    assert counts["values"] >= EXAMPLES
    assert counts["hostile"] >= EXAMPLES // 2
