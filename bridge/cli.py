"""The ``incident-bridge`` command line: ``run``, ``check-config``, ``postmortem ID``,
``probe`` and the adapters' commands.

Exit codes (``bridge.exitcodes``): 0 success, 64 usage error (for ``postmortem``: also
no such incident, or an output file that cannot be written), 69 a dependency could
not be reached, 70 internal error, 78 invalid settings. ``probe`` is a container
health check and answers as one: 0 ready, 1 not ready.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from bridge import exitcodes
from bridge.clock import SystemClock
from bridge.config import Settings, load_settings
from bridge.errors import BridgeError, ConfigError, StoreError
from bridge.logs import configure_logging
from bridge.model import IncidentID, TimelineEvent
from bridge.ports import TimelineStore
from bridge.runtime import CliCommand

CONFIG_ENV = "BRIDGE_CONFIG"
TIMELINE_PAGE = 500
"""Events read per round trip when a command reads a whole timeline."""
PROBE_URL = "http://127.0.0.1:8080/readyz"
PROBE_TIMEOUT_S = 3.0
PROBE_UNHEALTHY = 1
"""What ``probe`` exits with when the daemon is not ready (a container health check's 1)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="incident-bridge",
        description="Incident ChatOps bridge between Microsoft Teams and Matrix.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the bridge daemon")
    run.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help=f"settings file (default: ${CONFIG_ENV}; environment overrides apply on top)",
    )
    check = commands.add_parser(
        "check-config", help="validate a settings file and report every error"
    )
    check.add_argument("config", type=Path, help="settings file to check")
    postmortem = commands.add_parser(
        "postmortem", help="print the postmortem of an incident (Markdown) from its timeline"
    )
    postmortem.add_argument("incident_id", metavar="ID", help="the incident, e.g. INC-42")
    postmortem.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help=f"settings file (default: ${CONFIG_ENV}; environment overrides apply on top)",
    )
    postmortem.add_argument(
        "-o", "--output", type=Path, default=None, help="write to FILE instead of stdout"
    )
    _add_probe_arguments(
        commands.add_parser("probe", help="exit 0 if the local daemon is ready, 1 if not")
    )
    from bridge.app import adapter_commands  # noqa: PLC0415 - the composition root knows adapters

    for command in adapter_commands():
        sub = commands.add_parser(command.name, help=command.help)
        command.add_arguments(sub)
        sub.set_defaults(extension=command)
    return parser


