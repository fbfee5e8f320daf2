from __future__ import annotations

import pytest

from bridge.commands.parse import CommandSyntaxError, parse_command, tokenize


def test_grammar() -> None:
    command = parse_command('  !incident declare sev2 "Checkout errors" owner=@a:x --quiet')
    assert command is not None
    assert command.group == "incident"
    assert command.verb == "declare"
    assert command.args == ("declare", "sev2", "Checkout errors")
    assert command.options == {"owner": "@a:x"}
    assert command.flags == frozenset({"quiet"})


def test_quoted_words_are_never_options_or_flags() -> None:
    command = parse_command("!note add \"a=b\" '--not-a-flag'")
    assert command is not None
    assert command.args == ("add", "a=b", "--not-a-flag")
    assert command.options == {}
    assert command.flags == frozenset()


def test_an_option_value_may_be_quoted() -> None:
    command = parse_command('!runbook run r service="checkout api" note=\'a=b c\' "k=v w"')
    assert command is not None
    assert command.options == {"service": "checkout api", "note": "a=b c"}
    assert command.args == ("run", "r", "k=v w")


@pytest.mark.parametrize("text", ["hello", "! spaced", "!!", "!1abc", "", "   "])
def test_not_commands(text: str) -> None:
    assert parse_command(text) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("!runbook run x\n!runbook run y", "one line"),
        ("!runbook run 'unclosed", "not closed"),
        ("!a k=1 k=2", "twice"),
        ("!a \x00", "NUL"),
        ("!a " + "x" * 5000, "at most"),
    ],
)
def test_malformed_commands_say_why(text: str, reason: str) -> None:
    with pytest.raises(CommandSyntaxError, match=reason):
        parse_command(text)


def test_tokenizer_only_splits() -> None:
    assert tokenize("a $(rm -rf /) `x` ; b | c") == [
        ("a", False), ("$(rm", False), ("-rf", False), ("/)", False), ("`x`", False),
        (";", False), ("b", False), ("|", False), ("c", False),
    ]  # fmt: skip
    assert tokenize(r'"a \"q\" b" c\ d') == [('a "q" b', True), ("c d", False)]
