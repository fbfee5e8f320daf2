"""Typed settings: a YAML file, then environment overrides, then validation.

Environment overrides use one scheme: ``BRIDGE__SECTION__KEY=value`` sets
``section.key`` (any depth; names are case-insensitive; values are read as
YAML scalars, so ``true`` and ``8080`` keep their types).

Any setting ``name`` can instead be given as ``name_file``: the path of a file
whose contents (without the trailing newline) are the value. Kubernetes
Secrets mounted as files are used that way.

Every problem is reported with its key path (``mongo.uri``), all at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bridge.config.core import Settings
from bridge.errors import ConfigError, ConfigProblem

ENV_PREFIX = "BRIDGE__"
FILE_SUFFIX = "_file"


def load_settings(path: Path | None, environ: Mapping[str, str]) -> Settings:
    """Read, merge and validate the settings, or raise ``ConfigError`` listing every problem."""
    problems: list[ConfigProblem] = []
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(path, problems)
    _apply_env(raw, environ, problems)
    _resolve_files(raw, (), problems)
    if problems:
        raise ConfigError(problems)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_problem(err) for err in exc.errors()]) from None


def _read_yaml(path: Path, problems: list[ConfigProblem]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(ConfigProblem(str(path), f"cannot read the settings file: {exc.strerror}"))
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problems.append(ConfigProblem(str(path), f"not valid YAML{where}"))
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(ConfigProblem(str(path), "the top level must be a mapping"))
        return {}
    return data


def _apply_env(
    raw: dict[str, Any], environ: Mapping[str, str], problems: list[ConfigProblem]
) -> None:
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            problems.append(ConfigProblem(name, "malformed override name"))
            continue
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(ConfigProblem(name, f"{part} is not a section"))
                break
            node = child
        else:
            node[parts[-1]] = _scalar(environ[name])


def _scalar(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float | bool) for v in value):
        return value  # a flow sequence such as [a, b]
    return text


def _resolve_files(
    node: dict[str, Any], path: tuple[str, ...], problems: list[ConfigProblem]
) -> None:
    for key in list(node):
        value = node[key]
        if isinstance(value, dict):
            _resolve_files(value, (*path, key), problems)
            continue
        if not (isinstance(key, str) and key.endswith(FILE_SUFFIX)):
            continue
        target = key[: -len(FILE_SUFFIX)]
        key_path = ".".join((*path, key))
        if target in node:
            problems.append(ConfigProblem(key_path, f"give either {target} or {key}, not both"))
            continue
        if not isinstance(value, str):
            problems.append(ConfigProblem(key_path, "must be a file path"))
            continue
        try:
            node[target] = Path(value).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            problems.append(ConfigProblem(key_path, f"cannot read {value}: {exc.strerror}"))
            continue
        del node[key]


def _problem(error: Mapping[str, Any]) -> ConfigProblem:
    key_path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "missing":
        message = "required setting is missing"
    elif kind == "extra_forbidden":
        message = "unknown setting (misspelt?)"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    return ConfigProblem(key_path, message)