def _add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=PROBE_URL, help=f"readiness URL to GET (default: {PROBE_URL})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=PROBE_TIMEOUT_S,
        help=f"seconds to wait for the answer (default: {PROBE_TIMEOUT_S:g})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["probe"]:
        # Before the full parser, which imports every adapter and its SDK: a health
        # check runs every few seconds and should cost little.
        return _probe_command(words[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors; we document 64
        return exitcodes.OK if exc.code == 0 else exitcodes.USAGE
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "run":
        return _run(args.config)
    if args.command == "postmortem":
        return _postmortem(args.config, IncidentID(args.incident_id), args.output)
    command: CliCommand = args.extension
    return command.run(args)


def _probe_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="incident-bridge probe",
        description="Exit 0 if the local daemon's readiness URL answers 2xx, else 1.",
    )
    _add_probe_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exitcodes.OK if exc.code == 0 else exitcodes.USAGE
    if urlsplit(args.url).scheme not in {"http", "https"} or not 0 < args.timeout <= 300:
        print(
            "incident-bridge probe: --url must be http(s), --timeout in (0, 300]", file=sys.stderr
        )
        return exitcodes.USAGE
    return probe(args.url, timeout_s=args.timeout)


def probe(url: str, *, timeout_s: float) -> int:
    """GET ``url`` once: 0 when it answers 2xx within ``timeout_s``, else 1 (the reason
    on stderr). Proxy variables are ignored: the daemon is local."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        print(f"incident-bridge probe: {url} answered {exc.code}", file=sys.stderr)
        return PROBE_UNHEALTHY
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        reason = getattr(exc, "reason", exc)
        print(f"incident-bridge probe: {url} unreachable: {reason}", file=sys.stderr)
        return PROBE_UNHEALTHY
    if not 200 <= status < 300:
        print(f"incident-bridge probe: {url} answered {status}", file=sys.stderr)
        return PROBE_UNHEALTHY
    print(f"{url}: {status}")
    return exitcodes.OK


def _load(path: Path | None) -> Settings:
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    return load_settings(path, os.environ)


def _report_config_error(exc: ConfigError) -> None:
    print(f"incident-bridge: invalid settings ({len(exc.problems)} problem(s)):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _check_config(path: Path) -> int:
    try:
        _load(path)
    except ConfigError as exc:
        _report_config_error(exc)
        return exitcodes.CONFIG
    print(f"{path}: settings are valid")
    return exitcodes.OK


def _run(path: Path | None) -> int:
    from bridge.app import serve  # noqa: PLC0415

    try:
        settings = _load(path)
    except ConfigError as exc:
        _report_config_error(exc)
        return exitcodes.CONFIG
    configure_logging(fmt=settings.logging.format, level=settings.logging.level)
    log = structlog.get_logger("bridge.cli")
    try:
        asyncio.run(serve(settings))
    except BridgeError as exc:
        log.error("startup_failed", error=str(exc), exit_code=exc.exit_code)  # noqa: TRY400
        return exc.exit_code
    except Exception:
        log.exception("crashed")
        return exitcodes.SOFTWARE
    return exitcodes.OK


def _postmortem(path: Path | None, incident_id: IncidentID, output: Path | None) -> int:
    """Print (or write) the postmortem of one incident, read from MongoDB."""
    try:
        settings = _load(path)
    except ConfigError as exc:
        _report_config_error(exc)
        return exitcodes.CONFIG
    # The command's own output is the document or one line of error: logs only from warnings.
    level = "debug" if settings.logging.level == "debug" else "warning"
    configure_logging(fmt=settings.logging.format, level=level)
    log = structlog.get_logger("bridge.cli")
    try:
        markdown = asyncio.run(_read_postmortem(settings, incident_id))
    except StoreError as exc:  # MongoDB failed while reading: unavailable, as at start-up
        print(f"incident-bridge: MongoDB failed: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    except BridgeError as exc:
        print(f"incident-bridge: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception:
        log.exception("crashed")
        return exitcodes.SOFTWARE
    if markdown is None:
        print(f"incident-bridge: no incident {incident_id}", file=sys.stderr)
        return exitcodes.USAGE
    if output is None:
        sys.stdout.write(markdown)
        sys.stdout.flush()
        return exitcodes.OK
    try:
        output.write_text(markdown, encoding="utf-8")
    except OSError as exc:
        print(f"incident-bridge: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return exitcodes.USAGE
    return exitcodes.OK


async def _read_postmortem(settings: Settings, incident_id: IncidentID) -> str | None:
    """The postmortem's Markdown, or None when there is no such incident."""
    from bridge.app import open_store  # noqa: PLC0415 - the composition root knows MongoDB
    from bridge.incidents.mongo_store import MongoIncidentStore  # noqa: PLC0415
    from bridge.incidents.postmortem import render_postmortem, settings_own_check  # noqa: PLC0415

    clock = SystemClock()
    async with AsyncExitStack() as stack:
        store = await open_store(settings, clock, stack)
        incident = await MongoIncidentStore(store.database).get(incident_id)
        if incident is None:
            return None
        events = await whole_timeline(store, incident_id)
        return render_postmortem(
            incident, events, now=clock.now(), is_own=settings_own_check(settings)
        )


async def whole_timeline(store: TimelineStore, incident_id: IncidentID) -> list[TimelineEvent]:
    """Every event of an incident, in timeline order, read page by page."""
    events: list[TimelineEvent] = []
    cursor: str | None = None
    while True:
        page = await store.timeline(incident_id=incident_id, cursor=cursor, limit=TIMELINE_PAGE)
        events.extend(page.events)
        if page.next_cursor is None or not page.events:
            return events
        cursor = page.next_cursor
