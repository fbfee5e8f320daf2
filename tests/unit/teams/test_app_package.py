"""``teams-app-package`` builds a zip that follows the rules of the manifest version it declares.

The rules below are transcribed from Microsoft's published JSON schema for the
app manifest (``MicrosoftTeams.schema.json``, v1.23) and the Microsoft Learn
reference pages for the manifest and for resource-specific consent; they are
checked here independently of the code that builds the package.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from adapters.teams.commands import COMMANDS, TeamsAppPackageCommand
from bridge import exitcodes

APP_ID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"

GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
SEMVER = re.compile(r"^([0-9]|[1-9]+[0-9]*)\.([0-9]|[1-9]+[0-9]*)\.([0-9]|[1-9]+[0-9]*)$")
HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
RULES: dict[str, dict[str, Any]] = {
    "1.23": {
        "required": {
            "manifestVersion", "version", "id", "developer", "name", "description", "icons",
            "accentColor",
        },
        "properties": {
            "$schema", "manifestVersion", "version", "id", "localizationInfo", "developer",
            "name", "description", "icons", "accentColor", "configurableTabs", "staticTabs",
            "bots", "connectors", "subscriptionOffer", "composeExtensions", "permissions",
            "devicePermissions", "validDomains", "webApplicationInfo", "graphConnector",
            "showLoadingIndicator", "isFullScreen", "activities", "configurableProperties",
            "supportedChannelTypes", "defaultBlockUntilAdminAction", "publisherDocsUrl",
            "defaultInstallScope", "defaultGroupCapability", "meetingExtensionDefinition",
            "authorization", "extensions", "dashboardCards", "copilotAgents", "intuneInfo",
            "elementRelationshipSet", "backgroundLoadConfiguration",
        },
        "bot_scopes": {"team", "personal", "groupChat", "copilot"},
        "max_commands": 10,
    },
}  # fmt: skip
RSC_APPLICATION_PERMISSIONS = frozenset(
    {
        # a team (and its channels)
        "Channel.Create.Group", "Channel.Delete.Group", "ChannelMeeting.ReadBasic.Group",
        "ChannelMeetingParticipant.Read.Group", "ChannelMeetingRecording.Read.Group",
        "ChannelMeetingTranscript.Read.Group", "ChannelMeetingNotification.Send.Group",
        "ChannelMessage.Read.Group", "ChannelMessage.Send.Group", "ChannelSettings.Read.Group",
        "ChannelSettings.ReadWrite.Group", "TeamsActivity.Send.Group",
        "TeamsAppInstallation.Read.Group", "TeamMember.Read.Group", "TeamSettings.Read.Group",
        "TeamSettings.ReadWrite.Group", "TeamsTab.Create.Group", "TeamsTab.Delete.Group",
        "TeamsTab.Read.Group", "TeamsTab.ReadWrite.Group",
        # a chat or meeting
        "Calls.AccessMedia.Chat", "Calls.JoinGroupCalls.Chat", "ChatSettings.Read.Chat",
        "ChatSettings.ReadWrite.Chat", "ChatMessage.Read.Chat", "ChatMessageReadReceipt.Read.Chat",
        "ChatMember.Read.Chat", "Chat.Manage.Chat", "TeamsTab.Read.Chat", "TeamsTab.Create.Chat",
        "TeamsTab.Delete.Chat", "TeamsTab.ReadWrite.Chat", "TeamsAppInstallation.Read.Chat",
        "TeamsActivity.Send.Chat", "OnlineMeetingTranscript.Read.Chat",
        "OnlineMeeting.ReadBasic.Chat", "OnlineMeetingRecording.Read.Chat",
        "OnlineMeetingNotification.Send.Chat", "OnlineMeetingParticipant.Read.Chat",
        # a user
        "TeamsActivity.Send.User", "TeamsAppInstallation.Read.User",
    }
)  # fmt: skip


def run(*argv: str) -> int:
    command = TeamsAppPackageCommand()
    parser = argparse.ArgumentParser(prog=command.name)
    command.add_arguments(parser)
    return command.run(parser.parse_args(list(argv)))


def build(tmp_path: Path, *extra: str) -> zipfile.ZipFile:
    output = tmp_path / "bridge-app.zip"
    assert run("--app-id", APP_ID, "--output", str(output), *extra) == exitcodes.OK
    return zipfile.ZipFile(io.BytesIO(output.read_bytes()))


def png_image(data: bytes) -> tuple[int, int, list[list[tuple[int, ...]]]]:
    """Width, height and RGBA rows of an 8-bit RGBA or RGB, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: dict[bytes, bytes] = {}
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        offset += 12 + length
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, interlace) == (8, 0)
    channels = {6: 4, 2: 3}[color_type]
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = width * channels + 1
    rows = []
    for y in range(height):
        row = raw[y * stride : (y + 1) * stride]
        assert row[0] == 0  # no filter: what this checker decodes
        pixels = [tuple(row[1 + x * channels : 1 + (x + 1) * channels]) for x in range(width)]
        rows.append([p if channels == 4 else (*p, 255) for p in pixels])
    return width, height, rows


