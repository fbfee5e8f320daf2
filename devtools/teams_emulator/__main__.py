"""Run the Teams emulator on loopback until Ctrl-C (or SIGTERM).

    python -m devtools.teams_emulator --app-id ID --app-password SECRET --tenant TENANT \\
        --bot-endpoint http://127.0.0.1:8080/api/messages [--port N] [--seed local] [--announce]

It seeds a small directory (three users, a team with two channels, a group chat and
a personal chat), prints where everything is, and serves the web page at ``/``.
The same ``--seed`` gives the same ids on every start. The password may come from the
``TEAMS_EMULATOR_APP_PASSWORD`` environment variable instead of the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from devtools.teams_emulator.ratelimit import RateLimitPolicy
from devtools.teams_emulator.server import TeamsEmulator

PASSWORD_ENV = "TEAMS_EMULATOR_APP_PASSWORD"  # noqa: S105 - the name of a variable, not a secret


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.teams_emulator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--app-id", required=True, help="the bot's Microsoft App ID")
    parser.add_argument(
        "--app-password",
        default=os.environ.get(PASSWORD_ENV),
        help=f"its client secret (or ${PASSWORD_ENV})",
    )
    parser.add_argument("--tenant", required=True, help="the tenant id")
    parser.add_argument("--bot-endpoint", default=None, help="the bot's messaging endpoint URL")
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    parser.add_argument("--seed", default="local", help="ids derive from it (default: local)")
    parser.add_argument("--bot-name", default="Incident Bridge")
    parser.add_argument("--no-rate-limits", action="store_true", help="accept any call rate")
    parser.add_argument(
        "--announce", action="store_true", help="install the bot in every conversation at start"
    )
    arguments = parser.parse_args(argv)
    if not arguments.app_password:
        parser.error(f"--app-password (or ${PASSWORD_ENV}) is required")
    return arguments


def seed_directory(emulator: TeamsEmulator) -> None:
    """The demo tenant: three users, a team with two channels (Alice owns it), a group chat,
    a personal chat."""
    alice = emulator.add_user("Alice Ops")
    bob = emulator.add_user("Bob SRE")
    emulator.add_user("Carol Dev")
    emulator.add_channel("Operations", owners=[alice])
    emulator.add_channel("Operations", "Incidents")
    emulator.add_chat([alice, bob], topic="Incident war room")
    emulator.add_chat([alice], personal=True)


async def serve(arguments: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    emulator = TeamsEmulator(
        arguments.app_id,
        arguments.app_password,
        arguments.tenant,
        bot_endpoint=arguments.bot_endpoint,
        bot_name=arguments.bot_name,
        port=arguments.port,
        seed=arguments.seed,
        rate_limits=RateLimitPolicy.off() if arguments.no_rate_limits else None,
    )
    seed_directory(emulator)
    async with emulator:
        lines = [
            ("page", emulator.page_url),
            ("service URL", emulator.service_url),
            ("OpenID metadata", emulator.openid_metadata_url),
            ("JWKS", emulator.jwks_url),
            ("issuer", emulator.issuer),
            ("token authority", emulator.token_authority),
            ("token endpoint", emulator.token_endpoint),
            ("Graph", emulator.graph_url),
            ("bot endpoint", emulator.bot_endpoint or "(none: set --bot-endpoint)"),
        ]
        for label, value in lines:
            print(f"teams emulator: {label:<16} {value}", flush=True)
        if arguments.announce and emulator.bot_endpoint:
            for conversation in emulator.conversations:
                if conversation.team is not None and conversation.name is not None:
                    continue  # a team is announced once, on its General channel
                installed, added = await emulator.install_bot(conversation)
                print(
                    f"teams emulator: announced in {conversation.label}: "
                    f"bot answered {installed.status}, {added.status}",
                    flush=True,
                )
        print("teams emulator: ready (Ctrl-C stops)", flush=True)
        await stop.wait()
    print("teams emulator: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(serve(_arguments(argv)))


if __name__ == "__main__":
    sys.exit(main())
