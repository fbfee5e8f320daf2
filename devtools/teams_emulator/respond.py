"""Responses shared by the emulator's routes: connector errors, fault answers, held calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from devtools.teams_emulator.faults import ERROR_CODES, Fault, FaultKind

UNAUTHORIZED_MESSAGE = "Authorization has been denied for this request."


@dataclass(frozen=True, slots=True)
class Reply:
    """What a route answers: a status and a JSON payload, or raw bytes."""

    status: int
    payload: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    def to_response(self) -> web.Response:
        if self.raw is not None:
            body = self.raw
        elif self.payload is None:
            body = b""
        else:
            body = json.dumps(self.payload).encode()
        content_type = self.content_type if body else None
        response = web.Response(status=self.status, body=body, headers=dict(self.headers))
        if content_type is not None:
            response.content_type = content_type
            if content_type == "application/json":
                response.charset = "utf-8"
        return response


def error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    """An error in the connector's shape: ``{"error": {"code", "message"}}``."""
    return Reply(status, {"error": {"code": code, "message": message}}, headers=headers or {})


def unauthorized() -> Reply:
    return Reply(401, {"message": UNAUTHORIZED_MESSAGE})


def fault_reply(fault: Fault) -> Reply:
    if fault.kind is FaultKind.TIMEOUT:
        return error(504, "GatewayTimeout", "The request timed out.")
    headers = {"Retry-After": str(fault.retry_after_s)} if fault.retry_after_s is not None else {}
    code = ERROR_CODES.get(fault.status, "Error")
    return error(fault.status, code, f"Injected fault ({fault.status}).", headers)


class Holder:
    """Holds responses (timeouts, slow calls) until their time is up or the emulator stops."""

    def __init__(self) -> None:
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def release_all(self) -> None:
        self._stopping.set()

    async def hold(self, seconds: float) -> None:
        if seconds <= 0 or self._stopping.is_set():
            return
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return
