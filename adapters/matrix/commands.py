"""``incident-bridge gen-registration``: write the AS registration and print the settings."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from adapters.matrix.registration import build_registration
from bridge import exitcodes


def _read_token(path: Path | None) -> str | None:
    if path is None or not path.exists():
        return None
    token = path.read_text(encoding="utf-8").strip()
    return token or None


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


class GenRegistration:
    name = "gen-registration"
    help = "write the Matrix application-service registration and print the settings to add"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", required=True, help="where the homeserver reaches the bridge")
        parser.add_argument("--server-name", required=True, help="the homeserver's server name")
        parser.add_argument("--output", type=Path, default=Path("registration.yaml"))
        parser.add_argument("--id", default="incident-bridge", help="the registration id")
        parser.add_argument("--bot-localpart", default="incident-bridge")
        parser.add_argument("--ghost-prefix", default="teams_")
        parser.add_argument(
            "--as-token-file",
            type=Path,
            help="read the AS token from this file if it exists, else write a new one there",
        )
        parser.add_argument(
            "--hs-token-file",
            type=Path,
            help="read the HS token from this file if it exists, else write a new one there",
        )

    def run(self, args: argparse.Namespace) -> int:
        registration = build_registration(
            url=args.url,
            server_name=args.server_name,
            as_id=args.id,
            bot_localpart=args.bot_localpart,
            ghost_prefix=args.ghost_prefix,
            as_token=_read_token(args.as_token_file),
            hs_token=_read_token(args.hs_token_file),
        )
        for path, token in (
            (args.as_token_file, registration.as_token),
            (args.hs_token_file, registration.hs_token),
        ):
            if path is not None and _read_token(path) is None:
                _write_secret(path, token)
        text = yaml.safe_dump(registration.to_yaml_dict(), sort_keys=False)
        try:
            _write_secret(args.output, text.rstrip("\n"))
        except OSError as exc:
            print(f"cannot write {args.output}: {exc.strerror}", file=sys.stderr)  # noqa: T201
            return exitcodes.CONFIG
        settings = {
            "matrix": {
                "enabled": True,
                "homeserver_url": "https://<homeserver client API URL>",
                "server_name": args.server_name,
                "as_id": args.id,
                "bot_localpart": args.bot_localpart,
                "ghost_prefix": args.ghost_prefix,
            }
        }
        matrix = settings["matrix"]
        for key, path in (("as_token", args.as_token_file), ("hs_token", args.hs_token_file)):
            if path is not None:
                matrix[f"{key}_file"] = str(path)
            else:
                matrix[key] = f"<{key} from {args.output}>"
        print(f"wrote {args.output}; give it to the homeserver (app_service_config_files).")  # noqa: T201
        print("add to the bridge settings:\n")  # noqa: T201
        print(yaml.safe_dump(settings, sort_keys=False))  # noqa: T201
        return exitcodes.OK


COMMANDS = [GenRegistration()]
