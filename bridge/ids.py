"""Sortable identifiers minted by the bridge.

A ``new_event_id`` is a ULID: 48 bits of milliseconds since the epoch and 80
random bits, in Crockford base32 (26 characters). Ids minted by one process
sort in minting order even within a millisecond.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


class UlidFactory:
    """Mints monotonic ULIDs; one per composition root, safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def new(self, *, at_ms: int | None = None) -> str:
        ms = time.time_ns() // 1_000_000 if at_ms is None else at_ms
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_random + 1
                if rand > _RANDOM_MAX:  # 2**80 ids in one millisecond: move on
                    ms += 1
                    rand = secrets.randbits(_RANDOM_BITS - 1)
            else:
                rand = secrets.randbits(_RANDOM_BITS - 1)  # headroom for increments
            self._last_ms, self._last_random = ms, rand
        return _encode((ms << _RANDOM_BITS) | rand, 26)


def ulid_timestamp_ms(value: str) -> int:
    """The millisecond timestamp encoded in a ULID."""
    number = 0
    for char in value[:10]:
        number = (number << 5) | _ALPHABET.index(char)
    return number
