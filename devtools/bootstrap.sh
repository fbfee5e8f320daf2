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
