"""``TeamsEmulator``: the composition root of the emulator and its public face."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from devtools.teams_emulator import page
from devtools.teams_emulator.channel import ChannelSide, FileUpload, InlineImage
from devtools.teams_emulator.clock import Clock, SystemClock
from devtools.teams_emulator.connector import OPERATION_BUCKETS, ConnectorApi
from devtools.teams_emulator.control import ControlApi
from devtools.teams_emulator.directory import GENERAL_CHANNEL, Directory
from devtools.teams_emulator.faults import FaultPlan
from devtools.teams_emulator.files import FileHost
from devtools.teams_emulator.graph import GraphApi
from devtools.teams_emulator.identity import Identity, entra_issuer
from devtools.teams_emulator.ids import IdFactory
from devtools.teams_emulator.keys import EmulatorKeys, KeySet, PublishedKey, SigningKey
from devtools.teams_emulator.model import (
    AccountID,
    AppID,
    Bot,
    Conversation,
    JSONObject,
    Message,
    Team,
    TenantID,
    User,
    split_thread,
)
from devtools.teams_emulator.ratelimit import Bucket, RateLimiter, RateLimitPolicy, Violation
from devtools.teams_emulator.records import CallLog, CallRecord, Delivery, Operation
from devtools.teams_emulator.respond import Holder
from devtools.teams_emulator.tokens import (
    CHANNEL_ISSUER,
    TOKEN_LIFETIME,
    Algorithm,
    AuthCheck,
    check_bearer,
    check_graph_bearer,
    encode,
    unix,
)

LOOPBACK: Final = "127.0.0.1"
DEFAULT_SERVICE_PATH: Final = "/amer/"
DEFAULT_WORKLOAD_SUBJECT: Final = "system:serviceaccount:incident-bridge:incident-bridge"
CLIENT_MAX_BYTES: Final = 4 * 1024 * 1024
"""Larger than the connector's message limit, so the emulator itself answers 413."""
SHUTDOWN_TIMEOUT_S: Final = 5.0


