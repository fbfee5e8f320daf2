"""Run the fake Kubernetes API server on loopback until Ctrl-C (or SIGTERM).

    python -m devtools.fake_kube [--port N] [--token TOKEN] [--start-delay SECONDS]

It prints its URL and the bearer token it accepts (the token may also come from the
``FAKE_KUBE_TOKEN`` environment variable).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from devtools.fake_kube.server import FakeKube

TOKEN_ENV = "FAKE_KUBE_TOKEN"  # noqa: S105 - the name of a variable, not a secret


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.fake_kube", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV), help="the bearer token")
    parser.add_argument(
        "--start-delay", type=float, default=0.0, help="seconds a pod stays Pending"
    )
    return parser.parse_args(argv)


async def serve(arguments: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with FakeKube(
        token=arguments.token, port=arguments.port, start_delay_s=arguments.start_delay
    ) as kube:
        print(f"fake kube: API server {kube.base_url}", flush=True)
        print(f"fake kube: token      {kube.token}", flush=True)
        print("fake kube: ready (Ctrl-C stops)", flush=True)
        await stop.wait()
    print("fake kube: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(serve(_arguments(argv)))


if __name__ == "__main__":
    sys.exit(main())
