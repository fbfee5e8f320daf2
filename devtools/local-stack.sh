#!/usr/bin/env bash
# Bring up the whole product on loopback: MongoDB-protocol server, Synapse and
# the bridge. Installs what it needs into .venv first. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
./devtools/bootstrap.sh
exec .venv/bin/python -m devtools.localstack "$@"
