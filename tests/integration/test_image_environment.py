"""The image's runtime environment, built the way ``deploy/Dockerfile`` builds it.

No container engine runs here, so the image itself cannot be built. The test builds
what matters in it the same way instead: it lays out the build context that the
builder stage's COPY lines and ``.dockerignore`` select, runs the builder's one RUN
(``deploy/install-runtime.sh``) with the builder's ENV, offline from the wheelhouse that
``devtools/bootstrap.sh`` downloads, and checks the venv that comes out: exactly the
lock plus the project, no development package, and it runs without writing a byte.
Then static checks of the Dockerfile and ``.dockerignore``.

Slow: building the venv takes 20-60 s on two busy cores; the module builds it once.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from importlib.metadata import Distribution
from pathlib import Path, PurePosixPath

import pytest
from aiohttp import web
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from devtools.lock_runtime import (
    LOCK,
    PYPROJECT,
    ROOT,
    closure,
    dev_requirements,
    parse_lock,
    runtime_requirements,
)

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
CONFIG_EXAMPLE = ROOT / "deploy" / "config.example.yaml"
INSTALL_SCRIPT = "deploy/install-runtime.sh"
INSTALL_TIMEOUT_S = 600.0
RUN_TIMEOUT_S = 60.0
PROJECT = canonicalize_name(tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["name"])
SHIPPED_PACKAGES = frozenset({"bridge", "adapters"})


# ---- reading the Dockerfile --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str


@dataclass(frozen=True, slots=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[Instruction, ...]

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: {len(found)} {keyword} instructions"
        return found[0]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for item in self.all("ENV"):
            for word in shlex.split(item.args):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {item.args!r}: only the KEY=VALUE form is read"
                values[key] = value
        return values


@dataclass(frozen=True, slots=True)
class Dockerfile:
    args: Mapping[str, str]
    """ARGs declared before the first FROM, with their defaults."""
    stages: tuple[Stage, ...]

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


def logical_lines(text: str) -> list[str]:
    """Instructions one per line: comments dropped, continuation lines joined."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = (pending + stripped).strip()
        pending = ""
        if line:
            lines.append(line)
    assert not pending, "the Dockerfile ends inside a continued line"
    return lines


def parse_dockerfile(text: str) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    base = ""
    name: str | None = None
    body: list[Instruction] = []
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        item = Instruction(keyword.upper(), rest.strip())
        if item.keyword == "FROM":
            if base:
                stages.append(Stage(base, name, tuple(body)))
            words = item.args.split()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            body = []
        elif not base and item.keyword == "ARG":
            key, _, default = item.args.partition("=")
            args[key] = default.strip('"')
        else:
            assert base, f"{item.keyword} before the first FROM"
            body.append(item)
    stages.append(Stage(base, name, tuple(body)))
    return Dockerfile(args, tuple(stages))


def words_without_flags(args: str) -> list[str]:
    words = shlex.split(args)
    while words and words[0].startswith("--"):
        words.pop(0)
    return words


def flags(args: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for word in shlex.split(args):
        if not word.startswith("--"):
            break
        key, _, value = word[2:].partition("=")
        found[key] = value
    return found


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args}"
    return [str(word) for word in value]


def health_command(stage: Stage) -> list[str]:
    """The command of the stage's ``HEALTHCHECK [OPTIONS] CMD [...]``."""
    options, sep, command = stage.one("HEALTHCHECK").args.partition(" CMD ")
    assert sep, "HEALTHCHECK without CMD"
    assert all(word.startswith("--") for word in options.split()), options
    return exec_form(command.strip())


# ---- reading .dockerignore ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IgnoreRule:
    regex: re.Pattern[str]
    exception: bool


def ignore_rules(text: str) -> list[IgnoreRule]:
    rules: list[IgnoreRule] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = str(PurePosixPath(line.removeprefix("!").strip().lstrip("/")))
        rules.append(IgnoreRule(re.compile(_pattern_regex(pattern)), exception))
    return rules


def _pattern_regex(pattern: str) -> str:
    out: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif pattern[index] == "*":
            out.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            out.append("[^/]")
            index += 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out.append(pattern[index : end + 1])
            index = end + 1
        else:
            out.append(re.escape(pattern[index]))
            index += 1
    return "^" + "".join(out) + "$"


def ignored(path: str, rules: list[IgnoreRule]) -> bool:
    """Whether the build context leaves ``path`` (relative, with /) out: the last rule
    that matches the path or one of its parent directories decides, as Docker does."""
    parts = path.split("/")
    candidates = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    excluded = False
    for rule in rules:
        if any(rule.regex.match(candidate) for candidate in candidates):
            excluded = not rule.exception
    return excluded


