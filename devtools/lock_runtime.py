"""Print ``deploy/requirements.lock``: the runtime closure of the project, pinned.

The closure starts at ``[project].dependencies`` of ``pyproject.toml`` (never the
``dev`` extra) and follows each installed distribution's own requirements, with their
environment markers and extras evaluated, to the versions installed in the
environment that runs this script. Regenerate the lock with::

    .venv/bin/python -m devtools.lock_runtime > deploy/requirements.lock

The image is CPython 3.11 on Linux, so the markers are evaluated there: the script
refuses to run on any other interpreter.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import Distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "deploy" / "requirements.lock"
TARGET_PYTHON = (3, 11)
"""The image's Python: the lock's markers are evaluated for it."""

HEADER = """\
# The runtime closure of incident-bridge, pinned: pyproject's [project].dependencies
# and everything they require (markers evaluated for CPython 3.11 on Linux), without
# the dev extra. The image installs exactly these with --no-deps, then the project.
# Regenerate after changing the dependencies (and reinstalling .venv) with:
#   .venv/bin/python -m devtools.lock_runtime > deploy/requirements.lock
"""


class LockError(Exception):
    """The environment cannot produce a lock: a requirement is missing or unsatisfied."""


@dataclass(frozen=True, slots=True)
class Pin:
    name: NormalizedName
    version: str

    def line(self) -> str:
        return f"{self.name}=={self.version}"


def runtime_requirements(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """The project's own runtime requirements (``[project].dependencies``)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def dev_requirements(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """The ``dev`` extra's requirements."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return [Requirement(spec) for spec in project["optional-dependencies"]["dev"]]


def _installed(path: Sequence[str] | None) -> dict[NormalizedName, Distribution]:
    found: dict[NormalizedName, Distribution] = {}
    for dist in Distribution.discover(path=list(path) if path is not None else sys.path):
        name = canonicalize_name(dist.metadata["Name"])
        found.setdefault(name, dist)  # the first on the path wins, as for imports
    return found


def _applies(req: Requirement, environment: Mapping[str, str], extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**environment, "extra": extra}) for extra in ("", *extras))


def closure(
    roots: Iterable[Requirement],
    *,
    path: Sequence[str] | None = None,
    environment: Mapping[str, str] | None = None,
) -> list[Pin]:
    """Every distribution ``roots`` need, transitively, as installed on ``path``.

    ``path`` is where distributions are looked up (``sys.path`` when None), so the
    closure can be read from another environment's site-packages. Raises ``LockError``
    when a needed distribution is missing or its version does not satisfy a requirement.
    """
    env = (
        dict(environment)
        if environment is not None
        else {key: str(value) for key, value in default_environment().items()}
    )
    installed = _installed(path)
    extras_seen: dict[NormalizedName, frozenset[str]] = {}
    pending = [req for req in roots if _applies(req, env, ())]
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        dist = installed.get(name)
        if dist is None:
            raise LockError(f"{req} is required but {req.name} is not installed")
        if not req.specifier.contains(dist.version, prereleases=True):
            raise LockError(f"{req} is required but {req.name} {dist.version} is installed")
        extras = frozenset(canonicalize_name(extra) for extra in req.extras)
        known = extras_seen.get(name)
        if known is not None and extras <= known:
            continue
        extras_seen[name] = extras | (known or frozenset())
        for spec in dist.requires or ():
            sub = Requirement(spec)
            if _applies(sub, env, extras_seen[name]):
                pending.append(sub)
    return sorted((Pin(name, installed[name].version) for name in extras_seen), key=_by_name)


def _by_name(pin: Pin) -> str:
    return pin.name


def render(pins: Iterable[Pin]) -> str:
    return HEADER + "".join(f"{pin.line()}\n" for pin in pins)


def parse_lock(text: str) -> dict[NormalizedName, str]:
    """The pins of a lock file: name -> exact version."""
    pins: dict[NormalizedName, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version:
            raise LockError(f"not an exact pin: {raw!r}")
        pins[canonicalize_name(name)] = version.strip()
    return pins


def main() -> int:
    if sys.implementation.name != "cpython" or sys.version_info[:2] != TARGET_PYTHON:
        print(
            "lock_runtime: run this with the project's CPython 3.11 (.venv/bin/python)",
            file=sys.stderr,
        )
        return 1
    if not sys.platform.startswith("linux"):
        print("lock_runtime: the image is Linux; run this on Linux", file=sys.stderr)
        return 1
    try:
        pins = closure(runtime_requirements())
    except LockError as exc:
        print(f"lock_runtime: {exc}; run ./devtools/bootstrap.sh first", file=sys.stderr)
        return 1
    project = canonicalize_name(
        tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["name"]
    )
    sys.stdout.write(render(pin for pin in pins if pin.name != project))
    return 0


if __name__ == "__main__":
    sys.exit(main())
