"""Teams media: files served to Teams by token, and downloads of what Teams users attach.

A small aiohttp server on loopback plays the connector's hosted content and a
file host; the bridge's media route is served by a real aiohttp runner too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from adapters.teams.activity import parse_activity
from adapters.teams.media import FILE_LINK_TTL, FileLinks, TeamsFiles
from adapters.teams.media_host import CHUNK_BYTES, MediaHost
from bridge.errors import MediaTooLargeError, PermanentDeliveryError, RetryableDeliveryError
from bridge.model import Attachment, Body, InboundEvent, Kind, RemoteMessageID, RemoteRef
from bridge.timeline.memory import MemoryStateStore
from bridge.web.server import bound_port
from devtools.servers import free_port
from tests.support.fakes import ALICE, TEAMS_ROOM, FakeClock

TOKEN = "bot-token-1"
BIG = 300_000


@asynccontextmanager
async def serving(app: web.Application, port: int = 0) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}"
    finally:
        await runner.cleanup()


@dataclass
class Host:
    """Hosted content (token required) and shared files (no token, never one offered)."""

    authorizations: list[str | None] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/amer/v3/attachments/{id}/views/original", self.hosted)
        app.router.add_get("/files/{name}", self.file)
        app.router.add_get("/moved/{name}", self.moved)
        return app

    async def hosted(self, request: web.Request) -> web.StreamResponse:
        self.authorizations.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401)
        if request.match_info["id"] == "busy":
            return web.Response(status=429, headers={"Retry-After": "7"})
        return web.Response(body=b"\x89PNG\r\n\x1a\nimage", content_type="image/png")

    async def file(self, request: web.Request) -> web.StreamResponse:
        self.authorizations.append(request.headers.get("Authorization"))
        name = request.match_info["name"]
        if name == "big.bin":
            return web.Response(body=bytes(BIG))
        if name == "streamed.bin":  # no Content-Length: the cap applies while reading
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(10):
                await response.write(bytes(BIG // 10))
            await response.write_eof()
            return response
        if name == "gone.bin":
            return web.Response(status=404)
        return web.Response(body=b"report bytes")

    async def moved(self, request: web.Request) -> web.StreamResponse:
        target = "/files/report.pdf" if request.match_info["name"] == "ok" else "ftp://x/y"
        raise web.HTTPFound(target)


class Tokens:
    async def token(self) -> str:
        return TOKEN


def file_message(content_url: str) -> InboundEvent:
    return InboundEvent(
        kind=Kind.MESSAGE,
        origin=RemoteRef(room=TEAMS_ROOM, message_id=RemoteMessageID("1")),
        sender=ALICE,
        occurred_at=FakeClock().now(),
        body=Body(attachments=(Attachment(name="f", mime_type="a/b", url=content_url),)),
    )


def activity_with_file(content_url: str, download_url: str) -> dict[str, object]:
    return {
        "type": "message",
        "id": "1",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.teams.file.download.info",
                "contentUrl": content_url,
                "name": "report.pdf",
                "content": {"downloadUrl": download_url, "uniqueId": "U"},
            },
            {"contentType": "text/html", "content": "<p>x</p>"},
        ],
    }


@dataclass
class Rig:
    base: str
    host: Host
    links: FileLinks
    files: TeamsFiles
    clock: FakeClock

    async def shared(self, name: str, *, link: str | None = None) -> Attachment:
        """A file Teams shared with the message, its link noted and kept as at intake."""
        content_url = f"{self.base}/sharepoint/{name}"
        download = link or f"{self.base}/files/{name}"
        self.links.note(parse_activity(activity_with_file(content_url, download)))
        await self.links.keep([file_message(content_url)])
        return Attachment(name=name, mime_type="application/octet-stream", url=content_url)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    host = Host()
    async with serving(host.app()) as base, aiohttp.ClientSession() as session:
        clock = FakeClock()
        links = FileLinks(MemoryStateStore(), clock=clock)
        files = TeamsFiles(
            session=session,
            tokens=Tokens(),
            links=links,
            service_url_allowed=lambda url: url.startswith(f"{base}/amer/"),
            timeout_s=5,
        )
        yield Rig(base, host, links, files, clock)


def hosted(url: str) -> Attachment:
    return Attachment(name="image", mime_type="image/*", url=url, is_image=True)


async def test_hosted_images_are_fetched_with_the_bots_token_from_allowed_hosts_only(
    rig: Rig,
) -> None:
    data = await rig.files.download(
        hosted(f"{rig.base}/amer/v3/attachments/0-1/views/original"), max_bytes=1000
    )
    assert data == b"\x89PNG\r\n\x1a\nimage"
    assert rig.host.authorizations == [f"Bearer {TOKEN}"]
    elsewhere = hosted(f"{rig.base}/other/v3/attachments/0-1/views/original")
    with pytest.raises(PermanentDeliveryError, match="outside the allowed serviceUrl hosts"):
        await rig.files.download(elsewhere, max_bytes=1000)
    assert rig.host.authorizations == [f"Bearer {TOKEN}"]  # the token went nowhere else
    with pytest.raises(RetryableDeliveryError) as busy:
        await rig.files.download(
            hosted(f"{rig.base}/amer/v3/attachments/busy/views/original"), max_bytes=1000
        )
    assert busy.value.retry_after == 7


async def test_shared_files_are_fetched_by_their_link_without_the_token(rig: Rig) -> None:
    attachment = await rig.shared("report.pdf")
    assert await rig.files.download(attachment, max_bytes=1000) == b"report bytes"
    assert rig.host.authorizations == [None]
    moved = await rig.shared("moved.pdf", link=f"{rig.base}/moved/ok")
    assert await rig.files.download(moved, max_bytes=1000) == b"report bytes"
    astray = await rig.shared("astray.pdf", link=f"{rig.base}/moved/astray")
    with pytest.raises(PermanentDeliveryError, match="refused address"):
        await rig.files.download(astray, max_bytes=1000)
    gone = await rig.shared("gone.bin")
    with pytest.raises(PermanentDeliveryError, match="HTTP 404"):
        await rig.files.download(gone, max_bytes=1000)


async def test_downloads_stop_at_the_cap_declared_or_not(rig: Rig) -> None:
    big = await rig.shared("big.bin")
    with pytest.raises(MediaTooLargeError) as declared:
        await rig.files.download(big, max_bytes=BIG - 1)
    assert (declared.value.size, declared.value.limit) == (BIG, BIG - 1)
    streamed = await rig.shared("streamed.bin")
    with pytest.raises(MediaTooLargeError) as read:
        await rig.files.download(streamed, max_bytes=BIG // 2)
    assert read.value.size is None
    assert len(await rig.files.download(streamed, max_bytes=BIG)) == BIG


async def test_a_file_link_is_kept_for_a_day_only(rig: Rig) -> None:
    attachment = await rig.shared("report.pdf")
    assert await rig.links.lookup(attachment.url) is not None
    rig.clock.advance(FILE_LINK_TTL.total_seconds() + 1)
    assert await rig.links.lookup(attachment.url) is None
    with pytest.raises(PermanentDeliveryError):
        await rig.files.download(attachment, max_bytes=1000)


async def test_links_of_activities_never_stored_are_not_kept(rig: Rig) -> None:
    state = MemoryStateStore()
    links = FileLinks(state, clock=FakeClock(), capacity=2)
    for n in range(3):
        links.note(parse_activity(activity_with_file(f"https://sp/{n}", f"https://dl/{n}")))
    await links.keep([file_message("https://sp/0")])  # dropped: over capacity
    await links.keep([file_message("https://sp/2")])
    assert await links.lookup("https://sp/0") is None
    assert await links.lookup("https://sp/2") == "https://dl/2"


# -- the media route --------------------------------------------------------------------


@asynccontextmanager
async def media_host(max_bytes: int = 4 * CHUNK_BYTES) -> AsyncIterator[tuple[MediaHost, str]]:
    port = free_port()
    app = web.Application()
    host = MediaHost(
        state=MemoryStateStore(),
        public_url=f"http://127.0.0.1:{port}/",
        clock=FakeClock(),
        max_bytes=max_bytes,
    )
    app.add_routes(host.routes())
    async with serving(app, port) as base:
        yield host, base


async def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, dict(response.headers), await response.read()


async def test_uploaded_images_are_served_inline_by_an_unguessable_url() -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10_000  # over two pieces
    image = Attachment(name="graph.png", mime_type="image/png", url="mxc://hs/1", is_image=True)
    async with media_host() as (host, base):
        carried = await host.upload(data, image)
        assert carried.url.startswith(f"{base}/media/")
        assert len(carried.url.rsplit("/", 1)[1]) == 43
        assert carried.size == len(data)
        status, headers, body = await fetch(carried.url)
        assert (status, body) == (200, data)
        assert headers["Content-Type"] == "image/png"
        assert headers["Content-Disposition"].startswith("inline;")
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert (await fetch(carried.url[:-1] + ("A" if carried.url[-1] != "A" else "B")))[0] == 404
        assert (await fetch(f"{base}/media/short"))[0] == 404


async def test_other_files_are_served_as_downloads_that_never_run() -> None:
    svg = Attachment(name="<x>.svg", mime_type="image/svg+xml", url="mxc://hs/2")
    async with media_host() as (host, _):
        carried = await host.upload(b"<svg onload='alert(1)'/>", svg)
        status, headers, _ = await fetch(carried.url)
        assert status == 200
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"] == "attachment; filename*=UTF-8''_x_.svg"
        assert "sandbox" in headers["Content-Security-Policy"]
        with pytest.raises(MediaTooLargeError):
            await host.upload(bytes(4 * CHUNK_BYTES + 1), svg)
