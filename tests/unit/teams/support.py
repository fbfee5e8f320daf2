"""Signing keys, tokens and realistic Teams activities for the Teams adapter's tests."""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import PyJWK
from jwt.algorithms import RSAAlgorithm

from adapters.teams.keys import SigningKey
from bridge.config.teams import TeamsSettings

APP_ID = "00000000-0000-4000-8000-0000000000b0"
TENANT = "11111111-1111-4111-8111-111111111111"
OTHER_TENANT = "99999999-9999-4999-8999-999999999999"
SERVICE_URL = "https://smba.trafficmanager.net/emea/"
ISSUER = "https://api.botframework.com"
BOT_ID = f"28:{APP_ID}"
CHANNEL = "19:4a1b2c3d4e5f60718293a4b5c6d7e8f9@thread.tacv2"
TEAM = "19:0f1e2d3c4b5a69788796a5b4c3d2e1f0@thread.tacv2"
ROOT_ID = "1730462400123"
THREAD = f"{CHANNEL};messageid={ROOT_ID}"
GROUP_CHAT = "19:8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a39@thread.v2"
PERSONAL_CHAT = "a:1Xq9zQ2mV7bT0c4wR8sYkLpN3dF6gH1jK5aE0uI9oP2"
ALICE_ID = "29:1AliceAccountIdLooksLikeThis0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
ALICE_AAD = "6f1b3c5d-7e9f-4a1b-8c2d-3e4f5a6b7c8d"
BOB_ID = "29:1BobAccountIdLooksLikeThis0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH"
BOB_AAD = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"


def teams_settings(**overrides: Any) -> TeamsSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "app_id": APP_ID,
        "tenant_id": TENANT,
        "auth": {"type": "client_secret", "client_secret": "s3cret-value"},
    }
    values.update(overrides)
    return TeamsSettings.model_validate(values)


