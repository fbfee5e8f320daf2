#!/usr/bin/env bash
# Bring up the whole product on loopback: MongoDB-protocol server, Synapse, the
# Teams emulator and the bridge. Installs what it needs into .venv first. Ctrl-C
# stops everything. --drill plays a scripted incident once it is up (--drill --exit:
# then stops); --state-dir DIR keeps the servers' data elsewhere than .localstack/.
set -euo pipefail
cd "$(dirname "$0")/.."
./devtools/bootstrap.sh
exec .venv/bin/python -m devtools.localstack "$@"