def check_manifest(manifest: dict[str, Any], names: set[str]) -> list[str]:
    """Every rule of the declared manifest version that the manifest breaks."""
    problems: list[str] = []
    version = manifest.get("manifestVersion")
    rules = RULES.get(str(version))
    if rules is None:
        return [f"no rules known for manifest version {version!r}"]

    def need(ok: object, problem: str) -> None:
        if not ok:
            problems.append(problem)

    def https(url: object) -> bool:
        return isinstance(url, str) and url.startswith("https://") and len(url) <= 2048

    need(
        manifest.get("$schema")
        == f"https://developer.microsoft.com/json-schemas/teams/v{version}/MicrosoftTeams.schema.json",
        "$schema does not match manifestVersion",
    )
    need(rules["required"] <= manifest.keys(), f"missing {rules['required'] - manifest.keys()}")
    need(manifest.keys() <= rules["properties"], f"unknown {manifest.keys() - rules['properties']}")
    need(SEMVER.match(manifest.get("version", "")), "version is not semver")
    need(GUID.match(manifest.get("id", "")), "id is not a GUID")
    developer = manifest.get("developer", {})
    need(0 < len(developer.get("name", "")) <= 32, "developer.name")
    for key in ("websiteUrl", "privacyUrl", "termsOfUseUrl"):
        need(https(developer.get(key)), f"developer.{key} is not https")
    name = manifest.get("name", {})
    need(0 < len(name.get("short", "")) <= 30, "name.short")
    need(0 < len(name.get("full", "")) <= 100, "name.full")
    need(name.get("short") != name.get("full"), "name.short and name.full are the same")
    description = manifest.get("description", {})
    need(0 < len(description.get("short", "")) <= 80, "description.short")
    need(0 < len(description.get("full", "")) <= 4000, "description.full")
    icons = manifest.get("icons", {})
    need({icons.get("color"), icons.get("outline")} <= names, "an icon is not in the package")
    need(HEX_COLOR.match(manifest.get("accentColor", "")), "accentColor is not #RRGGBB")

    bots = manifest.get("bots", [])
    need(len(bots) == 1, "exactly one bot")
    for bot in bots:
        need(bot.get("botId") == manifest.get("id"), "botId is not the app id")
        need(set(bot.get("scopes", [])) <= rules["bot_scopes"], "bot scopes")
        need(len(bot.get("scopes", [])) <= 4, "too many bot scopes")
        need(bot.get("isNotificationOnly") is False, "the bot must be conversational")
        need(isinstance(bot.get("supportsFiles"), bool), "supportsFiles is not a boolean")
        lists = bot.get("commandLists", [])
        need(0 < len(lists) <= 3, "commandLists")
        for entry in lists:
            need(set(entry.get("scopes", [])) <= rules["bot_scopes"], "commandLists scopes")
            commands = entry.get("commands", [])
            need(0 < len(commands) <= rules["max_commands"], "commandLists commands")
            for command in commands:
                need(0 < len(command.get("title", "")) <= 32, "command title")
                need(0 < len(command.get("description", "")) <= 128, "command description")

    domains = manifest.get("validDomains", [])
    need(len(domains) <= 16, "validDomains has more than 16 entries")
    need(all("://" not in d and "/" not in d and len(d) <= 2048 for d in domains), "validDomains")
    web_app = manifest.get("webApplicationInfo", {})
    need(web_app.get("id") == manifest.get("id"), "webApplicationInfo.id is not the app id")
    need(GUID.match(web_app.get("id", "")), "webApplicationInfo.id is not a GUID")
    need(0 < len(web_app.get("resource", "")) <= 2048, "webApplicationInfo.resource")

    granted = manifest.get("authorization", {}).get("permissions", {}).get("resourceSpecific", [])
    need(len(granted) <= 16, "more than 16 resource-specific permissions")
    need(len({json.dumps(p, sort_keys=True) for p in granted}) == len(granted), "duplicates")
    for permission in granted:
        need(permission.get("type") in ("Application", "Delegated"), "permission type")
        need(len(permission.get("name", "")) <= 128, "permission name too long")
        if permission.get("type") == "Application":
            need(permission.get("name") in RSC_APPLICATION_PERMISSIONS, f"{permission} unknown")
    for needed in ("ChannelMessage.Read.Group", "ChatMessage.Read.Chat"):
        need({"name": needed, "type": "Application"} in granted, f"{needed} is not requested")
    return problems


