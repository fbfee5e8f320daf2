"""A fake ChatAdapter that records what the core asks of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.model import Platform, RemoteMessageID, RemoteRef, Sender
from bridge.ports import InboundSink, OutboundMessage


@dataclass
class FakeAdapter:
    platform: Platform
    own_user_prefix: str = "@teams_"
    ready: bool = True
    sink: InboundSink | None = None
    sent: list[tuple[OutboundMessage, str]] = field(default_factory=list)

    async def start(self, sink: InboundSink) -> None:
        self.sink = sink

    async def stop(self) -> None:
        self.sink = None

    def is_own(self, sender: Sender) -> bool:
        return sender.platform is self.platform and sender.user_id.startswith(self.own_user_prefix)

    async def send(self, message: OutboundMessage, *, idempotency_key: str) -> RemoteRef:
        self.sent.append((message, idempotency_key))
        return RemoteRef(room=message.target, message_id=RemoteMessageID(f"sent-{len(self.sent)}"))
