"""The Teams side: a bot on the Bot Framework connector (Microsoft 365 Agents SDK pieces).

``create_adapter`` builds the whole Teams object graph from the settings: one HTTP
session (owned by the adapter, closed when it stops), the channel's signing keys,
the outbound token provider, the conversation references, the sender (with the
reaction line), the messaging endpoint and the media route (``/media/{token}``)
mounted on the daemon's web application, and the downloads of Teams files. With
``teams.team_owners_are_operators``: Microsoft Graph (a second token provider for
``teams.graph_scope``) and the record of each team's AAD group id, for ``privilege``.
"""

from __future__ import annotations

import aiohttp

from adapters.teams.adapter import TeamsAdapter
from adapters.teams.auth import InboundAuthenticator
from adapters.teams.commands import COMMANDS
from adapters.teams.graph import GraphClient, TeamOwners
from adapters.teams.inbound import MessagingEndpoint
from adapters.teams.incident_rooms import TeamsIncidentRooms
from adapters.teams.keys import OpenIdKeySource
from adapters.teams.media import FileLinks, TeamsFiles
from adapters.teams.media_host import MediaHost
from adapters.teams.outbound import TeamsSender
from adapters.teams.pacing import PacingSettings
from adapters.teams.reactions import ReactionDresser, ReactionRecords, TeamsReactions
from adapters.teams.records import StateAmbiguousSends, StateLayouts
from adapters.teams.references import StoredConversationReferences, StoredTeamGroups
from adapters.teams.tokens import token_provider_for
from bridge.errors import ConfigError, ConfigProblem
from bridge.runtime import AdapterContext

__all__ = ["COMMANDS", "TeamsAdapter", "create_adapter"]


def create_adapter(context: AdapterContext) -> TeamsAdapter:
    """Build the Teams adapter (not started) and mount ``POST /api/messages``.

    Call from a running event loop (it creates the adapter's HTTP session).
    """
    settings = context.settings.teams
    if not settings.enabled:
        raise ConfigError([ConfigProblem("teams.enabled", "the Teams adapter needs it true")])
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=settings.request_timeout_s),
        raise_for_status=False,
    )
    try:
        keys = OpenIdKeySource(
            session=session,
            metadata_url=settings.openid_metadata_url,
            clock=context.clock,
            max_age_s=settings.signing_keys_max_age_s,
            min_refresh_s=settings.signing_keys_min_refresh_s,
            timeout_s=settings.request_timeout_s,
        )
        authenticator = InboundAuthenticator(settings=settings, keys=keys, clock=context.clock)
        references = StoredConversationReferences(
            context.state,
            clock=context.clock,
            cache_size=settings.conversation_cache_size,
            service_url_allowed=authenticator.service_url_allowed,
            home_tenant=settings.tenant_id,
        )
        tokens = token_provider_for(settings, session=session, clock=context.clock)
        pacing = PacingSettings()
        reaction_records = ReactionRecords(context.state)
        sender = TeamsSender(
            session=session,
            tokens=tokens,
            conversations=references,
            clock=context.clock,
            metrics=context.metrics,
            settings=pacing,
            ambiguous=StateAmbiguousSends(context.state, clock=context.clock),
            layouts=StateLayouts(context.state),
            dresser=ReactionDresser(reaction_records, max_activity_bytes=pacing.max_activity_bytes),
        )
        team_groups: StoredTeamGroups | None = None
        team_owners: TeamOwners | None = None
        if settings.team_owners_are_operators:
            team_groups = StoredTeamGroups(
                context.state, clock=context.clock, cache_size=settings.conversation_cache_size
            )
            graph = GraphClient(
                session=session,
                tokens=token_provider_for(
                    settings, session=session, clock=context.clock, scope=settings.graph_scope
                ),
                graph_url=settings.graph_url,
                clock=context.clock,
                cache_ttl_s=settings.team_owner_cache_s,
                cache_size=settings.team_owner_cache_size,
                timeout_s=settings.request_timeout_s,
            )
            team_owners = TeamOwners(
                graph=graph,
                conversations=references,
                team_groups=team_groups,
                tenant_id=settings.tenant_id,
            )
        links = FileLinks(context.state, clock=context.clock)
        endpoint = MessagingEndpoint(
            app_id=settings.app_id,
            authenticator=authenticator,
            converter=links.converter(app_id=settings.app_id, clock=context.clock),
            references=references,
            max_body_bytes=settings.max_activity_bytes,
            team_groups=team_groups,
        )
        return TeamsAdapter(
            settings=settings,
            web_app=context.web_app,
            endpoint=endpoint,
            keys=keys,
            sender=sender,
            session=session,
            reactions=TeamsReactions(
                records=reaction_records, timeline=context.store, sender=sender, clock=context.clock
            ),
            files=TeamsFiles(
                session=session,
                tokens=tokens,
                links=links,
                service_url_allowed=authenticator.service_url_allowed,
                timeout_s=settings.request_timeout_s,
            ),
            links=links,
            media_host=MediaHost(
                state=context.state,
                public_url=context.settings.http.public_url,
                clock=context.clock,
            ),
            incident_rooms=TeamsIncidentRooms(
                poster=sender, state=context.state, channel=context.settings.incidents.teams_channel
            ),
            team_owners=team_owners,
        )
    except BaseException:
        session.detach()  # nothing was connected yet; marks the session closed
        raise