@dataclass
class KeyPair:
    """An RSA signing key as a channel publishes it, and a signer of tokens with it."""

    key_id: str
    endorsements: list[str] | None = field(default_factory=lambda: ["msteams"])
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwk(self) -> dict[str, Any]:
        public = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        entry: dict[str, Any] = {**public, "kid": self.key_id, "use": "sig", "alg": "RS256"}
        if self.endorsements is not None:
            entry["endorsements"] = list(self.endorsements)
        return entry

    def signing_key(self) -> SigningKey:
        endorsements = frozenset(self.endorsements) if self.endorsements is not None else None
        return SigningKey(
            key_id=self.key_id, key=PyJWK(self.jwk(), algorithm="RS256"), endorsements=endorsements
        )

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign_unchecked(self, claims: Mapping[str, Any]) -> str:
        """RS256 over any claims, also ones PyJWT refuses to encode (a list as ``iss``)."""
        header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": self.key_id}).encode())
        signing_input = f"{header}.{_b64url(json.dumps(dict(claims)).encode())}"
        signature = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input.encode(), self.private)
        return f"{signing_input}.{_b64url(signature)}"

    def sign(self, claims: Mapping[str, Any], *, key_id: str | None = None) -> str:
        return jwt.encode(
            dict(claims),
            self.private,
            algorithm="RS256",
            headers={"kid": key_id or self.key_id},
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims like the Bot Framework channel's, valid for ten minutes from now."""
    now = int(time.time())
    values: dict[str, Any] = {
        "serviceurl": SERVICE_URL,
        "nbf": now - 60,
        "exp": now + 600,
        "iss": ISSUER,
        "aud": APP_ID,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


class StaticKeys:
    """A ``KeySource`` with fixed keys that counts lookups; ``rotate`` replaces the keys."""

    def __init__(self, *pairs: KeyPair) -> None:
        self._keys = {p.key_id: p.signing_key() for p in pairs}
        self.lookups: list[str] = []
        self.generation = 1

    def rotate(self, *pairs: KeyPair) -> None:
        """The channel publishes a new key set (what ``OpenIdKeySource`` does on a fetch)."""
        self._keys = {p.key_id: p.signing_key() for p in pairs}
        self.generation += 1

    async def signing_key(self, key_id: str) -> SigningKey | None:
        self.lookups.append(key_id)
        return self._keys.get(key_id)


# -- activities, shaped like what Teams posts ---------------------------------------


def _channel_data(conversation: str) -> dict[str, Any]:
    if conversation.startswith(CHANNEL):
        return {
            "teamsChannelId": CHANNEL,
            "teamsTeamId": TEAM,
            "channel": {"id": CHANNEL},
            "team": {"id": TEAM},
            "tenant": {"id": TENANT},
        }
    return {"tenant": {"id": TENANT}}


def _conversation(conversation: str) -> dict[str, Any]:
    if conversation.startswith(CHANNEL):
        kind, is_group = "channel", True
    elif conversation.startswith("a:"):
        kind, is_group = "personal", False
    else:
        kind, is_group = "groupChat", True
    result: dict[str, Any] = {"conversationType": kind, "tenantId": TENANT, "id": conversation}
    if is_group:
        result["isGroup"] = True
    return result


def base_activity(
    activity_type: str,
    *,
    activity_id: str | None,
    conversation: str = THREAD,
    sender_id: str = ALICE_ID,
    sender_aad: str | None = ALICE_AAD,
    sender_name: str = "Alice Example",
    timestamp: str = "2026-11-01T12:00:00.1234567Z",
) -> dict[str, Any]:
    sender: dict[str, Any] = {"id": sender_id, "name": sender_name}
    if sender_aad is not None:
        sender["aadObjectId"] = sender_aad
    activity: dict[str, Any] = {
        "type": activity_type,
        "timestamp": timestamp,
        "localTimestamp": "2026-11-01T05:00:00.1234567-07:00",
        "channelId": "msteams",
        "serviceUrl": SERVICE_URL,
        "from": sender,
        "conversation": _conversation(conversation),
        "recipient": {"id": BOT_ID, "name": "Incident Bridge"},
        "entities": [
            {
                "locale": "en-US",
                "country": "US",
                "platform": "Web",
                "timezone": "America/Los_Angeles",
                "type": "clientInfo",
            }
        ],
        "channelData": _channel_data(conversation),
        "locale": "en-US",
        "localTimezone": "America/Los_Angeles",
    }
    if activity_id is not None:
        activity["id"] = activity_id
    return activity


def message(
    html: str = "disk full on <b>db-3</b>",
    *,
    activity_id: str = ROOT_ID,
    conversation: str = THREAD,
    text: str | None = None,
    mention_bot: bool = True,
    mentions: tuple[tuple[str, str, str | None], ...] = (),
    attachments: tuple[dict[str, Any], ...] = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """A message as Teams posts it: plain ``text`` plus the ``text/html`` attachment."""
    activity = base_activity(
        "message", activity_id=activity_id, conversation=conversation, **kwargs
    )
    prefix_html = _mention_span(0, "Incident Bridge") if mention_bot else ""
    prefix_text = "<at>Incident Bridge</at> " if mention_bot else ""
    entities = activity["entities"]
    if mention_bot:
        entities.append(
            {
                "mentioned": {"id": BOT_ID, "name": "Incident Bridge"},
                "text": "<at>Incident Bridge</at>",
                "type": "mention",
            }
        )
    for index, (user_id, name, aad) in enumerate(mentions, start=1):
        mentioned: dict[str, Any] = {"id": user_id, "name": name}
        if aad is not None:
            mentioned["aadObjectId"] = aad
        entities.append({"mentioned": mentioned, "text": f"<at>{name}</at>", "type": "mention"})
        prefix_html += _mention_span(index, name)
        prefix_text += f"<at>{name}</at> "
    activity["text"] = text if text is not None else prefix_text + "disk full on db-3"
    activity["textFormat"] = "plain"
    activity["attachments"] = [
        {"contentType": "text/html", "content": f"<div><div>{prefix_html}{html}</div></div>"},
        *attachments,
    ]
    return activity


def _mention_span(index: int, name: str) -> str:
    """A mention in the HTML Teams attaches (``text`` has ``<at>Name</at>`` instead)."""
    return (
        f'<span itemtype="http://schema.skype.com/Mention" itemscope="" itemid="{index}">'
        f"{name}</span>&nbsp;"
    )


def edit(
    html: str = "disk full on <b>db-4</b>",
    *,
    activity_id: str = ROOT_ID,
    event_type: str = "editMessage",
    timestamp: str = "2026-11-01T12:05:00.5000000Z",
    **kwargs: Any,
) -> dict[str, Any]:
    activity = message(html, activity_id=activity_id, timestamp=timestamp, **kwargs)
    activity["type"] = "messageUpdate"
    activity["channelData"]["eventType"] = event_type
    return activity


def delete(
    *, activity_id: str = ROOT_ID, timestamp: str = "2026-11-01T12:10:00.000Z", **kwargs: Any
) -> dict[str, Any]:
    activity = base_activity(
        "messageDelete", activity_id=activity_id, timestamp=timestamp, **kwargs
    )
    activity["channelData"]["eventType"] = "softDeleteMessage"
    return activity


def reaction(
    *,
    added: tuple[str, ...] = ("like",),
    removed: tuple[str, ...] = (),
    target: str = ROOT_ID,
    activity_id: str | None = "f:3e9a0c52-6b1d-4c8e-9f7a-2d4b6c8e0a1f",
    timestamp: str = "2026-11-01T12:01:00.000Z",
    **kwargs: Any,
) -> dict[str, Any]:
    activity = base_activity(
        "messageReaction", activity_id=activity_id, timestamp=timestamp, **kwargs
    )
    activity["replyToId"] = target
    if added:
        activity["reactionsAdded"] = [{"type": t} for t in added]
    if removed:
        activity["reactionsRemoved"] = [{"type": t} for t in removed]
    return activity


def conversation_update(
    *,
    added: tuple[dict[str, Any], ...] = (),
    removed: tuple[dict[str, Any], ...] = (),
    event_type: str = "teamMemberAdded",
    conversation: str = CHANNEL,
    activity_id: str | None = "f:7c2e9d41-0b5a-4f36-8e1d-9a3c5b7d9e0f",
    **kwargs: Any,
) -> dict[str, Any]:
    activity = base_activity(
        "conversationUpdate", activity_id=activity_id, conversation=conversation, **kwargs
    )
    del activity["entities"]
    if added:
        activity["membersAdded"] = list(added)
    if removed:
        activity["membersRemoved"] = list(removed)
    activity["channelData"]["eventType"] = event_type
    return activity


def installation_update(
    *,
    action: str = "add",
    conversation: str = CHANNEL,
    activity_id: str | None = "f:0d4c1b7a-2e5f-4d9c-b8a3-6f1e0d2c4b5a",
    **kwargs: Any,
) -> dict[str, Any]:
    activity = base_activity(
        "installationUpdate", activity_id=activity_id, conversation=conversation, **kwargs
    )
    del activity["entities"]
    activity["action"] = action
    return activity


def variant(activity: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy with top-level fields replaced (``from_`` stands for ``from``)."""
    result = copy.deepcopy(dict(activity))
    for key, value in changes.items():
        result["from" if key == "from_" else key] = value
    return result
