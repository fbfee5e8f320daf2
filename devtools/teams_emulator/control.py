"""The emulator's own JSON routes under ``/_emulator/``: the page's API and remote control.

- ``GET  /_emulator/api/directory``: the bot, the users and the conversations.
- ``GET  /_emulator/api/messages?conversation=ID``: a conversation's messages (a thread
  id gives one thread).
- ``POST /_emulator/api/messages`` ``{conversation, user, text, threadRoot?}``: a user posts.
- ``POST /_emulator/api/install`` ``{conversation, user?}``: the bot is added there.
- ``GET  /_emulator/calls``, ``/_emulator/violations``, ``/_emulator/deliveries``: records.
- ``GET|POST|DELETE /_emulator/faults``: list, arm (the keyword arguments of
  ``FaultPlan.inject`` as JSON) or disarm faults.

A POST must be ``application/json`` and, when the browser says where it comes from,
from the emulator's own origin, so another web page cannot drive it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web

from devtools.teams_emulator.channel import ChannelSide
from devtools.teams_emulator.directory import Directory
from devtools.teams_emulator.faults import Fault, FaultPlan
from devtools.teams_emulator.model import JSONObject
from devtools.teams_emulator.ratelimit import RateLimiter, Violation
from devtools.teams_emulator.records import CallLog, CallRecord, Delivery

_FAULT_FIELDS: Final = MappingProxyType(
    {
        "method": str,
        "path": str,
        "status": int,
        "timeout": bool,
        "delay_s": float,
        "hold_s": float,
        "retry_after_s": int,
        "committed": bool,
        "times": int,
    }
)


def call_json(record: CallRecord) -> JSONObject:
    auth = record.auth
    return {
        "seq": record.seq,
        "at": record.at.isoformat(),
        "method": record.method,
        "path": record.path,
        "query": record.query,
        "operation": record.operation.value,
        "conversationId": record.conversation_id,
        "activityId": record.activity_id,
        "auth": None
        if auth is None
        else {"valid": auth.valid, "reason": auth.reason, "appId": auth.app_id},
        "headers": dict(record.headers),
        "body": record.body,
        "status": record.status,
        "fault": record.fault.value if record.fault else None,
        "committed": record.committed,
        "rateLimited": record.rate_limited,
    }


def violation_json(violation: Violation) -> JSONObject:
    return {
        "at": violation.at.isoformat(),
        "scope": violation.scope.value,
        "key": violation.key,
        "bucket": violation.bucket.value if violation.bucket else None,
        "window": violation.window.label,
        "method": violation.method,
        "path": violation.path,
        "retryAfterSeconds": violation.retry_after_s,
    }


def fault_json(fault: Fault, remaining: int) -> JSONObject:
    return {
        "id": fault.fault_id,
        "kind": fault.kind.value,
        "method": fault.method,
        "path": fault.path,
        "status": fault.status or None,
        "retryAfterSeconds": fault.retry_after_s,
        "delaySeconds": fault.delay_s,
        "committed": fault.committed,
        "remaining": remaining,
    }


def delivery_json(delivery: Delivery) -> JSONObject:
    return {
        "activityId": delivery.activity_id,
        "type": delivery.activity.get("type"),
        "endpoint": delivery.endpoint,
        "outcome": delivery.outcome.value,
        "status": delivery.status,
        "error": delivery.error,
        "sentAt": delivery.sent_at.isoformat(),
        "elapsedSeconds": delivery.elapsed_s,
    }


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_body(request: web.Request) -> Mapping[str, Any] | web.Response:
    if request.content_type != "application/json":
        return _problem(415, "send application/json")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return _problem(403, "cross-origin requests are refused")
    try:
        body = await request.json()
    except ValueError:
        return _problem(400, "the body is not JSON")
    if not isinstance(body, dict):
        return _problem(400, "the body must be a JSON object")
    return body


class ControlApi:
    def __init__(
        self,
        *,
        directory: Directory,
        channel: ChannelSide,
        calls: CallLog,
        faults: FaultPlan,
        limiter: RateLimiter,
    ) -> None:
        self._directory = directory
        self._channel = channel
        self._calls = calls
        self._faults = faults
        self._limiter = limiter

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_emulator/api/directory", self.directory),
            web.get("/_emulator/api/messages", self.messages),
            web.post("/_emulator/api/messages", self.post_message),
            web.post("/_emulator/api/install", self.install),
            web.get("/_emulator/calls", self.calls),
            web.get("/_emulator/violations", self.violations),
            web.get("/_emulator/deliveries", self.deliveries),
            web.get("/_emulator/faults", self.list_faults),
            web.post("/_emulator/faults", self.inject_fault),
            web.delete("/_emulator/faults", self.clear_faults),
        ]

    async def directory(self, _request: web.Request) -> web.Response:
        bot = self._directory.bot
        return web.json_response(
            {
                "bot": {"id": bot.account_id, "name": bot.name, "appId": bot.app_id},
                "botEndpoint": self._channel.bot_endpoint,
                "users": [{"id": u.account_id, "name": u.name} for u in self._directory.users],
                "conversations": [
                    {
                        "id": c.conversation_id,
                        "label": self._directory.label(c),
                        "kind": c.kind.value,
                        "botInstalled": self._directory.bot_installed(c),
                    }
                    for c in self._directory.conversations
                ],
            }
        )

    async def messages(self, request: web.Request) -> web.Response:
        conversation_id = request.query.get("conversation", "")
        if self._directory.find_conversation(conversation_id) is None:
            return _problem(404, "no such conversation")
        messages = self._directory.messages(conversation_id)
        return web.json_response(
            {"conversation": conversation_id, "messages": [m.to_json() for m in messages]}
        )

    async def post_message(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        text, root = body.get("text"), body.get("threadRoot")
        if not isinstance(text, str) or not text.strip():
            return _problem(400, "text is required")
        if root is not None and not isinstance(root, str):
            return _problem(400, "threadRoot must be a string")
        try:
            conversation = self._directory.conversation(str(body.get("conversation", "")))
            user = self._directory.user(str(body.get("user", "")))
        except LookupError as exc:
            return _problem(404, str(exc))
        if not self._channel.bot_endpoint:
            return _problem(409, "the emulator has no bot endpoint")
        delivery = await self._channel.post_message(conversation, user, text, thread_root=root)
        return web.json_response(
            {
                "activityId": delivery.activity_id,
                "status": delivery.status,
                "outcome": delivery.outcome.value,
            }
        )

    async def install(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            conversation = self._directory.conversation(str(body.get("conversation", "")))
            user = self._directory.user(str(body["user"])) if body.get("user") else None
        except LookupError as exc:
            return _problem(404, str(exc))
        if not self._channel.bot_endpoint:
            return _problem(409, "the emulator has no bot endpoint")
        installed = await self._channel.installation_update(conversation, action="add", by=user)
        added = await self._channel.update_members(
            conversation, [self._directory.bot], added=True, by=user
        )
        return web.json_response({"statuses": [installed.status, added.status]})

    async def calls(self, _request: web.Request) -> web.Response:
        return web.json_response([call_json(r) for r in self._calls.records])

    async def violations(self, _request: web.Request) -> web.Response:
        return web.json_response([violation_json(v) for v in self._limiter.violations])

    async def deliveries(self, _request: web.Request) -> web.Response:
        return web.json_response([delivery_json(d) for d in self._channel.deliveries])

    async def list_faults(self, _request: web.Request) -> web.Response:
        return web.json_response(
            [fault_json(f, self._faults.remaining(f)) for f in self._faults.armed]
        )

    async def inject_fault(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        arguments: dict[str, Any] = {}
        for name, value in body.items():
            expected = _FAULT_FIELDS.get(name)
            if expected is None:
                return _problem(400, f"unknown field {name!r}")
            if value is None:
                continue
            given = value
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                given = float(value)
            if not isinstance(given, expected) or (expected is int and isinstance(given, bool)):
                return _problem(400, f"{name} must be {expected.__name__}")
            arguments[name] = given
        try:
            fault = self._faults.inject(**arguments)
        except (ValueError, TypeError) as exc:
            return _problem(400, str(exc))
        return web.json_response(fault_json(fault, self._faults.remaining(fault)), status=201)

    async def clear_faults(self, _request: web.Request) -> web.Response:
        self._faults.clear()
        return web.json_response({"cleared": True})
