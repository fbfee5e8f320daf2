"""The command grammar: ``!group verb arg "quoted arg" key=value --flag``.

A command is the first line of a message that starts with the prefix. Only the
message's own text is parsed: quoted or replied-to content never is (it is
cut off by the adapters), and a command spanning several lines is refused
rather than guessed at, so text pasted under a command cannot smuggle a second
one in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

PREFIX: Final = "!"
MAX_COMMAND_CHARS: Final = 4096


class CommandSyntaxError(ValueError):
    """The text looks like a command but cannot be parsed; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedCommand:
    group: str
    """The first word without the prefix: ``incident``, ``runbook``, ``bridge``, ``help``."""
    args: tuple[str, ...] = ()
    """Positional words after the group (the verb first, if any)."""
    options: dict[str, str] = field(default_factory=dict)
    """``key=value`` pairs, in the order given (a repeated key is an error)."""
    flags: frozenset[str] = frozenset()
    """``--name`` switches, without the dashes."""
    raw: str = ""

    @property
    def verb(self) -> str | None:
        return self.args[0] if self.args else None


def looks_like_command(text: str) -> bool:
    stripped = text.lstrip()
    return stripped.startswith(PREFIX) and len(stripped) > 1 and stripped[1].isalpha()


def parse_command(text: str) -> ParsedCommand | None:
    """The command in ``text``, None if it is not one; ``CommandSyntaxError`` if malformed."""
    if not looks_like_command(text):
        return None
    stripped = text.strip()
    if "\n" in stripped or "\r" in stripped:
        raise CommandSyntaxError("a command is one line; put nothing after it in the message")
    if len(stripped) > MAX_COMMAND_CHARS:
        raise CommandSyntaxError(f"a command is at most {MAX_COMMAND_CHARS} characters")
    if "\x00" in stripped:
        raise CommandSyntaxError("a command cannot contain NUL characters")
    words = tokenize(stripped[len(PREFIX) :])
    if not words:
        return None
    group, rest = words[0][0].lower(), words[1:]
    args: list[str] = []
    options: dict[str, str] = {}
    flags: set[str] = set()
    for word, quoted in rest:
        option = None if quoted else _OPTION.match(word)
        if not quoted and word.startswith("--") and len(word) > 2:
            flags.add(word[2:].lower())
        elif option is not None:
            key, value = option.group(1), option.group(2)
            if key in options:
                raise CommandSyntaxError(f"{key}= is given twice")
            options[key] = value
        else:
            args.append(word)
    return ParsedCommand(
        group=group, args=tuple(args), options=options, flags=frozenset(flags), raw=stripped
    )


_OPTION: Final = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]{0,63})=(.*)$", re.S)
_QUOTES: Final = "\"'"


def tokenize(text: str) -> list[tuple[str, bool]]:
    """Split like a shell (quotes, backslash escapes), noting which words were quoted.

    A word quoted before any ``=`` is always a positional argument: ``"a=b"`` is text,
    not an option, while ``key="a b"`` is the option ``key`` with the value ``a b``.
    Nothing is ever expanded or executed; this only splits.
    """
    words: list[tuple[str, bool]] = []
    current: list[str] = []
    quoted = in_word = keyed = False
    quote: str | None = None
    chars = iter(text)
    for char in chars:
        if quote is not None:
            if char == quote:
                quote = None
            elif char == "\\" and quote == '"':
                current.append(next(chars, ""))
            else:
                current.append(char)
        elif char in _QUOTES:
            quote, in_word = char, True
            quoted = quoted or not keyed  # quoted before any "=": never an option
        elif char == "\\":
            current.append(next(chars, ""))
            in_word = True
        elif char.isspace():
            if in_word:
                words.append(("".join(current), quoted))
            current, quoted, in_word, keyed = [], False, False, False
        else:
            current.append(char)
            in_word = True
            keyed = keyed or char == "="
    if quote is not None:
        raise CommandSyntaxError(f"a {quote} quote is not closed")
    if in_word:
        words.append(("".join(current), quoted))
    return words