class TeamsEmulator:
    """Teams and the Bot Framework connector on loopback; see the package documentation."""

    def __init__(
        self,
        app_id: str,
        app_password: str,
        tenant_id: str,
        *,
        bot_endpoint: str | None = None,
        bot_name: str = "Incident Bridge",
        clock: Clock | None = None,
        port: int = 0,
        seed: str | None = None,
        keys: EmulatorKeys | None = None,
        rate_limits: RateLimitPolicy | None = None,
        delivery_timeout_s: float = 15.0,
        service_path: str = DEFAULT_SERVICE_PATH,
        workload_identity_subject: str = DEFAULT_WORKLOAD_SUBJECT,
    ) -> None:
        if not service_path.startswith("/") or not service_path.endswith("/"):
            raise ValueError("service_path starts and ends with '/'")
        self.app_id = AppID(app_id)
        self.tenant_id = TenantID(tenant_id)
        self.clock: Clock = clock or SystemClock()
        self._port = port
        self._service_path = service_path
        self._base_url: str | None = None
        self._runner: web.AppRunner | None = None
        self._stopped = False
        self.keys = keys or EmulatorKeys.generate(self.clock.now())
        self.channel_keys = KeySet(
            [
                PublishedKey(self.keys.channel, ("msteams",)),
                PublishedKey(self.keys.webchat, ("webchat",)),
            ]
        )
        self.entra_keys = KeySet([PublishedKey(self.keys.entra, None)])
        self._workload_keys = KeySet([PublishedKey(self.keys.workload, None)])
        self._ids = IdFactory(seed or secrets.token_hex(16), self.clock)
        self.bot = Bot(account_id=AccountID(f"28:{app_id}"), app_id=self.app_id, name=bot_name)
        self.directory = Directory(ids=self._ids, tenant_id=self.tenant_id, bot=self.bot)
        self.faults = FaultPlan()
        self.limiter = RateLimiter(rate_limits or RateLimitPolicy(), self.clock)
        self._calls = CallLog(self.clock)
        self._holder = Holder()
        self.identity = Identity(
            app_id=app_id,
            app_password=app_password,
            tenant_id=tenant_id,
            channel_keys=self.channel_keys,
            entra_keys=self.entra_keys,
            workload_keys=self._workload_keys,
            workload_subject=workload_identity_subject,
            clock=self.clock,
            ids=self._ids,
            calls=self._calls,
            faults=self.faults,
            holder=self._holder,
            base_url=lambda: self.base_url,
        )
        self.channel = ChannelSide(
            directory=self.directory,
            ids=self._ids,
            clock=self.clock,
            mint=lambda service_url: self.mint_token(service_url=service_url),
            default_service_url=lambda: self.service_url,
            base_url=lambda: self.base_url,
            bot_endpoint=bot_endpoint,
            delivery_timeout_s=delivery_timeout_s,
        )

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Bind a loopback port (``port``, or a free one) and start serving."""
        if self._runner is not None or self._stopped:
            raise RuntimeError("an emulator starts once")
        connector = ConnectorApi(
            directory=self.directory,
            ids=self._ids,
            clock=self.clock,
            calls=self._calls,
            faults=self.faults,
            limiter=self.limiter,
            holder=self._holder,
            check_auth=self._check_auth,
        )
        control = ControlApi(
            directory=self.directory,
            channel=self.channel,
            calls=self._calls,
            faults=self.faults,
            limiter=self.limiter,
        )
        app = web.Application(client_max_size=CLIENT_MAX_BYTES)
        app.add_routes(page.routes())
        app.add_routes(control.routes())
        app.add_routes(FileHost(directory=self.directory, calls=self._calls).routes())
        app.add_routes(self.identity.routes())
        app.add_routes(connector.routes())
        graph = GraphApi(
            directory=self.directory,
            ids=self._ids,
            clock=self.clock,
            calls=self._calls,
            faults=self.faults,
            holder=self._holder,
            check_auth=self._check_graph_auth,
            base_url=lambda: self.base_url,
        )
        app.add_routes(graph.routes())
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(runner, LOOPBACK, self._port)
            await site.start()
            bound = runner.addresses[0]
            self._base_url = f"http://{LOOPBACK}:{bound[1]}"
            await self.channel.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Release held responses, close the HTTP client and the server (idempotent)."""
        self._stopped = True
        self._holder.release_all()
        await self.channel.stop()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- where things are ------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (once started)."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not started")
        return self._base_url

    @property
    def service_url(self) -> str:
        """The default ``serviceUrl`` of activities: the connector's base, ending in ``/``."""
        return self.base_url + self._service_path

    @property
    def openid_metadata_url(self) -> str:
        return f"{self.base_url}/v1/.well-known/openidconfiguration"

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/v1/.well-known/keys"

    @property
    def issuer(self) -> str:
        """``iss`` of the channel's tokens (Bot Framework's, unchanged)."""
        return CHANNEL_ISSUER

    @property
    def token_authority(self) -> str:
        """The authority: ``{token_authority}/{tenant}/oauth2/v2.0/token`` issues tokens."""
        return self.base_url

    @property
    def token_endpoint(self) -> str:
        return f"{self.token_authority}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def graph_url(self) -> str:
        """Microsoft Graph's base (``{base}``): ``{graph_url}/v1.0/teams/{id}/members``."""
        return self.base_url

    @property
    def page_url(self) -> str:
        return self.base_url + "/"

    @property
    def bot_endpoint(self) -> str | None:
        return self.channel.bot_endpoint

    @bot_endpoint.setter
    def bot_endpoint(self, url: str | None) -> None:
        self.channel.bot_endpoint = url

    # -- the directory -------------------------------------------------------------

    @property
    def users(self) -> tuple[User, ...]:
        return self.directory.users

    def add_user(
        self, name: str, *, email: str | None = None, tenant_id: str | None = None
    ) -> User:
        return self.directory.add_user(name, email=email, tenant_id=tenant_id)

    def user(self, ref: User | str) -> User:
        return self.directory.user(ref)

    def add_channel(
        self,
        team_name: str,
        channel_name: str = GENERAL_CHANNEL,
        *,
        members: Sequence[User] | None = None,
        owners: Sequence[User] = (),
    ) -> Conversation:
        """A channel (and its team, with ``members``, else every user); ``owners`` own the team."""
        return self.directory.add_channel(team_name, channel_name, members=members, owners=owners)

    def set_team_owner(
        self, team: Team | Conversation | str, user: User | str, *, owner: bool = True
    ) -> None:
        """Make ``user`` an owner of the team (a team, one of its channels, its id, name or AAD
        group id), adding them to it; ``owner=False`` makes them a plain member again."""
        self.directory.set_team_owner(team, user, owner=owner)

    def team_owners(self, team: Team | Conversation | str) -> tuple[User, ...]:
        return self.directory.owners(team)

    def team_of(self, ref: Team | Conversation | str) -> Team:
        """A team by object, channel, id, name or AAD group id (``team.aad_group_id``)."""
        return self.directory.team_of(ref)

    def add_chat(
        self, members: Sequence[User], *, personal: bool = False, topic: str | None = None
    ) -> Conversation:
        return self.directory.add_chat(members, personal=personal, topic=topic)

    def conversation(self, ref: Conversation | str) -> Conversation:
        """A conversation by id (a channel thread id finds its channel)."""
        return self.directory.conversation(ref)

    @property
    def conversations(self) -> tuple[Conversation, ...]:
        return self.directory.conversations

    def messages(self, ref: Conversation | str) -> tuple[Message, ...]:
        """A conversation's messages in order; a thread id gives that thread only."""
        return self.directory.messages(ref)

    def message(self, activity_id: str) -> Message | None:
        return self.directory.message(activity_id)

    def members(self, ref: Conversation | str) -> tuple[User, ...]:
        return self.directory.members(ref)

    def set_service_url(self, ref: Conversation | str, service_url: str | None) -> Conversation:
        """Activities of this conversation carry ``service_url`` (None: the emulator's)."""
        return self.directory.set_service_url(ref, service_url)

    def bot_installed(self, ref: Conversation | str) -> bool:
        return self.directory.bot_installed(ref)

    def set_bot_installed(self, ref: Conversation | str, *, installed: bool) -> None:
        """Add or remove the bot silently (no activity); without it the connector answers 403."""
        self.directory.set_bot_installed(ref, installed=installed)

    # -- the channel side ------------------------------------------------------------

    async def post_message(
        self,
        conversation: Conversation | str,
        user: User | str,
        text: str = "",
        *,
        thread_root: str | None = None,
        mentions: Sequence[User | Bot | str] = (),
        mention_bot: bool = False,
        html: str | None = None,
        text_format: str = "plain",
        images: Sequence[InlineImage] = (),
        files: Sequence[FileUpload] = (),
        send_reply_to_id: bool = True,
        service_url: str | None = None,
    ) -> Delivery:
        return await self.channel.post_message(
            conversation,
            user,
            text,
            thread_root=thread_root,
            mentions=mentions,
            mention_bot=mention_bot,
            html=html,
            text_format=text_format,
            images=images,
            files=files,
            send_reply_to_id=send_reply_to_id,
            service_url=service_url,
        )

    async def edit_message(
        self, message: Message | str, text: str, *, html: str | None = None
    ) -> Delivery:
        return await self.channel.edit_message(message, text, html=html)

    async def delete_message(self, message: Message | str) -> Delivery:
        return await self.channel.delete_message(message)

    async def undelete_message(self, message: Message | str) -> Delivery:
        return await self.channel.undelete_message(message)

    async def react(
        self,
        message: Message | str,
        user: User | str,
        reaction: str = "like",
        *,
        removed: bool = False,
    ) -> Delivery:
        return await self.channel.react(message, user, reaction, removed=removed)

    async def add_members(
        self,
        conversation: Conversation | str,
        accounts: Sequence[User | Bot | str],
        *,
        by: User | str | None = None,
    ) -> Delivery:
        return await self.channel.update_members(conversation, accounts, added=True, by=by)

    async def remove_members(
        self,
        conversation: Conversation | str,
        accounts: Sequence[User | Bot | str],
        *,
        by: User | str | None = None,
    ) -> Delivery:
        return await self.channel.update_members(conversation, accounts, added=False, by=by)

    async def team_event(
        self, channel: Conversation | str, event_type: str, *, by: User | str | None = None
    ) -> Delivery:
        """``conversationUpdate`` with ``channelData.eventType`` (``channelCreated``...)."""
        return await self.channel.team_event(channel, event_type, by=by)

    async def install_bot(
        self, conversation: Conversation | str, *, by: User | str | None = None
    ) -> tuple[Delivery, Delivery]:
        """The app is added: ``installationUpdate`` (add), then ``conversationUpdate``."""
        installed = await self.channel.installation_update(conversation, action="add", by=by)
        added = await self.channel.update_members(conversation, [self.bot], added=True, by=by)
        return installed, added

    async def uninstall_bot(
        self, conversation: Conversation | str, *, by: User | str | None = None
    ) -> tuple[Delivery, Delivery]:
        """The app is removed: ``conversationUpdate``, then ``installationUpdate`` (remove)."""
        removed = await self.channel.update_members(conversation, [self.bot], added=False, by=by)
        uninstalled = await self.channel.installation_update(conversation, action="remove", by=by)
        return removed, uninstalled

    async def deliver(
        self,
        activity: Mapping[str, Any],
        *,
        authorization: str | None = None,
        unsigned: bool = False,
        endpoint: str | None = None,
        timeout_s: float | None = None,
    ) -> Delivery:
        return await self.channel.deliver(
            activity,
            authorization=authorization,
            unsigned=unsigned,
            endpoint=endpoint,
            timeout_s=timeout_s,
        )

    async def redeliver(
        self, sent: Delivery | Mapping[str, Any], *, authorization: str | None = None
    ) -> Delivery:
        return await self.channel.redeliver(sent, authorization=authorization)

    @property
    def deliveries(self) -> tuple[Delivery, ...]:
        return tuple(self.channel.deliveries)

    # -- tokens ---------------------------------------------------------------------

    def mint_token(
        self,
        *,
        service_url: str | None = None,
        audience: str | None = None,
        issuer: str = CHANNEL_ISSUER,
        algorithm: Algorithm = Algorithm.RS256,
        key: SigningKey | None = None,
        kid: str | None = None,
        issued_at: datetime | None = None,
        not_before: datetime | None = None,
        expires_at: datetime | None = None,
        extra_claims: Mapping[str, Any] | None = None,
        omit_claims: Sequence[str] = (),
        omit_kid: bool = False,
    ) -> str:
        """A channel token as Teams signs it, with any part overridden.

        Defaults: RS256 with the published ``msteams`` key (``kid`` and ``x5t`` in the
        header), ``iss`` Bot Framework, ``aud`` the app id, ``serviceurl`` the emulator's
        service URL, ``iat``/``nbf`` now, ``exp`` one hour later (all from the clock).
        """
        signing_key = key or self.channel_keys.current
        issued = issued_at or self.clock.now()
        claims: JSONObject = {
            "serviceurl": service_url if service_url is not None else self.service_url,
            "nbf": unix(not_before or issued),
            "exp": unix(expires_at or issued + TOKEN_LIFETIME),
            "iat": unix(issued),
            "iss": issuer,
            "aud": audience if audience is not None else self.app_id,
        }
        claims.update(extra_claims or {})
        for name in omit_claims:
            claims.pop(name, None)
        header: JSONObject = (
            {} if omit_kid else {"kid": kid or signing_key.kid, "x5t": signing_key.kid}
        )
        return encode(header, claims, algorithm=algorithm, key=signing_key)

    def forged_tokens(self, service_url: str | None = None) -> dict[str, str]:
        """Every kind of bad channel token for an activity whose serviceUrl is ``service_url``.

        Each must be refused by the bot: alg none, HS256 keyed with the public key,
        wrong issuer, wrong audience, expired and not yet valid (beyond a 5-minute skew),
        unknown key id, a key that is not the channel's (Entra's key under the channel
        key's id, and under its own id), a key not endorsed for msteams, a serviceurl
        claim for another service URL, and tokens lacking ``serviceurl`` or ``exp``.
        """
        url = service_url if service_url is not None else self.service_url
        now = self.clock.now()
        return {
            "alg_none": self.mint_token(service_url=url, algorithm=Algorithm.NONE),
            "hs256_public_key": self.mint_token(service_url=url, algorithm=Algorithm.HS256),
            "wrong_issuer": self.mint_token(
                service_url=url, issuer="https://api.botframework.example"
            ),
            "wrong_audience": self.mint_token(
                service_url=url, audience=self._ids.unique("audience")
            ),
            "expired": self.mint_token(
                service_url=url,
                issued_at=now - timedelta(hours=2),
                expires_at=now - timedelta(minutes=10),
            ),
            "not_yet_valid": self.mint_token(
                service_url=url,
                not_before=now + timedelta(minutes=10),
                expires_at=now + timedelta(hours=1),
            ),
            "unknown_kid": self.mint_token(service_url=url, kid="not-a-published-key-id"),
            "foreign_key_published_kid": self.mint_token(
                service_url=url, key=self.keys.entra, kid=self.keys.channel.kid
            ),
            "foreign_key": self.mint_token(service_url=url, key=self.keys.entra),
            "unendorsed_key": self.mint_token(service_url=url, key=self.keys.webchat),
            "service_url_mismatch": self.mint_token(
                service_url="https://smba.trafficmanager.example/amer/"
            ),
            "no_service_url": self.mint_token(service_url=url, omit_claims=("serviceurl",)),
            "no_expiry": self.mint_token(service_url=url, omit_claims=("exp",)),
        }

    def rotate_channel_key(self, *, keep_old: bool = True) -> SigningKey:
        """Publish a new msteams key and sign with it from now on (the old one stays listed
        when ``keep_old``)."""
        old = self.channel_keys.current
        new = SigningKey.generate(subject="login.botframework.com", now=self.clock.now())
        self.channel_keys.publish(new, ("msteams",), current=True)
        if not keep_old:
            self.channel_keys.withdraw(old.kid)
        return new

    def mint_access_token(self) -> str:
        """A valid connector access token of the bot, as the token endpoint issues it."""
        return self.identity.mint_access_token()

    def mint_graph_token(self, *, roles: Sequence[str] | None = None) -> str:
        """A valid app-only Graph token of the bot (``roles``: the granted permissions,
        ``graph_permissions`` unless given)."""
        return self.identity.mint_graph_token(roles=None if roles is None else tuple(roles))

    @property
    def graph_permissions(self) -> tuple[str, ...]:
        """Graph application permissions granted to the bot, in the tokens issued from now."""
        return self.identity.graph_roles

    @graph_permissions.setter
    def graph_permissions(self, roles: Sequence[str]) -> None:
        self.identity.graph_roles = tuple(roles)

    def mint_workload_token(self, *, subject: str | None = None) -> str:
        """A projected service-account token the token endpoint accepts as a client assertion."""
        return self.identity.mint_workload_token(subject=subject)

    def _check_auth(self, authorization: str | None) -> AuthCheck:
        return check_bearer(
            authorization,
            keys=self.entra_keys,
            app_id=self.app_id,
            issuers=self.identity.access_token_issuers,
            now=self.clock.now(),
        )

    def _check_graph_auth(self, authorization: str | None) -> tuple[AuthCheck, tuple[str, ...]]:
        return check_graph_bearer(
            authorization,
            keys=self.entra_keys,
            app_id=self.app_id,
            issuer=entra_issuer(self.tenant_id),
            now=self.clock.now(),
        )

    # -- records -------------------------------------------------------------------

    @property
    def calls(self) -> tuple[CallRecord, ...]:
        """Every call served (connector, token endpoint, metadata, files), in arrival order."""
        return self._calls.records

    @property
    def connector_calls(self) -> tuple[CallRecord, ...]:
        """Calls to the connector REST API (``/v3/...``), whatever their outcome."""
        return tuple(r for r in self._calls.records if r.operation.is_connector)

    @property
    def graph_calls(self) -> tuple[CallRecord, ...]:
        """Calls to Microsoft Graph (``/v1.0/...``), whatever their outcome."""
        return tuple(r for r in self._calls.records if r.operation.is_graph)

    @property
    def token_calls(self) -> tuple[CallRecord, ...]:
        return tuple(r for r in self._calls.records if r.operation is Operation.TOKEN)

    @property
    def violations(self) -> tuple[Violation, ...]:
        return tuple(self.limiter.violations)

    async def wait_for_calls(
        self,
        count: int = 1,
        *,
        where: Callable[[CallRecord], bool] | None = None,
        timeout_s: float = 5.0,
    ) -> tuple[CallRecord, ...]:
        """Wait until ``count`` finished calls match ``where`` (default: connector calls)."""
        match = where or (lambda r: r.operation.is_connector)

        def matching(records: tuple[CallRecord, ...]) -> tuple[CallRecord, ...]:
            return tuple(r for r in records if r.status is not None and match(r))

        records = await self._calls.wait_for(lambda rs: len(matching(rs)) >= count, timeout_s)
        return matching(records)

    def peak_calls(
        self,
        window_s: float = 1.0,
        *,
        conversation: Conversation | str | None = None,
        bucket: Bucket | None = Bucket.SEND,
    ) -> int:
        """The most accepted connector calls within any ``window_s`` (by the clock).

        Counted: calls drawing on ``bucket`` (by default sends, replies, updates,
        deletes and reactions; None counts every connector call), in ``conversation``
        (a channel includes its threads) or in all.
        """
        base = None
        if conversation is not None:
            key = (
                conversation.conversation_id
                if isinstance(conversation, Conversation)
                else conversation
            )
            base, _root = split_thread(key)

        def counted(record: CallRecord) -> bool:
            if not record.accepted:
                return False
            if bucket is not None and OPERATION_BUCKETS.get(record.operation) is not bucket:
                return False
            if base is None:
                return True
            return (
                record.conversation_id is not None
                and split_thread(record.conversation_id)[0] == base
            )

        times = sorted(r.monotonic for r in self.connector_calls if counted(r))
        peak, first = 0, 0
        for last, moment in enumerate(times):
            while times[first] <= moment - window_s:
                first += 1
            peak = max(peak, last - first + 1)
        return peak
