"""``incident-bridge teams-app-package``: the Teams app package to upload to a tenant.

The package is a zip of ``manifest.json`` (app manifest schema 1.23, the
current version Microsoft Learn documents) and two icons drawn here with the
standard library: ``color.png`` (192x192, the glyph on the accent colour) and
``outline.png`` (32x32, a white glyph on transparency). The manifest declares
one bot (team, group chat and personal scopes) and the resource-specific
consent permissions that let it see every message of a channel or chat
without an @mention: ``ChannelMessage.Read.Group`` and ``ChatMessage.Read.Chat``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bridge import exitcodes
from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.runtime import CliCommand

MANIFEST_VERSION: Final = "1.23"
MANIFEST_SCHEMA: Final = (
    f"https://developer.microsoft.com/json-schemas/teams/v{MANIFEST_VERSION}/"
    "MicrosoftTeams.schema.json"
)
COLOR_ICON: Final = "color.png"
OUTLINE_ICON: Final = "outline.png"
COLOR_ICON_SIZE: Final = 192
OUTLINE_ICON_SIZE: Final = 32
RSC_PERMISSIONS: Final = (
    ("ChannelMessage.Read.Group", "Application"),
    ("ChatMessage.Read.Chat", "Application"),
)
BOT_SCOPES: Final = ("team", "groupChat", "personal")
BOT_COMMANDS: Final = (
    ("help", "What the bridge can do in this conversation."),
    ("status", "Whether this conversation is bridged, and to which Matrix room."),
)
_GUID: Final = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_SEMVER: Final = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
_HEX_COLOR: Final = re.compile(r"^#[0-9a-fA-F]{6}$")
_DOMAIN: Final = re.compile(
    r"^(\*\.)*(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(:\d{1,5})?$"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppPackageSpec:
    """What goes into the app package; ``problems`` says what is wrong with it."""

    app_id: str
    short_name: str = "Incident Bridge"
    full_name: str = "Incident Bridge for Teams and Matrix"
    short_description: str = "Bridges incident conversations between Teams and Matrix."
    full_description: str = (
        "Mirrors the messages of linked Teams channels and chats into Matrix rooms and "
        "back, keeps one durable incident timeline, and runs incident ChatOps commands. "
        "Each mirrored message names its author and the platform it came from."
    )
    version: str = "1.0.0"
    developer_name: str = "Incident Bridge"
    website_url: str = "https://example.org/incident-bridge"
    privacy_url: str = "https://example.org/incident-bridge/privacy"
    terms_url: str = "https://example.org/incident-bridge/terms"
    accent_color: str = "#2E5C8A"
    valid_domains: tuple[str, ...] = ()
    resource: str | None = None
    """``webApplicationInfo.resource``; by default ``api://botid-<app id>``."""
    supports_files: bool = False
    commands: tuple[tuple[str, str], ...] = field(default=BOT_COMMANDS)

    def problems(self) -> list[str]:
        checks: list[tuple[bool, str]] = [
            (bool(_GUID.match(self.app_id)), "--app-id must be a GUID"),
            (0 < len(self.short_name) <= 30, "--name must be 1 to 30 characters"),
            (0 < len(self.full_name) <= 100, "--full-name must be 1 to 100 characters"),
            (self.short_name != self.full_name, "--name and --full-name must differ"),
            (0 < len(self.short_description) <= 80, "--description: 1 to 80 characters"),
            (
                0 < len(self.full_description) <= 4000,
                "--full-description must be 1 to 4000 characters",
            ),
            (
                self.short_description not in self.full_description,
                "--full-description must not repeat --description",
            ),
            (bool(_SEMVER.match(self.version)), "--version must be MAJOR.MINOR.PATCH"),
            (0 < len(self.developer_name) <= 32, "--developer-name must be 1 to 32 characters"),
            (bool(_HEX_COLOR.match(self.accent_color)), "--accent-color must be like #4464EE"),
            (len(self.valid_domains) <= 16, "at most 16 --valid-domain"),
            (len(self.commands) <= 10, "at most 10 bot commands"),
        ]
        problems = [message for ok, message in checks if not ok]
        for option, url in (
            ("--website-url", self.website_url),
            ("--privacy-url", self.privacy_url),
            ("--terms-url", self.terms_url),
        ):
            if not url.startswith("https://") or len(url) > 2048 or len(url) <= len("https://"):
                problems.append(f"{option} must be an https:// URL")
        problems += [
            f"--valid-domain {domain!r} is not a domain (no scheme or path)"
            for domain in self.valid_domains
            if not _DOMAIN.match(domain)
        ]
        return problems


