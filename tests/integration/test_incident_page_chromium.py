"""The incident page in a real headless Chromium (Debian's ``chromium``).

The daemon's web application serves an incident with 500 events on a free loopback
port. Chromium opens the page's signed link through a recording proxy on loopback
(``<-loopback>`` makes even loopback requests use it), so every request the browser
makes is seen, and the proxy forwards only those to the application: nothing leaves
loopback. Debian's launcher turns on remote extension updates and Google sign-in
(``/etc/chromium.d``), so the browser itself asks Google's services in the background
whatever the flags; those requests are refused by the proxy, and the test checks that
every other request went to the application (the page loads nothing else). The
screenshot is decoded here (PNG with zlib, no imaging library) and must not be blank;
the DOM Chromium built must hold the title, the severity and the last event's text.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import SecretStr

from bridge.config.core import ApiSettings
from bridge.incidents.memory_store import MemoryIncidentStore
from bridge.metrics import BridgeMetrics
from bridge.timeline.memory import MemoryTimelineStore
from bridge.web.auth import incident_page_link
from bridge.web.health import Readiness
from bridge.web.server import add_incident_routes, bound_port, build_web_app, start_site
from tests.support.fakes import FakeClock
from tests.unit.web.builders import LATE_TEXT, seed_incident

TOKEN = "chromium-test-token-0123456789"
CHROMIUM_TIMEOUT_S = 90.0
PROXY_IO_TIMEOUT_S = 30.0
BROWSER_SERVICE_HOSTS = (".google.com", ".googleapis.com", ".gvt1.com", ".gstatic.com")
"""Where Chromium itself calls in the background (updates, sign-in), refused by the proxy."""
TEAMS_BAR = (0x4B, 0x4F, 0xB8)
"""The chart's Teams bars (``bridge.web.chart.PLATFORM_COLOURS``)."""


@dataclass
class RecordingProxy:
    """An HTTP proxy on loopback that forwards only to the application and records
    every request line it gets (anything else is answered 403)."""

    app_port: int
    forwarded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def allowed_prefix(self) -> str:
        return f"http://127.0.0.1:{self.app_port}/"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PROXY_IO_TIMEOUT_S)
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _version = request_line.split(" ", 2)
            if method != "GET" or not target.startswith(self.allowed_prefix):
                self.refused.append(request_line)
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            self.forwarded.append(request_line)
            await self._forward(target[len(self.allowed_prefix) - 1 :], header_lines, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            return
        finally:
            writer.close()

    async def _forward(
        self, path: str, header_lines: list[str], writer: asyncio.StreamWriter
    ) -> None:
        kept = [
            line
            for line in header_lines
            if line
            and line.split(":", 1)[0].lower() not in ("connection", "proxy-connection", "host")
        ]
        upstream_reader, upstream_writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.app_port), PROXY_IO_TIMEOUT_S
        )
        try:
            request = "\r\n".join(
                [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{self.app_port}", *kept]
            )
            upstream_writer.write(f"{request}\r\nConnection: close\r\n\r\n".encode("latin-1"))
            await upstream_writer.drain()
            response = await asyncio.wait_for(upstream_reader.read(), PROXY_IO_TIMEOUT_S)
        finally:
            upstream_writer.close()
        writer.write(response)
        await writer.drain()


@dataclass(frozen=True)
class Served:
    page_url: str
    proxy: RecordingProxy
    proxy_port: int


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    clock = FakeClock()
    timeline = MemoryTimelineStore(clock=clock)
    incidents = MemoryIncidentStore()
    incident = await seed_incident(
        incidents, timeline, events=500, title="Checkout errors in the EU"
    )
    metrics = BridgeMetrics()
    app = build_web_app(Readiness(timeout_s=1.0, metrics=metrics), metrics)
    api = ApiSettings(token=SecretStr(TOKEN))
    add_incident_routes(app, incidents, timeline, api, clock)
    runner = await start_site(app, host="127.0.0.1", port=0, shutdown_timeout=5.0)
    port = bound_port(runner)
    proxy = RecordingProxy(app_port=port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy_port = int(server.sockets[0].getsockname()[1])
    link = incident_page_link(f"http://127.0.0.1:{port}", incident.id, api)
    assert link is not None
    try:
        yield Served(page_url=link, proxy=proxy, proxy_port=proxy_port)
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10.0)
        await runner.cleanup()


def chromium_binary() -> str:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail(
            "Debian's chromium is not installed: run ./devtools/bootstrap.sh as root "
            "(it installs it with apt-get), or apt-get install chromium"
        )
    return binary


async def run_chromium(served: Served, profile: Path, *args: str) -> bytes:
    """Run headless Chromium on the page; its stdout. Fails the test after the timeout."""
    process = await asyncio.create_subprocess_exec(
        chromium_binary(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-client-side-phishing-detection",
        "--disable-domain-reliability",
        "--disable-breakpad",
        "--no-pings",
        "--no-service-autorun",
        "--metrics-recording-only",
        "--safebrowsing-disable-auto-update",
        "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,"
        "MediaRouter,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        f"--proxy-server=http://127.0.0.1:{served.proxy_port}",
        "--proxy-bypass-list=<-loopback>",
        *args,
        served.page_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await asyncio.wait_for(process.wait(), 10.0)
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S:g} s")
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout


# -- PNG, decoded with zlib alone ----------------------------------------------------


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    channels: int
    rows: list[bytes]

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = x * self.channels
        row = self.rows[y]
        return row[i], row[i + 1], row[i + 2]


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def decode_png(data: bytes) -> Image:
    """An 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, header = 8, bytearray(), b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunk = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), (depth, interlace)
    assert colour in (2, 6), colour
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif kind == 2:
            for i in range(stride):
                line[i] = (line[i] + previous[i]) & 0xFF
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                up_left = previous[i - channels] if i >= channels else 0
                line[i] = (line[i] + _paeth(left, previous[i], up_left)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return Image(width=width, height=height, channels=channels, rows=rows)


def luminance_variance(image: Image, step: int = 3) -> float:
    values = [
        sum(image.pixel(x, y)) / 3
        for y in range(0, image.height, step)
        for x in range(0, image.width, step)
    ]
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def count_colour(image: Image, colour: tuple[int, int, int]) -> int:
    return sum(
        1 for y in range(image.height) for x in range(image.width) if image.pixel(x, y) == colour
    )


# -- the test ------------------------------------------------------------------------


async def test_incident_page_renders_in_headless_chromium(served: Served, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    await run_chromium(
        served, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=412,1800"
    )
    dom = (await run_chromium(served, tmp_path / "profile-dom", "--dump-dom")).decode()

    image = decode_png(shot.read_bytes())
    assert (image.width, image.height) == (412, 1800)
    assert luminance_variance(image) > 200.0, "the screenshot is blank"
    assert count_colour(image, TEAMS_BAR) > 100, "the chart's Teams bars are not drawn"

    assert "Checkout errors in the EU" in dom
    assert "Severity: SEV2" in dom
    assert LATE_TEXT in dom
    assert 'role="img"' in dom
    assert "Incident chart" in dom
    assert '<html lang="en">' in dom

    page_path = served.page_url.split("/", 3)[3]
    assert any(page_path in r for r in served.proxy.forwarded), served.proxy.forwarded
    not_browser = [r for r in served.proxy.refused if not _browser_service(r)]
    assert not not_browser, f"the page asked for something else than the application: {not_browser}"


def _browser_service(request_line: str) -> bool:
    target = request_line.split(" ")[1]
    host = target.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host.endswith(BROWSER_SERVICE_HOSTS)