# ---- building the environment ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Built:
    root: Path
    """Stands for the builder's file system: ``/src`` is ``root / "src"``."""
    venv: Path
    install_output: str
    dockerfile: Dockerfile

    @property
    def site_packages(self) -> Path:
        return next((self.venv / "lib").glob("python3.*/site-packages"))

    def distributions(self) -> dict[NormalizedName, str]:
        return {
            canonicalize_name(dist.metadata["Name"]): dist.version
            for dist in Distribution.discover(path=[str(self.site_packages)])
        }


def inside(root: Path, container_path: str) -> Path:
    assert container_path.startswith("/"), f"not an absolute path: {container_path}"
    return root / container_path.lstrip("/")


def copy_into_context(root: Path, copy: Instruction, rules: list[IgnoreRule]) -> int:
    """Do what the builder's COPY does, from the repository as filtered by
    .dockerignore. Returns how many files were copied."""
    *sources, dest = words_without_flags(copy.args)
    to_dir = dest.endswith("/") or len(sources) > 1
    copied = 0
    for source in sources:
        assert not ignored(source, rules), f"COPY {source}: .dockerignore leaves it out"
        origin = ROOT / source
        assert origin.exists(), f"COPY {source}: no such path in the repository"
        files = [origin] if origin.is_file() else sorted(origin.rglob("*"))
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if not file.is_file() or ignored(relative, rules):
                continue
            if origin.is_file():
                target = inside(root, dest) / origin.name if to_dir else inside(root, dest)
            else:
                target = inside(root, dest) / file.relative_to(origin)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
            copied += 1
    return copied


def require_wheelhouse() -> None:
    hint = "run ./devtools/bootstrap.sh, which downloads it"
    if not WHEELHOUSE.is_dir():
        pytest.fail(f"the offline wheelhouse {WHEELHOUSE} is missing: {hint}")
    wheels = [parse_wheel_filename(path.name) for path in WHEELHOUSE.glob("*.whl")]
    have = {(name, version) for name, version, _build, _tags in wheels}
    missing = [
        f"{name}=={version}"
        for name, version in parse_lock(LOCK.read_text(encoding="utf-8")).items()
        if (name, Version(version)) not in have
    ]
    build_system = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["build-system"]
    for spec in build_system["requires"]:
        requirement = Requirement(spec)
        if not any(
            name == canonicalize_name(requirement.name) and requirement.specifier.contains(version)
            for name, version in have
        ):
            missing.append(spec)
    if missing:
        pytest.fail(f"the wheelhouse {WHEELHOUSE} lacks {', '.join(missing)}: {hint}")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, dockerfile: Dockerfile) -> Built:
    """The builder stage, replayed: its COPY lines, its ENV, its one RUN."""
    require_wheelhouse()
    builder, final = dockerfile.stages[0], dockerfile.stages[-1]
    root = tmp_path_factory.mktemp("image")
    rules = ignore_rules(DOCKERIGNORE.read_text(encoding="utf-8"))
    for copy in builder.all("COPY"):
        assert "from" not in flags(copy.args), "the builder copies only the build context"
        assert copy_into_context(root, copy, rules) > 0, f"COPY {copy.args} copied nothing"
    run = words_without_flags(builder.one("RUN").args)
    venv_path = words_without_flags(final.one("COPY").args)[0]
    assert run[0] == "sh", f"the install RUN is {run}"
    assert run[1].endswith("/" + INSTALL_SCRIPT), f"the install RUN is {run}"
    assert run[2:] == [venv_path], f"the RUN builds {run[2:]}, the final stage copies {venv_path}"
    env = {
        **builder.env(),
        "PATH": os.environ["PATH"],
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "PYTHON": sys.executable,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(WHEELHOUSE),
        "PIP_CONFIG_FILE": os.devnull,
    }
    assert all("$" not in value for value in builder.env().values())
    argv = [run[0], *(str(inside(root, word)) for word in run[1:])]
    result = subprocess.run(  # noqa: PLW1510 - the result is checked below, with its output
        argv,
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"{' '.join(argv)} failed (a requirement missing from the lock? regenerate it with"
        f" devtools/lock_runtime.py, then run ./devtools/bootstrap.sh):\n{output[-4000:]}"
    )
    return Built(root, inside(root, venv_path), output, dockerfile)


def tree(directory: Path) -> dict[str, int]:
    return {
        path.relative_to(directory).as_posix(): path.stat().st_mtime_ns
        for path in directory.rglob("*")
    }


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    out: str


