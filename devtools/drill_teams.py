"""The drill's Teams side: people posting through the emulator, and what the page shows.

A post goes through ``POST /_emulator/api/messages``, so the emulator builds the
activity, signs it with its channel key and delivers it to the bridge exactly as it
does for the web page. What the bot posted, updated or replied is read back from
``GET /_emulator/api/messages`` (the emulator's record of the conversation), polled:
the emulator offers nothing to wait on.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from devtools.drill_waits import DrillError, poll_until

REQUEST_TIMEOUT_S: Final = 30.0
_TAG: Final = re.compile(r"<[^>]+>")

TeamsMessage = Mapping[str, Any]


def plain_text(message: TeamsMessage) -> str:
    """A Teams message as people read it: tags dropped, entities decoded."""
    return html.unescape(_TAG.sub("", str(message.get("text", ""))))


def from_bot(message: TeamsMessage) -> bool:
    sender = message.get("from")
    return isinstance(sender, Mapping) and sender.get("isBot") is True


class EmulatorClient:
    """The emulator's page API on ``base_url`` (see the module documentation)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/")

    async def post(
        self, conversation: str, user: str, text: str, *, thread_root: str | None = None
    ) -> str:
        """``user`` (an id or a display name) posts ``text``; the activity id. The bridge
        must have accepted the activity (200)."""
        body: dict[str, Any] = {"conversation": conversation, "user": user, "text": text}
        if thread_root is not None:
            body["threadRoot"] = thread_root
        answer = await self._call("POST", "/_emulator/api/messages", body)
        if answer.get("status") != 200:
            raise DrillError(
                f"the bridge answered {answer.get('status')} ({answer.get('outcome')}) "
                f"to the Teams post {text!r}"
            )
        return str(answer["activityId"])

    async def messages(self, conversation: str) -> list[TeamsMessage]:
        """The conversation's messages in order (a thread id: that thread's)."""
        answer = await self._call(
            "GET", f"/_emulator/api/messages?conversation={quote(conversation, safe='')}"
        )
        found = answer.get("messages")
        return list(found) if isinstance(found, list) else []

    async def wait_message(
        self,
        conversation: str,
        match: Callable[[TeamsMessage], bool],
        *,
        within: float,
        what: str,
    ) -> TeamsMessage:
        """The first message of ``conversation`` that ``match``es, once there is one."""

        async def probe() -> TeamsMessage | None:
            return next((m for m in await self.messages(conversation) if match(m)), None)

        return await poll_until(probe, within=within, what=what)

    async def _call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        async with self._session.request(
            method,
            self._base + path,
            json=body,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        ) as response:
            text = await response.text()
            if response.status != 200:
                raise DrillError(f"the emulator: {method} {path}: {response.status} {text}")
        answer = json.loads(text)
        if not isinstance(answer, dict):
            raise DrillError(f"the emulator: {method} {path}: not a JSON object")
        return answer
