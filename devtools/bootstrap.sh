#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv from nothing
# but a Python 3.11+ interpreter, and install the project with its dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" - <<'PYCHK'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"Python 3.11 or newer is required, found {sys.version.split()[0]}")
PYCHK
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "bootstrap: installing into .venv (first run takes about a minute)" >&2
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    log=.venv/install.log
    if ! { .venv/bin/python -m pip install --upgrade pip \
           && .venv/bin/python -m pip install -e '.[dev]'; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "bootstrap: installation failed; the full log is $log" >&2
        exit 1
    fi
    rm -f .venv/.installed-*
    touch "$stamp"
fi
# The incident page is tested in a real headless browser: Debian's chromium. Installed
# only when it is missing and apt-get can be used (root, non-interactive); otherwise
# the page's browser test fails and names this script.
if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "bootstrap: installing chromium (headless browser for the incident page test)" >&2
        aptlog=.venv/apt-chromium.log
        if ! { DEBIAN_FRONTEND=noninteractive apt-get update \
               && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                    chromium; } >"$aptlog" 2>&1; then
            tail -n 20 "$aptlog" >&2
            echo "bootstrap: chromium could not be installed (the incident page test will" \
                 "fail); the log is $aptlog" >&2
        fi
    else
        echo "bootstrap: chromium is missing and apt-get cannot be used here; install" \
             "Debian's chromium package to run the incident page test" >&2
    fi
fi