def build_manifest(spec: AppPackageSpec) -> dict[str, Any]:
    """The app manifest for ``spec`` (call ``spec.problems()`` first)."""
    commands = [{"title": title, "description": text} for title, text in spec.commands]
    return {
        "$schema": MANIFEST_SCHEMA,
        "manifestVersion": MANIFEST_VERSION,
        "version": spec.version,
        "id": spec.app_id,
        "developer": {
            "name": spec.developer_name,
            "websiteUrl": spec.website_url,
            "privacyUrl": spec.privacy_url,
            "termsOfUseUrl": spec.terms_url,
        },
        "name": {"short": spec.short_name, "full": spec.full_name},
        "description": {"short": spec.short_description, "full": spec.full_description},
        "icons": {"color": COLOR_ICON, "outline": OUTLINE_ICON},
        "accentColor": spec.accent_color,
        "bots": [
            {
                "botId": spec.app_id,
                "scopes": list(BOT_SCOPES),
                "supportsFiles": spec.supports_files,
                "isNotificationOnly": False,
                "commandLists": [
                    {"scopes": ["team", "groupChat"], "commands": commands},
                    {"scopes": ["personal"], "commands": commands},
                ],
            }
        ],
        "validDomains": list(spec.valid_domains),
        "webApplicationInfo": {
            "id": spec.app_id,
            "resource": spec.resource or f"api://botid-{spec.app_id}",
        },
        "authorization": {
            "permissions": {
                "resourceSpecific": [{"name": name, "type": kind} for name, kind in RSC_PERMISSIONS]
            }
        },
    }


def build_package(spec: AppPackageSpec) -> bytes:
    """The zip to upload: ``manifest.json`` and the two icons at the top level."""
    problems = spec.problems()
    if problems:
        raise ValueError("; ".join(problems))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        manifest = json.dumps(build_manifest(spec), indent=2, ensure_ascii=False)
        archive.writestr("manifest.json", manifest + "\n")
        archive.writestr(COLOR_ICON, color_icon(spec.accent_color))
        archive.writestr(OUTLINE_ICON, outline_icon())
    return buffer.getvalue()


# -- icons ---------------------------------------------------------------------------

Pixel = tuple[int, int, int, int]
WHITE: Final[Pixel] = (255, 255, 255, 255)
CLEAR: Final[Pixel] = (255, 255, 255, 0)


def color_icon(accent: str) -> bytes:
    """192x192: a white bridge on the accent colour, fully opaque."""
    red, green, blue = (int(accent[i : i + 2], 16) for i in (1, 3, 5))
    background: Pixel = (red, green, blue, 255)
    return png(COLOR_ICON_SIZE, lambda u, v: WHITE if _glyph(u, v) else background)


def outline_icon() -> bytes:
    """32x32: the same bridge in white on a transparent background."""
    return png(OUTLINE_ICON_SIZE, lambda u, v: WHITE if _glyph(u, v) else CLEAR)


