"""Fault injection: the next N calls matching a method and a path pattern misbehave.

A fault is one of: an HTTP error status (429 with ``Retry-After``, 412, 500, 502,
503, 504, or any other), a timeout (the response is held longer than a client waits,
at most ``hold_s`` and never past the emulator's stop; then 504), or a slow response
(a delay, then the call is served normally).

``committed=True`` makes the call take effect before the fault answers, like a Teams
create that timed out or failed with a 5xx although the message was posted. With
``committed=False`` (the default) nothing happens on the server side.

Faults apply to authenticated calls only (a bad token is always 401), in the order
they were injected; ``path`` is a regular expression searched in the decoded path.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

DEFAULT_HOLD_S = 60.0
"""Longer than any sane client timeout, and bounded."""


class FaultKind(StrEnum):
    STATUS = "status"
    TIMEOUT = "timeout"
    SLOW = "slow"


ERROR_CODES: Final = MappingProxyType(
    {
        412: "PreconditionFailed",
        429: "TooManyRequests",
        500: "InternalServerError",
        502: "BadGateway",
        503: "ServiceUnavailable",
        504: "GatewayTimeout",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    fault_id: int
    kind: FaultKind
    method: str | None
    """Upper-case HTTP method, or None for any."""
    path: str
    status: int = 0
    retry_after_s: int | None = None
    delay_s: float = 0.0
    """For SLOW: the delay. For TIMEOUT: how long the response is held at most."""
    committed: bool = False
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and re.search(
            self.path, path
        ) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class FiredFault:
    fault: Fault
    method: str
    path: str
    call_seq: int


class FaultPlan:
    """The faults waiting to fire, and those that fired."""

    def __init__(self) -> None:
        self._serial = itertools.count(1)
        self._remaining: dict[int, int] = {}
        self._faults: dict[int, Fault] = {}
        self.fired: list[FiredFault] = []

    def inject(
        self,
        *,
        method: str | None = None,
        path: str = ".*",
        status: int | None = None,
        timeout: bool = False,
        delay_s: float | None = None,
        hold_s: float = DEFAULT_HOLD_S,
        retry_after_s: int | None = None,
        committed: bool = False,
        times: int = 1,
    ) -> Fault:
        """Arm a fault for the next ``times`` matching calls.

        Exactly one of ``status``, ``timeout=True`` or ``delay_s`` says what happens.
        A 429 without ``retry_after_s`` carries ``Retry-After: 1``.
        """
        chosen = [status is not None, timeout, delay_s is not None]
        if sum(chosen) != 1:
            raise ValueError("give exactly one of status, timeout=True or delay_s")
        if times < 1:
            raise ValueError("times must be at least 1")
        re.compile(path)
        if status is not None:
            if not 400 <= status <= 599:
                raise ValueError("a fault status is an HTTP error status")
            kind, delay = FaultKind.STATUS, 0.0
            if status == 429 and retry_after_s is None:
                retry_after_s = 1
        elif timeout:
            kind, delay = FaultKind.TIMEOUT, hold_s
        else:
            if committed:
                raise ValueError("a slow response always takes effect; committed does not apply")
            kind, delay = FaultKind.SLOW, float(delay_s or 0.0)
        fault = Fault(
            fault_id=next(self._serial),
            kind=kind,
            method=method.upper() if method else None,
            path=path,
            status=status or 0,
            retry_after_s=retry_after_s,
            delay_s=delay,
            committed=committed,
            times=times,
        )
        self._faults[fault.fault_id] = fault
        self._remaining[fault.fault_id] = times
        return fault

    def take(self, method: str, path: str, call_seq: int) -> Fault | None:
        """The first armed fault matching this call, used up by one."""
        for fault_id, fault in self._faults.items():
            if self._remaining[fault_id] > 0 and fault.matches(method, path):
                self._remaining[fault_id] -= 1
                self.fired.append(
                    FiredFault(fault=fault, method=method, path=path, call_seq=call_seq)
                )
                return fault
        return None

    def remaining(self, fault: Fault) -> int:
        return self._remaining.get(fault.fault_id, 0)

    @property
    def armed(self) -> tuple[Fault, ...]:
        return tuple(f for i, f in self._faults.items() if self._remaining[i] > 0)

    def cancel(self, fault: Fault) -> None:
        self._remaining[fault.fault_id] = 0

    def clear(self) -> None:
        for fault_id in self._remaining:
            self._remaining[fault_id] = 0
