"""The runbook catalog: every definition in a directory, reloaded on change, last good kept.

Each ``*.yaml`` or ``*.yml`` file in the directory (hidden files and directories, such as
a mounted ConfigMap's ``..data``, are skipped) holds one runbook or a list of them. A file
with any problem (not YAML, a duplicate key, an unknown key, a bad value, a runbook name
another file already uses) is reported, and whatever that file defined last time it was
valid stays in effect; a deleted file's runbooks go away. If the directory cannot be read
at all, the whole previous catalog stays.

``reload()`` re-reads everything (SIGHUP calls it); the poll task started by ``start()``
calls ``reload_if_changed()`` every ``reload_interval_s``, which compares each file's
modification time, size and inode first (a ConfigMap update swaps them all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
import yaml
from pydantic import ValidationError

from bridge.config.core import RunbookSettings
from bridge.runbooks.catalog_schema import RunbookDoc, definition_problems, to_runbook
from bridge.runbooks.model import Access, Runbook
from bridge.tasks import TaskOwner

log = structlog.get_logger(__name__)

SUFFIXES: Final = (".yaml", ".yml")
MAX_FILE_BYTES: Final = 1024 * 1024

Fingerprint = tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True, slots=True)
class CatalogProblem:
    """Something wrong in the catalog: the file, the key path inside it, what is wrong."""

    source: str
    key_path: str
    message: str
    kept_previous: bool = False
    """Whether what the file defined when it was last valid stays in effect."""

    def __str__(self) -> str:
        where = f"{self.source}: {self.key_path}" if self.key_path else self.source
        kept = " (its previous version stays in effect)" if self.kept_previous else ""
        return f"{where}: {self.message}{kept}"


def roles_from_settings(settings: RunbookSettings) -> dict[str, Access]:
    """The settings' ``roles:`` as ``Access`` rules."""
    return {
        name: Access(
            aad_object_ids=tuple(v.lower() for v in role.aad_object_ids),
            aad_groups=tuple(v.lower() for v in role.aad_groups),
            mxids=role.mxids,
            matrix_power_level=role.matrix_power_level,
        )
        for name, role in settings.roles.items()
    }


