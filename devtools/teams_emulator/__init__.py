"""A Teams emulator: the Teams channel and the Bot Framework connector on loopback.

It lets the bridge's real token validation and real connector REST calls run in
tests and in the local stack. It is a development tool, never shipped.

Starting it
-----------
In tests::

    async with TeamsEmulator(app_id, app_password, tenant_id,
                             bot_endpoint="http://127.0.0.1:8080/api/messages") as emu:
        alice = emu.add_user("Alice Ops")
        channel = emu.add_channel("Operations", "Incidents")
        delivery = await emu.post_message(channel, alice, "disk full on db-1", mention_bot=True)
        assert delivery.status == 200

Standalone: ``python -m devtools.teams_emulator --app-id ... --app-password ...
--tenant ... --bot-endpoint URL [--port N]`` prints its URLs and serves a web page at
``/`` where a person posts as a Teams user and watches the bot's messages.

Constructor: ``TeamsEmulator(app_id, app_password, tenant_id, *, bot_endpoint=None,
bot_name="Incident Bridge", clock=None, port=0, seed=None, keys=None,
rate_limits=None, delivery_timeout_s=15.0, service_path="/amer/",
workload_identity_subject="system:serviceaccount:incident-bridge:incident-bridge")``.
``start()`` binds 127.0.0.1 (a free port unless ``port``); ``stop()`` releases held
responses, closes its client session and the server. An emulator starts once.
``keys=EmulatorKeys.generate(now)`` shared between emulators saves key generation.
``clock`` (``now()`` + ``monotonic()``, e.g. ``ManualClock``) dates tokens, activity
ids and timestamps, and drives the rate limiter.

Pointing the bot at it (after start)
------------------------------------
- ``emu.openid_metadata_url``: ``{base}/v1/.well-known/openidconfiguration`` (its
  ``jwks_uri`` is ``emu.jwks_url``: ``{base}/v1/.well-known/keys``, keys with ``kid``,
  ``kty``, ``use: sig``, ``n``, ``e``, ``x5t``, ``x5c`` and ``endorsements``; the
  signing key is endorsed ``["msteams"]``, a second one only ``["webchat"]``).
- ``emu.issuer``: ``https://api.botframework.com`` (unchanged from Bot Framework).
- ``emu.token_authority``: ``{base}``; tokens from ``{authority}/{tenant}/oauth2/v2.0/token``
  (``emu.token_endpoint``; ``tenant`` is the bot's tenant or ``botframework.com``).
- ``emu.service_url``: ``{base}/amer/``, the ``serviceUrl`` of activities (its host is
  ``127.0.0.1:PORT``: allow-list exactly that). ``emu.set_service_url(conversation, url)``
  makes one conversation's activities carry another serviceUrl.

Channel tokens (to the bot): RS256, header ``kid`` + ``x5t``; claims ``iss``
(Bot Framework), ``aud`` (the app id), ``serviceurl`` (the activity's serviceUrl),
``nbf``, ``iat``, ``exp`` (1 h). ``emu.mint_token(...)`` overrides any of it
(``algorithm=Algorithm.NONE|HS256``, ``key=``, ``kid=``, ``issuer=``, ``audience=``,
``issued_at=``/``not_before=``/``expires_at=``, ``extra_claims=``, ``omit_claims=``,
``omit_kid=``); ``emu.forged_tokens(service_url)`` returns every bad token by name.
``emu.rotate_channel_key()`` publishes a new signing key.

Access tokens (from the bot): ``POST {authority}/{tenant}/oauth2/v2.0/token`` with
``grant_type=client_credentials``, ``client_id``, ``client_secret`` (or HTTP Basic, or
``client_assertion`` of type jwt-bearer carrying ``emu.mint_workload_token()``) and
``scope=https://api.botframework.com/.default`` answers ``{"token_type": "Bearer",
"expires_in": 3600, "ext_expires_in": 3600, "access_token": ...}``, a JWT with ``aud``
``https://api.botframework.com``, ``iss`` ``https://sts.windows.net/{tid}/``, ``appid``
and ``azp`` = the app id, ``tid``, ``ver`` 1.0. Errors are Entra ID's
(``invalid_client``/401 for a wrong secret). Every connector call must carry such a
token (5 minutes of clock skew allowed), else 401; each call records the verdict.

The connector (under the service URL, ids raw or percent-encoded)
-----------------------------------------------------------------
``POST v3/conversations`` (a channel thread: ``channelData.channel.id`` + ``activity``
-> 201 ``{"id": "19:...@thread.tacv2;messageid=<id>", "activityId": "<id>"}``; a
personal chat: one member -> 201 ``{"id": "a:..."}``, the same id every time; group
chats cannot be created: 400), ``POST .../{conversationId}/activities`` (201
``{"id"}``; to a channel: a new post; to a thread id: a reply in it),
``POST .../activities/{activityId}`` (reply; in a channel it goes into that
activity's thread), ``PUT`` (update, 200), ``DELETE`` (200) of the bot's own
messages, ``PUT|DELETE .../activities/{id}/reactions/{type}``, ``GET .../members``,
``.../members/{id}`` (Teams id or AAD object id), ``.../pagedmembers``,
``GET v3/teams/{teamId}``, ``v3/teams/{teamId}/conversations``,
``GET v3/attachments/{id}`` and ``.../views/original`` (inline images, token needed).
Bodies over 100 KB: 413 ``MessageSizeTooBig``; a conversation the bot is not in
(``emu.set_bot_installed(c, installed=False)``, ``uninstall_bot``): 403
``BotNotInConversationRoster``; unknown ones: 404; other routes under ``v3/``: 404,
recorded as ``Operation.UNKNOWN_CONNECTOR``.

Microsoft Graph (at ``emu.graph_url``; see ``graph``)
----------------------------------------------------
``GET /v1.0/teams/{aadGroupId}/members``: conversationMember objects (``id``, ``roles``
``["owner"]`` or ``[]``, ``displayName``, ``userId``, ``email``, ``tenantId``...), paged
with ``$top`` and ``@odata.nextLink``, filtered by ``$filter`` on the user id, on
``roles`` or on the name. It takes only an app-only Graph token of the bot: the token
endpoint issues one for ``scope=https://graph.microsoft.com/.default`` (``aud``
``https://graph.microsoft.com``, ``roles`` = ``emu.graph_permissions``, by default
``["TeamMember.Read.All"]``; set it to ``[]`` for an app without admin consent: 403);
any other token is 401 ``InvalidAuthenticationToken``. ``emu.mint_graph_token()``.
Teams get an ``aad_group_id`` (``emu.team_of(channel).aad_group_id``) and owners:
``add_channel(team, channel, owners=[...])``, ``set_team_owner(team_or_channel, user,
owner=True)``, ``team_owners(...)``. Calls are in ``emu.graph_calls``; faults apply.

Rate limits (``RateLimitPolicy``), per conversation and kind of operation (``Bucket``):
sends (send, reply, update, delete, reactions) 7/1 s, 8/2 s, 60/30 s, 1800/h; creates
the same, counted apart; reads (members, team) 14/1 s, 16/2 s, 120/30 s, 3600/h; and
per tenant 50/s of everything. They count accepted calls; a refused call gets 429 with
``Retry-After`` (exactly long enough, whole seconds) and is in ``emu.violations``. A
channel's threads share the channel's budget. ``RateLimitPolicy.off()`` disables them.

Faults: ``emu.faults.inject(method=, path=regex, status= | timeout=True | delay_s=,
times=1, committed=False, retry_after_s=, hold_s=60)``; see ``faults``. Also over
HTTP: ``POST /_emulator/faults`` with the same fields as JSON.

The channel side (to the bot)
-----------------------------
``post_message(conversation, user, text, *, thread_root=, mentions=, mention_bot=,
html=, text_format="plain", images=[InlineImage], files=[FileUpload],
send_reply_to_id=True, service_url=)``, ``edit_message``, ``delete_message``,
``undelete_message``, ``react(message, user, "like", removed=False)``,
``add_members``/``remove_members`` (the bot too), ``install_bot``/``uninstall_bot``,
``team_event(channel, "channelCreated")``,
``deliver(activity, authorization=, unsigned=, endpoint=, timeout_s=)``,
``redeliver(delivery)`` (the same activity again, same id, freshly signed).
Each returns a ``Delivery`` (``.status``, ``.activity``, ``.outcome``). A channel
post's ``conversation.id`` is ``<channel>;messageid=<root>`` (a new post is its own
root) and a reply carries ``replyToId`` = the root unless ``send_reply_to_id=False``.
Edits and deletes carry the edited message's id as the activity id. Activities in a
channel carry ``channelData.team`` with ``id`` and ``aadGroupId`` (and ``name`` on team
events).

Records: ``emu.calls`` / ``connector_calls`` / ``token_calls`` (``CallRecord``: method,
path, operation, auth verdict, JSON body, status, fault, time), ``emu.deliveries``,
``emu.violations``, ``await emu.wait_for_calls(n, where=...)``,
``emu.peak_calls(window_s=1.0, conversation=..., bucket=Bucket.SEND)``; the world:
``emu.messages(conversation_or_thread)``, ``emu.message(id)``, ``emu.members(...)``.

Simplified on purpose: one bot; threads are one level deep as in Teams channels;
the "all bots in a conversation" limit is not modelled; a personal chat exists for
every user (the app counts as installed for them); adaptive cards and other
attachments of the bot are stored as sent, not rendered or validated; the web page
shows message text, never HTML.
"""

