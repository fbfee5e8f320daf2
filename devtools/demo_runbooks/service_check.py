"""The demo runbook's program: a few lines about one service, read-only and harmless.

    python3 devtools/demo_runbooks/service_check.py --service checkout

It reads the host's name, load average and the free space of the working directory's
file system, prints them one line at a time, and exits 0. Nothing is changed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time

PAUSE_S = 0.3
"""Between lines, so the run's message in chat is seen growing."""


def _lines(service: str) -> list[str]:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    disk = shutil.disk_usage(".")
    free_gib = disk.free / 2**30
    return [
        f"checking {service} on {platform.node() or 'this host'}",
        f"load average: {load}",
        f"free disk: {free_gib:.1f} GiB ({100 * disk.free / disk.total:.0f} %)",
        f"{service}: healthy",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--service", required=True)
    arguments = parser.parse_args(argv)
    for index, line in enumerate(_lines(arguments.service)):
        if index:
            time.sleep(PAUSE_S)  # a pause is the point: output that arrives over time
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
