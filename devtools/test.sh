#!/usr/bin/env bash
# The whole check suite: lint, types, then every test (unit and real-server
# integration). Installs what it needs into .venv first.
set -euo pipefail
cd "$(dirname "$0")/.."
./devtools/bootstrap.sh
export PYTHONDONTWRITEBYTECODE=1
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m mypy
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit "$rc"
