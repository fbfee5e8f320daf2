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
# An offline wheelhouse for the test that builds the image's environment with the
# image's install step (deploy/install-runtime.sh): the pinned runtime wheels and the
# build backend. Fetched again when deploy/requirements.lock or pyproject.toml changes;
# a failure here leaves the old one alone and only that test fails.
wheelhouse=.venv/wheelhouse
wheel_stamp="$wheelhouse/.lock-$(cat deploy/requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$wheel_stamp" ]; then
    echo "bootstrap: downloading the runtime wheels into $wheelhouse" >&2
    fresh=$(mktemp -d .venv/wheelhouse.XXXXXX)
    wlog=.venv/wheelhouse.log
    if { .venv/bin/python -m pip download --disable-pip-version-check --no-deps \
             --only-binary=:all: --dest "$fresh" --requirement deploy/requirements.lock \
         && .venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
             >"$fresh/build-requires.txt" \
         && .venv/bin/python -m pip download --disable-pip-version-check \
             --only-binary=:all: --dest "$fresh" --requirement "$fresh/build-requires.txt"; \
       } >"$wlog" 2>&1; then
        touch "$fresh/.lock-${wheel_stamp##*/.lock-}"
        rm -rf "$wheelhouse"
        mv "$fresh" "$wheelhouse"
    else
        rm -rf "$fresh"
        tail -n 20 "$wlog" >&2
        echo "bootstrap: the runtime wheels could not be downloaded (the image environment" \
             "test will fail); the log is $wlog" >&2
    fi
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
