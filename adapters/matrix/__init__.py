"""The Matrix side: an application service with ghost users for Teams senders."""

from __future__ import annotations

import aiohttp

from adapters.matrix.adapter import MatrixAdapter
from adapters.matrix.client import MatrixClient
from adapters.matrix.commands import COMMANDS
from adapters.matrix.ghosts import GhostManager
from adapters.matrix.ids import GhostNamespace
from adapters.matrix.media import MatrixMediaDownloader
from adapters.matrix.outbound import MatrixSender
from adapters.matrix.rooms import MatrixRooms
from bridge.runtime import AdapterContext

__all__ = ["COMMANDS", "MatrixAdapter", "create_adapter"]


def create_adapter(context: AdapterContext) -> MatrixAdapter:
    """Build the Matrix adapter from settings and mount its AS endpoints on the web app."""
    settings = context.settings.matrix
    assert settings.as_token is not None
    namespace = GhostNamespace(
        prefix=settings.ghost_prefix,
        server_name=settings.server_name,
        bot_localpart=settings.bot_localpart,
    )
    session = aiohttp.ClientSession()
    client = MatrixClient(
        session=session,
        base_url=settings.homeserver_url,
        as_token=settings.as_token.get_secret_value(),
        timeout_s=settings.request_timeout_s,
    )
    ghosts = GhostManager(client=client, namespace=namespace, cache_size=settings.ghost_cache_size)
    sender = MatrixSender(
        client=client,
        ghosts=ghosts,
        namespace=namespace,
        max_media_bytes=settings.max_media_bytes,
        media=MatrixMediaDownloader(
            session=session,
            base_url=settings.homeserver_url,
            as_token=settings.as_token.get_secret_value(),
            timeout_s=settings.request_timeout_s,
        ),
    )
    adapter = MatrixAdapter(
        settings=settings,
        client=client,
        sender=sender,
        namespace=namespace,
        state=context.state,
        clock=context.clock,
        owned_session=session,
        rooms=MatrixRooms(client=client, ghosts=ghosts, namespace=namespace, state=context.state),
    )
    context.web_app.add_routes(adapter.endpoints.routes())
    return adapter
