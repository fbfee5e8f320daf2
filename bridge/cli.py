"""The ``incident-bridge`` command line.

Exit codes (``bridge.exitcodes``): 0 success, 64 usage error, 69 a dependency
could not be reached at start-up, 70 internal error, 78 invalid settings.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from bridge import exitcodes
from bridge.config import Settings, load_settings
from bridge.errors import BridgeError, ConfigError
from bridge.logs import configure_logging
from bridge.runtime import CliCommand

CONFIG_ENV = "BRIDGE_CONFIG"


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
    from bridge.app import adapter_commands  # noqa: PLC0415 - the composition root knows adapters

    for command in adapter_commands():
        sub = commands.add_parser(command.name, help=command.help)
        command.add_arguments(sub)
        sub.set_defaults(extension=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors; we document 64
        return exitcodes.OK if exc.code == 0 else exitcodes.USAGE
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "run":
        return _run(args.config)
    command: CliCommand = args.extension
    return command.run(args)


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