def run_in(built: Built, cwd: Path, *argv: str) -> Ran:
    """A command of the venv, with nothing of the repository or .venv in reach."""
    env = {
        "PATH": f"{built.venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
    }
    result = subprocess.run(  # noqa: PLW1510 - callers check the code
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    return Ran(result.returncode, result.stdout + result.stderr)


# ---- the built environment ---------------------------------------------------------


def test_installed_distributions_are_exactly_the_lock_and_the_project(built: Built) -> None:
    lock = parse_lock(LOCK.read_text(encoding="utf-8"))
    installed = built.distributions()
    assert installed.pop(PROJECT, None) is not None, "the project is not installed"
    assert installed == lock
    assert "No broken requirements found" in built.install_output  # pip check


def test_the_lock_is_the_runtime_closure_of_pyproject(built: Built) -> None:
    """Read from the built venv, not from .venv, so that a change to a development
    package never makes this fail; a change to the runtime dependencies does."""
    lock = parse_lock(LOCK.read_text(encoding="utf-8"))
    pins = closure(runtime_requirements(), path=[str(built.site_packages)])
    regenerate = "regenerate deploy/requirements.lock with devtools/lock_runtime.py"
    assert {pin.name: pin.version for pin in pins} == lock, regenerate
    for requirement in runtime_requirements():
        version = lock[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{requirement} is not met by the pinned {version}: {regenerate}"
        )


def test_no_development_package_unless_the_runtime_needs_it(built: Built) -> None:
    """A development package may be present only because a runtime dependency requires
    it (today: PyJWT, through msal)."""
    runtime = {pin.name for pin in closure(runtime_requirements(), path=[str(built.site_packages)])}
    installed = set(built.distributions())
    dev = {canonicalize_name(requirement.name) for requirement in dev_requirements()}
    assert (dev & installed) <= runtime
    for name in ("pytest", "matrix-synapse", "secantusdb", "hypothesis", "mypy", "ruff"):
        assert canonicalize_name(name) not in installed
    assert not {"pip", "setuptools", "wheel"} & installed, "install tools left in the venv"


def test_the_project_ships_only_its_packages(built: Built) -> None:
    project = next(
        dist
        for dist in Distribution.discover(path=[str(built.site_packages)])
        if canonicalize_name(dist.metadata["Name"]) == PROJECT
    )
    top = {PurePosixPath(str(file)).parts[0] for file in project.files or ()}
    top = {part for part in top if not part.endswith(".dist-info") and part != ".."}
    assert top == SHIPPED_PACKAGES


def test_the_installed_daemon_runs_without_writing(built: Built, tmp_path: Path) -> None:
    before = tree(built.venv)
    help_run = run_in(built, tmp_path, "incident-bridge", "--help")
    assert help_run.code == 0, help_run.out
    assert "check-config" in help_run.out
    assert "probe" in help_run.out
    check = run_in(built, tmp_path, "incident-bridge", "check-config", str(CONFIG_EXAMPLE))
    assert check.code == 0, check.out
    assert "settings are valid" in check.out
    imports = run_in(
        built,
        tmp_path,
        "python",
        "-c",
        "import bridge, bridge.app, adapters.matrix, adapters.teams; print(bridge.__file__)",
    )
    assert imports.code == 0, imports.out
    assert Path(imports.out.strip()).is_relative_to(built.site_packages)
    # Without PYTHONDONTWRITEBYTECODE: every module imported had its bytecode already.
    assert tree(built.venv) == before, "running wrote into the venv"
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def imported_modules(*packages: str) -> set[str]:
    """Top-level names of every module imported anywhere in these packages' sources,
    inside functions too, the standard library's and the project's own left out."""
    names: set[str] = set()
    for package in packages:
        for source in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.partition(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - set(packages)


def test_every_module_the_shipped_code_imports_is_installed(built: Built, tmp_path: Path) -> None:
    """Also the imports inside functions, which importing the packages does not reach."""
    names = sorted(imported_modules(*SHIPPED_PACKAGES))
    assert "aiohttp" in names
    finder = (
        "import importlib.util, sys\n"
        "print(' '.join(n for n in sys.argv[1:] if importlib.util.find_spec(n) is None))"
    )
    found = run_in(built, tmp_path, "python", "-c", finder, *names)
    assert found.code == 0, found.out
    assert found.out.strip() == "", f"imported but not in the image: {found.out.strip()}"


@pytest.fixture
async def readiness() -> AsyncIterator[tuple[str, str]]:
    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def not_ready(_request: web.Request) -> web.Response:
        return web.Response(status=503, text="not ready")

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_get("/draining", not_ready)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/readyz", f"http://127.0.0.1:{port}/draining"
    finally:
        await runner.cleanup()


async def test_the_health_check_command_works_in_the_venv(
    built: Built, readiness: tuple[str, str], tmp_path: Path
) -> None:
    words = health_command(built.dockerfile.stages[-1])
    ready_url, draining_url = readiness
    env = {"PATH": f"{built.venv / 'bin'}:/usr/bin:/bin", "LANG": "C.UTF-8"}

    async def check(url: str) -> int:
        process = await asyncio.create_subprocess_exec(
            *words,
            "--url",
            url,
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(process.wait(), RUN_TIMEOUT_S)

    assert await check(ready_url) == 0
    assert await check(draining_url) == 1


# ---- the Dockerfile, read ----------------------------------------------------------


def test_dockerfile_is_multi_stage_on_one_pinned_slim_python(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2
    builder, final = dockerfile.stages[0], dockerfile.stages[-1]
    assert builder.name == "builder"
    assert builder.base == final.base, "the venv's interpreter must be the final image's"
    base = builder.base
    if base.startswith("${"):
        base = dockerfile.args[base.strip("${}")]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), base


def test_dockerfile_final_stage_copies_only_the_venv(dockerfile: Dockerfile) -> None:
    final = dockerfile.stages[-1]
    copy = final.one("COPY")
    assert flags(copy.args) == {"from": "builder"}
    source, dest = words_without_flags(copy.args)
    assert source == dest == "/opt/venv"
    assert "/opt/venv/bin" in final.env()["PATH"].split(":")


def test_dockerfile_runs_unprivileged_on_a_read_only_root(dockerfile: Dockerfile) -> None:
    final = dockerfile.stages[-1]
    user = final.all("USER")[-1].args
    for part in user.split(":"):
        assert part.isdigit(), f"USER {user} is not numeric"
        assert int(part) != 0, f"USER {user} is root"
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "compileall" in " ".join(item.args for item in final.all("RUN"))


def test_dockerfile_init_entrypoint_health_check_port_labels(dockerfile: Dockerfile) -> None:
    final = dockerfile.stages[-1]
    entrypoint = exec_form(final.one("ENTRYPOINT").args)
    assert Path(entrypoint[0]).name == "tini"
    assert entrypoint[1] == "--"
    assert Path(entrypoint[2]).name == "incident-bridge"
    command = exec_form(final.one("CMD").args)
    assert command[0] == "run"
    assert "--config" in command
    assert "tini" in " ".join(item.args for item in final.all("RUN"))
    assert health_command(final)[:2] == ["incident-bridge", "probe"]
    assert "8080" in final.one("EXPOSE").args.split()
    labels = " ".join(item.args for item in final.all("LABEL"))
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    assert "org.opencontainers.image.source=" in labels


def test_dockerfile_names_no_development_package(dockerfile: Dockerfile) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8").lower()
    assert "[dev]" not in text
    runtime = set(parse_lock(LOCK.read_text(encoding="utf-8")))
    for requirement in dev_requirements():
        name = canonicalize_name(requirement.name)
        if name in runtime:
            continue
        for spelling in {name, name.replace("-", "_"), requirement.name.lower()}:
            assert not re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", text), spelling
    for word in ("synapse", "secantus"):
        assert word not in text
    installs = [
        item.args
        for stage in dockerfile.stages
        for item in stage.all("RUN")
        if "install" in item.args
    ]
    assert all("pip install" not in args for args in installs), "pip install outside the script"


# ---- the build context -------------------------------------------------------------


def test_dockerignore_keeps_development_files_out_of_the_context() -> None:
    rules = ignore_rules(DOCKERIGNORE.read_text(encoding="utf-8"))
    for path in (
        ".venv",
        ".venv/wheelhouse/x.whl",
        ".git",
        ".git/config",
        "tests",
        "tests/integration/test_image_environment.py",
        "devtools",
        "devtools/servers.py",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        ".localstack",
        "bridge/__pycache__/app.cpython-311.pyc",
        "adapters/matrix/__pycache__/x.pyc",
        "incident_bridge.egg-info/PKG-INFO",
        "build/lib/bridge/app.py",
        "k8s/deployment.yaml",
        "deploy/config.example.yaml",
    ):
        assert ignored(path, rules), f"{path} would be sent to the builder"
    for path in ("pyproject.toml", "README.md", "bridge/app.py", "adapters/teams/auth.py"):
        assert not ignored(path, rules), f"{path} would be left out"
