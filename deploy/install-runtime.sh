#!/bin/sh
# Build the runtime virtual environment of incident-bridge in VENV_DIR: the pinned
# runtime closure (deploy/requirements.lock), then the project, nothing else. This is
# the image's one install step (deploy/Dockerfile runs it in the builder stage), and
# the test that checks the image's environment runs it too.
#
#   sh deploy/install-runtime.sh VENV_DIR
#
# The project is the directory above this script's. PYTHON names the interpreter the
# venv is made from (default python3). pip's own environment variables apply, so
# PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR installs offline from a wheelhouse (which then
# also needs the build backend that pyproject.toml's [build-system] names).
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: install-runtime.sh VENV_DIR" >&2
    exit 64
fi
venv=$1
project=$(cd "$(dirname "$0")/.." && pwd)

"${PYTHON:-python3}" -m venv "$venv"
pip() {
    "$venv/bin/python" -m pip --disable-pip-version-check --no-input "$@"
}
# Exact pins without dependency resolution: the image is what the lock says. Wheels
# only (no compiler in the image, no build scripts run), bytecode compiled below.
pip install --no-deps --only-binary=:all: --no-compile --requirement "$project/deploy/requirements.lock"
pip install --no-deps --no-compile "$project"
# Every requirement of every installed distribution is met: the lock is complete.
pip check
# pip and setuptools only served the install: the running daemon never uses them.
pip uninstall --yes --quiet pip setuptools
# Bytecode now, once, because the image's file system is read-only at run time.
# unchecked-hash: the .pyc files do not depend on file times, so the build is
# reproducible and a copied venv never looks stale.
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$venv/lib"