def parse_file(
    name: str, text: str, roles: Mapping[str, Access]
) -> tuple[list[Runbook], list[CatalogProblem]]:
    """The runbooks one file defines, or the problems that make it invalid (then none)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        return _parse_data(name, data, roles)
    except yaml.YAMLError as exc:
        return [], [CatalogProblem(name, "", _yaml_message(exc))]
    except RecursionError:
        return [], [CatalogProblem(name, "", "nested too deeply")]


def _parse_data(
    name: str, data: Any, roles: Mapping[str, Access]
) -> tuple[list[Runbook], list[CatalogProblem]]:
    if data is None:
        return [], []
    items = data if isinstance(data, list) else [data]
    runbooks: list[tuple[int, Runbook]] = []
    problems: list[CatalogProblem] = []
    for index, item in enumerate(items):
        prefix = f"{index}." if isinstance(data, list) else ""
        if not isinstance(item, dict):
            problems.append(CatalogProblem(name, prefix.rstrip("."), "must be a mapping"))
            continue
        try:
            doc = RunbookDoc.model_validate(item)
        except ValidationError as exc:
            problems.extend(
                CatalogProblem(name, prefix + _key_path(e["loc"]), _message(e))
                for e in exc.errors()
            )
            continue
        found = definition_problems(doc, roles)
        problems.extend(CatalogProblem(name, prefix + path, msg) for path, msg in found)
        if not found:
            runbooks.append((index, to_runbook(doc, name)))
    seen: set[str] = set()
    for index, runbook in runbooks:
        if runbook.name in seen:
            message = f"{runbook.name} is defined twice"
            problems.append(CatalogProblem(name, f"{index}.name", message))
        seen.add(runbook.name)
    if problems:
        return [], problems
    return [runbook for _, runbook in runbooks], []


class RunbookCatalog:
    """The runbooks in effect, and the problems of the last reload."""

    def __init__(
        self,
        directory: Path | None,
        *,
        roles: Mapping[str, Access],
        reload_interval_s: float = 5.0,
    ) -> None:
        self._directory = directory
        self._roles = dict(roles)
        self._interval = reload_interval_s
        self._runbooks: dict[str, Runbook] = {}
        self._last_good: dict[str, list[Runbook]] = {}
        self._problems: tuple[CatalogProblem, ...] = ()
        self._fingerprint: Fingerprint | None = None
        self._generation = 0
        self._changed = asyncio.Event()
        self._tasks = TaskOwner("runbook_catalog")

    @classmethod
    def from_settings(cls, settings: RunbookSettings) -> RunbookCatalog:
        """A catalog of ``settings.catalog_dir``, loaded once (no catalog: no runbooks)."""
        catalog = cls(
            settings.catalog_dir,
            roles=roles_from_settings(settings),
            reload_interval_s=settings.reload_interval_s,
        )
        catalog.reload()
        return catalog

    # -- reading --------------------------------------------------------------
    @property
    def roles(self) -> Mapping[str, Access]:
        return self._roles

    @property
    def problems(self) -> tuple[CatalogProblem, ...]:
        """What the last reload found wrong (empty when every file is valid)."""
        return self._problems

    @property
    def generation(self) -> int:
        """Counts the reloads that changed the runbooks or the problems."""
        return self._generation

    def get(self, name: str) -> Runbook | None:
        return self._runbooks.get(name)

    def runbooks(self) -> tuple[Runbook, ...]:
        """Every runbook in effect, by name."""
        return tuple(self._runbooks[name] for name in sorted(self._runbooks))

    async def changed(self, after: int) -> int:
        """Wait until the generation is past ``after``; the new generation."""
        while self._generation <= after:
            await self._changed.wait()
        return self._generation

    # -- reloading ------------------------------------------------------------
    def reload(self) -> bool:
        """Read the directory again (SIGHUP); whether the runbooks or problems changed."""
        if self._directory is None:
            return False
        try:
            paths = _catalog_files(self._directory)
            fingerprint = _fingerprint(paths)
        except OSError as exc:
            problem = CatalogProblem(str(self._directory), "", _os_message(exc))
            self._fingerprint = None
            return self._publish(self._runbooks, (problem,))
        self._fingerprint = fingerprint
        runbooks, problems = self._build(paths)
        return self._publish(runbooks, tuple(problems))

    def reload_if_changed(self) -> bool:
        """Reload when a file was added, removed or modified since the last reload."""
        if self._directory is None:
            return False
        try:
            fingerprint = _fingerprint(_catalog_files(self._directory))
        except OSError:
            fingerprint = None
        if fingerprint is not None and fingerprint == self._fingerprint:
            return False
        return self.reload()

    async def start(self) -> None:
        """Start polling the directory for changes (nothing to poll without one)."""
        if self._directory is not None:
            self._tasks.start(self._poll(), name="poll")

    async def close(self) -> None:
        await self._tasks.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                self.reload_if_changed()
            except Exception:
                # Keep polling: the next change may well be the fix.
                log.exception("runbook_catalog_reload_failed")

    def _build(self, paths: list[Path]) -> tuple[dict[str, Runbook], list[CatalogProblem]]:
        problems: list[CatalogProblem] = []
        fresh: dict[str, list[Runbook]] = {}
        names = {path.name for path in paths}
        self._last_good = {k: v for k, v in self._last_good.items() if k in names}
        for path in paths:
            runbooks, found = _read(path, self._roles)
            if not found:
                fresh[path.name] = runbooks
                continue
            kept = path.name in self._last_good
            problems.extend(CatalogProblem(p.source, p.key_path, p.message, kept) for p in found)
        candidates = {**self._last_good, **fresh}
        # Files whose runbooks are in effect claim their names first, so a new or edited
        # file cannot take over a name that another file holds.
        in_effect = {(r.source, r.name) for r in self._runbooks.values()}
        order = sorted(candidates, key=lambda f: (not _holds(candidates[f], in_effect), f))
        result: dict[str, Runbook] = {}
        for source in order:
            runbooks = candidates[source]
            clash = next((r.name for r in runbooks if r.name in result), None)
            if clash is not None:
                previous = self._last_good.get(source, [])
                fresh.pop(source, None)
                runbooks = [] if any(r.name in result for r in previous) else previous
                message = f"{clash} is already defined in {result[clash].source}"
                problems.append(CatalogProblem(source, "name", message, bool(runbooks)))
            result.update((r.name, r) for r in runbooks)
        self._last_good.update(fresh)
        return result, problems

    def _publish(
        self, runbooks: Mapping[str, Runbook], problems: tuple[CatalogProblem, ...]
    ) -> bool:
        changed = dict(runbooks) != self._runbooks or problems != self._problems
        for problem in problems:
            if problem not in self._problems:
                log.warning(
                    "runbook_catalog_problem",
                    source=problem.source,
                    key_path=problem.key_path,
                    problem=problem.message,
                )
        self._runbooks = dict(runbooks)
        self._problems = problems
        if changed:
            self._generation += 1
            self._changed.set()
            self._changed = asyncio.Event()
            log.info("runbook_catalog_loaded", runbooks=len(runbooks), problems=len(problems))
        return changed


def _holds(runbooks: list[Runbook], in_effect: set[tuple[str, str]]) -> bool:
    return any((r.source, r.name) in in_effect for r in runbooks)


def _catalog_files(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.iterdir()
        if not path.name.startswith(".") and path.suffix in SUFFIXES and path.is_file()
    )


def _fingerprint(paths: list[Path]) -> Fingerprint:
    marks: list[tuple[str, int, int, int]] = []
    for path in paths:
        stat = path.stat()
        marks.append((path.name, stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(marks)


def _read(path: Path, roles: Mapping[str, Access]) -> tuple[list[Runbook], list[CatalogProblem]]:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return [], [CatalogProblem(path.name, "", _os_message(exc))]
    if len(data) > MAX_FILE_BYTES:
        return [], [CatalogProblem(path.name, "", f"larger than {MAX_FILE_BYTES} bytes")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], [CatalogProblem(path.name, "", "not UTF-8 text")]
    return parse_file(path.name, text, roles)


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a mapping with the same key twice (the last would win)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key} is given twice", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None)
    ours = isinstance(problem, str) and ("given twice" in problem or "plain value" in problem)
    detail = f": {problem}" if ours else ""
    return f"not valid YAML{where}{detail}"


def _key_path(loc: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in loc]
    # A tagged union puts the tag in the path (executor.exec.argv): leave it out.
    if len(parts) > 1 and parts[0] == "executor" and parts[1] in ("http", "exec", "kubernetes-job"):
        del parts[1]
    return ".".join(parts) or "(top level)"


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (misspelt?)"
    if kind == "union_tag_not_found":
        return "needs a type: http, exec or kubernetes-job"
    if kind == "union_tag_invalid":
        return "type must be http, exec or kubernetes-job"
    return str(error["msg"]).removeprefix("Value error, ")


def _os_message(exc: OSError) -> str:
    return f"cannot read: {exc.strerror or type(exc).__name__}"