def _glyph(u: float, v: float) -> bool:
    """A bridge (deck, two piers, an arch) in the unit square (u right, v down)."""
    deck = 0.15 <= u <= 0.85 and 0.60 <= v <= 0.68
    towers = (0.28 <= u <= 0.34 or 0.66 <= u <= 0.72) and 0.22 <= v <= 0.80
    cable = 0.15 <= u <= 0.85 and abs(v - (0.26 + 1.3 * (u - 0.5) ** 2)) <= 0.035
    return deck or towers or cable


def png(size: int, paint: Callable[[float, float], Pixel]) -> bytes:
    """A square 8-bit RGBA PNG whose pixel (x, y) is ``paint`` at its centre."""
    rows = bytearray()
    for y in range(size):
        rows.append(0)  # filter type: none
        for x in range(size):
            rows.extend(paint((x + 0.5) / size, (y + 0.5) / size))
    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(bytes(rows), 9)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


# -- the command ---------------------------------------------------------------------


class TeamsAppPackageCommand:
    """``incident-bridge teams-app-package --app-id GUID --output bridge-app.zip``."""

    name = "teams-app-package"
    help = "build the Teams app package (manifest and icons) to upload to a tenant"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        defaults = AppPackageSpec(app_id="")
        parser.add_argument("--app-id", help="the bot's Microsoft App ID (default: teams.app_id)")
        parser.add_argument("--config", type=Path, help="settings file to read teams.app_id from")
        parser.add_argument("--output", type=Path, required=True, help="the zip to write")
        parser.add_argument("--name", default=defaults.short_name, help="short name (<= 30)")
        parser.add_argument("--full-name", default=defaults.full_name, help="full name (<= 100)")
        parser.add_argument("--description", default=defaults.short_description)
        parser.add_argument("--full-description", default=defaults.full_description)
        parser.add_argument("--version", default=defaults.version, help="the app's version")
        parser.add_argument("--developer-name", default=defaults.developer_name)
        parser.add_argument("--website-url", default=defaults.website_url)
        parser.add_argument("--privacy-url", default=defaults.privacy_url)
        parser.add_argument("--terms-url", default=defaults.terms_url)
        parser.add_argument("--accent-color", default=defaults.accent_color)
        parser.add_argument(
            "--valid-domain", action="append", default=[], help="repeat for several domains"
        )
        parser.add_argument("--resource", help="webApplicationInfo.resource")
        parser.add_argument("--supports-files", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        app_id = args.app_id
        if not app_id:
            try:
                app_id = _configured_app_id(args.config)
            except ConfigError as exc:
                _error(f"invalid settings: {exc}")
                return exitcodes.CONFIG
        if not app_id:
            _error("give --app-id (or --config with teams.app_id set)")
            return exitcodes.USAGE
        spec = AppPackageSpec(
            app_id=app_id,
            short_name=args.name,
            full_name=args.full_name,
            short_description=args.description,
            full_description=args.full_description,
            version=args.version,
            developer_name=args.developer_name,
            website_url=args.website_url,
            privacy_url=args.privacy_url,
            terms_url=args.terms_url,
            accent_color=args.accent_color,
            valid_domains=tuple(args.valid_domain),
            resource=args.resource,
            supports_files=args.supports_files,
        )
        problems = spec.problems()
        if problems:
            for problem in problems:
                _error(problem)
            return exitcodes.USAGE
        output: Path = args.output
        try:
            output.write_bytes(build_package(spec))
        except OSError as exc:
            _error(f"cannot write {output}: {exc.strerror}")
            return exitcodes.SOFTWARE
        sys.stdout.write(f"{output}: Teams app package for {spec.app_id}\n")
        return exitcodes.OK


def _configured_app_id(config: Path | None) -> str:
    if config is None:
        return ""
    return load_settings(config, os.environ).teams.app_id


def _error(message: str) -> None:
    sys.stderr.write(f"incident-bridge teams-app-package: {message}\n")


COMMANDS: list[CliCommand] = [TeamsAppPackageCommand()]
"""The subcommands the Teams adapter adds to ``incident-bridge``."""