from __future__ import annotations

from devtools.teams_emulator.channel import FileUpload, InlineImage
from devtools.teams_emulator.clock import Clock, ManualClock, SystemClock
from devtools.teams_emulator.faults import Fault, FaultKind, FaultPlan
from devtools.teams_emulator.keys import EmulatorKeys, SigningKey
from devtools.teams_emulator.model import (
    AadObjectID,
    AccountID,
    ActivityID,
    Bot,
    Conversation,
    ConversationID,
    ConversationKind,
    Message,
    Reaction,
    Team,
    TenantID,
    User,
)
from devtools.teams_emulator.ratelimit import Bucket, RateLimitPolicy, Violation, Window
from devtools.teams_emulator.records import CallRecord, Delivery, DeliveryOutcome, Operation
from devtools.teams_emulator.server import TeamsEmulator
from devtools.teams_emulator.tokens import Algorithm, AuthCheck

__all__ = [
    "AadObjectID",
    "AccountID",
    "ActivityID",
    "Algorithm",
    "AuthCheck",
    "Bot",
    "Bucket",
    "CallRecord",
    "Clock",
    "Conversation",
    "ConversationID",
    "ConversationKind",
    "Delivery",
    "DeliveryOutcome",
    "EmulatorKeys",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FileUpload",
    "InlineImage",
    "ManualClock",
    "Message",
    "Operation",
    "RateLimitPolicy",
    "Reaction",
    "SigningKey",
    "SystemClock",
    "Team",
    "TeamsEmulator",
    "TenantID",
    "User",
    "Violation",
    "Window",
]
