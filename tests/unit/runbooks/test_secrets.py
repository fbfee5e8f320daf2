"""Runbook secrets: resolution errors never show a value; redaction, also across pieces."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from bridge.runbooks.model import SecretRef
from bridge.runbooks.secrets import MAX_SECRET_BYTES, Redactor, SecretError, resolve_secrets

CANARY = "canary-7f3a/9+Zq=&x y"


def test_file_and_env_secrets_are_resolved(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(CANARY + "\n")
    (tmp_path / "crlf").write_bytes(b"abc\r\n")
    (tmp_path / "two").write_text("abc\n\n")
    refs = [
        SecretRef(name="token", file=str(tmp_path / "token")),
        SecretRef(name="crlf", file=str(tmp_path / "crlf")),
        SecretRef(name="two", file=str(tmp_path / "two")),
        SecretRef(name="key", env="API_KEY"),
    ]
    assert resolve_secrets(refs, {"API_KEY": "k-123"}) == {
        "token": CANARY,
        "crlf": "abc",
        "two": "abc\n",
        "key": "k-123",
    }


def test_no_references_resolve_to_nothing() -> None:
    assert resolve_secrets([], {}) == {}


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (
            SecretRef(name="key", env="MISSING"),
            "secret key: environment variable MISSING is not set",
        ),
        (SecretRef(name="key", env="EMPTY"), "secret key: is empty"),
        (SecretRef(name="key"), "secret key: has neither a file nor an environment variable"),
    ],
)
def test_env_errors_name_the_secret(ref: SecretRef, expected: str) -> None:
    with pytest.raises(SecretError) as exc:
        resolve_secrets([ref], {"EMPTY": ""})
    assert str(exc.value) == expected
    assert exc.value.name == "key"


def test_file_errors_name_the_secret_and_never_show_the_contents(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(SecretError, match=f"secret token: cannot read {missing}: No such file"):
        resolve_secrets([SecretRef(name="token", file=str(missing))], {})
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff" + CANARY.encode())
    with pytest.raises(SecretError) as exc:
        resolve_secrets([SecretRef(name="token", file=str(binary))], {})
    assert str(exc.value) == f"secret token: {binary} is not UTF-8 text"
    big = tmp_path / "big"
    big.write_text(CANARY * (MAX_SECRET_BYTES // len(CANARY) + 1))
    with pytest.raises(SecretError) as exc:
        resolve_secrets([SecretRef(name="token", file=str(big))], {})
    assert CANARY not in str(exc.value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SecretError, match="secret token: is empty"):
        resolve_secrets([SecretRef(name="token", file=str(empty))], {})


def test_every_form_of_a_value_is_masked() -> None:
    raw = CANARY.encode()
    forms = [
        CANARY,
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        quote(CANARY, safe=""),
        quote(CANARY),
        quote_plus(CANARY),
        json.dumps(CANARY)[1:-1],
    ]
    redactor = Redactor([CANARY])
    for form in forms:
        assert redactor.redact(f"before {form} after") == "before *** after", form


def test_a_value_inside_a_longer_base64_text_is_masked_at_every_alignment() -> None:
    redactor = Redactor([CANARY])
    for prefix in ("", "u", "us", "user:", "Basic x:"):
        blob = base64.b64encode(f"{prefix}{CANARY}@tail".encode()).decode()
        redacted = redactor.redact(blob)
        assert "***" in redacted, prefix
        left, _, right = redacted.partition("***")
        # What is left around the mask is at most the characters shared with the
        # neighbouring text, never enough to rebuild the value.
        assert len(blob) - len(left) - len(right) >= len(CANARY) * 4 // 3 - 2


def test_multiline_values_are_masked_whole_and_line_by_line() -> None:
    pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD\n-----END KEY-----"
    redactor = Redactor([pem])
    assert redactor.redact(f"x{pem}y") == "x***y"
    assert redactor.redact("line MIIBOgIBAAJBAKj34GkxFhD") == "line ***"


def test_short_values_are_masked_but_not_their_fragments() -> None:
    redactor = Redactor(["ab1"])
    assert redactor.redact("xab1y ab") == "x***y ab"


def test_an_empty_redactor_changes_nothing() -> None:
    redactor = Redactor(["", ""])
    assert redactor.redact("anything") == "anything"
    stream = redactor.stream()
    assert stream.feed("any") + stream.flush() == "any"


def test_overlapping_values_mask_the_longest() -> None:
    redactor = Redactor(["secret", "secret-longer"])
    assert redactor.redact("a secret-longer b secret c") == "a *** b *** c"


def test_a_value_split_across_pieces_is_masked() -> None:
    redactor = Redactor([CANARY, "second-secret"])
    text = f"start {CANARY} middle second-secret and {CANARY}{CANARY} end"
    for cut in range(len(text) + 1):
        stream = redactor.stream()
        shown = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.flush()
        assert shown == redactor.redact(text), cut
        assert CANARY not in shown


def test_streaming_matches_whole_text_redaction_for_random_pieces() -> None:
    secrets = [CANARY, "tok_" + "Zx9" * 5, "s3cr3t"]
    redactor = Redactor(secrets)
    rng = random.Random(7)
    alphabet = ["a", " ", "\n", "s3c", "r3t", "tok_", "Zx9", *secrets, quote(CANARY, safe="")]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        stream = redactor.stream()
        shown: list[str] = []
        pos = 0
        while pos < len(text):
            step = rng.randint(1, 9)
            shown.append(stream.feed(text[pos : pos + step]))
            pos += step
        shown.append(stream.flush())
        assert "".join(shown) == redactor.redact(text)


def test_a_stream_holds_back_less_than_the_longest_form() -> None:
    redactor = Redactor(["abcdef"])
    stream = redactor.stream()
    shown = stream.feed("x" * 100)
    assert len(shown) >= 100 - redactor.longest + 1
    assert shown + stream.flush() == "x" * 100
