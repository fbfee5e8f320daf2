"""Runbook secrets: resolved just before a run, and redacted from everything it shows.

``resolve_secrets`` reads each ``SecretRef`` (a file, e.g. a mounted Kubernetes Secret,
without one trailing newline; or an environment variable). Its errors name the secret
and where it was looked for, never a value.

``Redactor`` replaces every occurrence of each value, and of the forms it commonly takes
in output (base64, also at the other two byte alignments inside a longer base64 text;
URL-quoted; JSON-escaped; each line of a value of several lines), with ``MASK``.
``Redactor.stream()`` does the same on text that arrives in pieces: it holds back a tail
shorter than the longest form, so a value split across two pieces is still caught.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final
from urllib.parse import quote, quote_plus

from bridge.errors import BridgeError
from bridge.runbooks.executors.base import MASK
from bridge.runbooks.model import SecretRef

MIN_DERIVED_CHARS: Final = 6
"""Derived forms (a fragment of base64, one line of a longer value) shorter than this
are not redacted on their own: they would mask unrelated text. The value itself always
is, whatever its length."""

MAX_SECRET_BYTES: Final = 64 * 1024


class SecretError(BridgeError):
    """A secret could not be resolved; the message names it and never shows a value."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        super().__init__(f"secret {name}: {problem}")


def resolve_secrets(
    refs: Iterable[SecretRef], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Name -> value for each reference; ``SecretError`` on the first that cannot be read
    or is empty. ``environ`` defaults to the process environment."""
    env = os.environ if environ is None else environ
    return {ref.name: resolve_secret(ref, env) for ref in refs}


def resolve_secret(ref: SecretRef, environ: Mapping[str, str]) -> str:
    if ref.file is not None:
        value = _read_file(ref.name, Path(ref.file))
    elif ref.env is not None:
        found = environ.get(ref.env)
        if found is None:
            raise SecretError(ref.name, f"environment variable {ref.env} is not set")
        value = found
    else:
        raise SecretError(ref.name, "has neither a file nor an environment variable")
    if not value:
        raise SecretError(ref.name, "is empty")
    return value


def _read_file(name: str, path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretError(name, f"cannot read {path}: {exc.strerror or 'error'}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(name, f"{path} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(name, f"{path} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


class Redactor:
    """Masks secret values in text."""

    def __init__(self, values: Iterable[str]) -> None:
        forms = {form for value in values if value for form in _forms(value)}
        ordered = sorted(forms, key=lambda form: (-len(form), form))
        self._longest = len(ordered[0]) if ordered else 0
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    @property
    def longest(self) -> int:
        """The length of the longest form masked (what a stream holds back, less one)."""
        return self._longest

    def redact(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def stream(self) -> RedactingStream:
        return RedactingStream(self._pattern, self._longest)


class RedactingStream:
    """Redacts text given in pieces: ``feed`` returns what is safe to show so far,
    ``flush`` the rest at the end. The concatenation of all returned text equals
    ``Redactor.redact`` of the concatenation of all pieces."""

    def __init__(self, pattern: re.Pattern[str] | None, longest: int) -> None:
        self._pattern = pattern
        self._longest = longest
        self._pending = ""

    def feed(self, text: str) -> str:
        if self._pattern is None:
            return text
        buffer = self._pending + text
        # A match starting before `limit` is wholly inside the buffer, so the choice
        # made there cannot change with more text; later starts must wait.
        limit = len(buffer) - self._longest + 1
        out: list[str] = []
        pos = 0
        while True:
            match = self._pattern.search(buffer, pos)
            if match is None or match.start() >= limit:
                break
            out.append(buffer[pos : match.start()])
            out.append(MASK)
            pos = match.end()
        if limit > pos:
            out.append(buffer[pos:limit])
            pos = limit
        self._pending = buffer[pos:]
        return "".join(out)

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        if self._pattern is None:
            return rest
        return self._pattern.sub(MASK, rest)


def _forms(value: str) -> set[str]:
    raw = value.encode("utf-8")
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value)}
    forms.update((json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]))
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        forms.update((encoded.decode("ascii"), encoded.decode("ascii").rstrip("=")))
    fragments = {line for line in value.splitlines() if line != value}
    for shift in range(3):
        fragments.update(_base64_core(raw, shift))
    forms.update(form for form in fragments if len(form) >= MIN_DERIVED_CHARS)
    forms.discard("")
    return forms


def _base64_core(raw: bytes, shift: int) -> set[str]:
    """The base64 characters that depend only on ``raw`` when it starts ``shift`` bytes
    into a longer base64 text (standard and URL-safe alphabets)."""
    encoded = base64.b64encode(bytes(shift) + raw).decode("ascii")
    start = -(-shift * 8 // 6)  # characters touched by the preceding bytes
    end = (shift + len(raw)) * 8 // 6  # characters not touched by the following bytes
    core = encoded[start:end]
    return {core, core.replace("+", "-").replace("/", "_")}