def test_the_package_follows_its_manifest_version(tmp_path: Path) -> None:
    package = build(tmp_path, "--valid-domain", "bridge.example.org")
    names = set(package.namelist())
    assert names == {"manifest.json", "color.png", "outline.png"}
    manifest = json.loads(package.read("manifest.json"))
    assert check_manifest(manifest, names) == []
    assert manifest["id"] == APP_ID
    assert manifest["validDomains"] == ["bridge.example.org"]
    assert manifest["bots"][0]["scopes"] == ["team", "groupChat", "personal"]


def test_the_icons_have_the_sizes_and_colours_teams_requires(tmp_path: Path) -> None:
    package = build(tmp_path, "--accent-color", "#112233")
    manifest = json.loads(package.read("manifest.json"))
    width, height, color = png_image(package.read(manifest["icons"]["color"]))
    assert (width, height) == (192, 192)
    pixels = {p for row in color for p in row}
    assert all(p[3] == 255 for p in pixels)  # full colour, opaque
    assert (0x11, 0x22, 0x33, 255) in pixels
    width, height, outline = png_image(package.read(manifest["icons"]["outline"]))
    assert (width, height) == (32, 32)
    pixels = {p for row in outline for p in row}
    assert all(p[3] == 0 or p == (255, 255, 255, 255) for p in pixels)  # white on transparent
    assert any(p[3] == 0 for p in pixels)
    assert (255, 255, 255, 255) in pixels


def test_the_app_id_can_come_from_the_settings(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(f"mongo:\n  uri: mongodb://db\nteams:\n  app_id: {APP_ID}\n")
    output = tmp_path / "app.zip"
    assert run("--config", str(config), "--output", str(output)) == exitcodes.OK
    manifest = json.loads(zipfile.ZipFile(output).read("manifest.json"))
    assert manifest["id"] == APP_ID


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--app-id", "not-a-guid"), "--app-id must be a GUID"),
        (("--app-id", APP_ID, "--name", "x" * 31), "--name must be 1 to 30 characters"),
        (("--app-id", APP_ID, "--privacy-url", "http://x.org/p"), "--privacy-url must be an https"),
        (("--app-id", APP_ID, "--version", "1.0"), "--version must be MAJOR.MINOR.PATCH"),
        (("--app-id", APP_ID, "--accent-color", "blue"), "--accent-color"),
        (("--app-id", APP_ID, "--valid-domain", "https://x.org/"), "is not a domain"),
        (("--app-id", APP_ID, "--description", "d" * 81), "--description"),
        ((), "give --app-id"),
    ],
)
def test_bad_options_are_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: tuple[str, ...], message: str
) -> None:
    output = tmp_path / "app.zip"
    assert run(*arguments, "--output", str(output)) == exitcodes.USAGE
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_invalid_settings_are_reported(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("teams:\n  app_id: [1]\n")
    assert run("--config", str(config), "--output", str(tmp_path / "a.zip")) == exitcodes.CONFIG


def test_the_command_is_offered() -> None:
    assert [command.name for command in COMMANDS] == ["teams-app-package"]
