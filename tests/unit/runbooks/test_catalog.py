"""The runbook catalog: loading a directory, last good kept, reload on change."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from bridge.config.core import RunbookRoleSettings, RunbookSettings
from bridge.runbooks.catalog import CatalogProblem, RunbookCatalog, parse_file
from bridge.runbooks.model import (
    Access,
    ExecSpec,
    HttpSpec,
    KubernetesJobSpec,
    ParamType,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "deploy" / "runbooks"
ROLES = {
    "sre": Access(mxids=("@alice:example.org",)),
    "sre-leads": Access(mxids=("@carol:example.org",)),
}


def runbook_yaml(name: str = "echo", *, argv: str = '["/bin/echo", "{word}"]') -> str:
    return textwrap.dedent(
        f"""\
        name: {name}
        description: Says a word.
        params:
          - name: word
            type: string
            pattern: "[a-z]+"
            required: true
        access:
          mxids: ["@alice:example.org"]
        timeout: 10s
        executor:
          type: exec
          argv: {argv}
        """
    )


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    # Make each write visible to the fingerprint even within one clock tick.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return path


def catalog_of(directory: Path, interval: float = 5.0) -> RunbookCatalog:
    catalog = RunbookCatalog(directory, roles=ROLES, reload_interval_s=interval)
    catalog.reload()
    return catalog


def test_the_example_catalog_loads_one_runbook_per_executor() -> None:
    catalog = catalog_of(EXAMPLES)
    assert catalog.problems == ()
    kinds = {r.name: type(r.executor) for r in catalog.runbooks()}
    assert kinds == {
        "collect-diagnostics": ExecSpec,
        "purge-cdn-cache": HttpSpec,
        "restart-deployment": KubernetesJobSpec,
    }
    diagnostics = catalog.get("collect-diagnostics")
    assert diagnostics is not None
    since = next(p for p in diagnostics.params if p.name == "since")
    assert (since.type, since.default, since.minimum, since.maximum) == (
        ParamType.DURATION,
        1800,
        60,
        86400,
    )
    restart = catalog.get("restart-deployment")
    assert restart is not None
    assert restart.approvals.count == 1
    assert restart.approvals.approvers.roles == ("sre-leads",)
    assert restart.timeout.total_seconds() == 600
    assert restart.source == "restart-deployment.yaml"


def test_a_file_may_hold_a_list_and_hidden_or_other_files_are_skipped(tmp_path: Path) -> None:
    both = runbook_yaml("one") + "\n"
    listed = "- " + textwrap.indent(runbook_yaml("one"), "  ")[2:]
    listed += "- " + textwrap.indent(runbook_yaml("two"), "  ")[2:]
    write(tmp_path, "pair.yml", listed)
    write(tmp_path, ".hidden.yaml", both)
    write(tmp_path, "notes.txt", "not a runbook")
    (tmp_path / "..data").mkdir()
    write(tmp_path / "..data", "inner.yaml", runbook_yaml("inner"))
    write(tmp_path, "empty.yaml", "")
    catalog = catalog_of(tmp_path)
    assert catalog.problems == ()
    assert [r.name for r in catalog.runbooks()] == ["one", "two"]


def test_no_directory_means_no_runbooks() -> None:
    catalog = RunbookCatalog.from_settings(RunbookSettings())
    assert catalog.runbooks() == ()
    assert catalog.problems == ()
    assert catalog.reload() is False


def test_from_settings_turns_roles_into_access_rules(tmp_path: Path) -> None:
    settings = RunbookSettings(
        catalog_dir=tmp_path,
        roles={
            "sre": RunbookRoleSettings(
                aad_object_ids=("5F0C2A8E-3B1D-4C6F-9A7E-2D4B8C1E0F93",), matrix_power_level=50
            )
        },
    )
    catalog = RunbookCatalog.from_settings(settings)
    assert catalog.roles["sre"] == Access(
        aad_object_ids=("5f0c2a8e-3b1d-4c6f-9a7e-2d4b8c1e0f93",), matrix_power_level=50
    )


def test_the_digest_ignores_formatting_and_follows_the_definition() -> None:
    (first,), _ = parse_file("a.yaml", runbook_yaml(), ROLES)
    reformatted = runbook_yaml().replace("timeout: 10s", "timeout: 10") + "# a comment\n"
    (second,), _ = parse_file("b.yaml", reformatted, ROLES)
    (changed,), _ = parse_file("a.yaml", runbook_yaml().replace("[a-z]+", "[a-z]{1,9}"), ROLES)
    assert len(first.digest) == 64
    assert first.digest == second.digest
    assert changed.digest != first.digest


def test_a_bad_edit_keeps_the_last_good_version_and_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "echo.yaml", runbook_yaml())
    write(tmp_path, "other.yaml", runbook_yaml("other"))
    catalog = catalog_of(tmp_path)
    good = catalog.get("echo")
    assert good is not None

    write(tmp_path, "echo.yaml", runbook_yaml().replace('"[a-z]+"', '"[a-z"'))
    assert catalog.reload() is True
    assert catalog.get("echo") is good
    assert [str(p) for p in catalog.problems] == [
        "echo.yaml: params.0.pattern: not a valid regular expression"
        " (its previous version stays in effect)"
    ]

    write(tmp_path, "echo.yaml", runbook_yaml().replace("10s", "20s"))
    assert catalog.reload() is True
    fixed = catalog.get("echo")
    assert fixed is not None
    assert fixed.timeout.total_seconds() == 20
    assert catalog.problems == ()


def test_an_invalid_new_file_adds_nothing_and_a_deleted_file_removes_its_runbooks(
    tmp_path: Path,
) -> None:
    write(tmp_path, "echo.yaml", runbook_yaml())
    catalog = catalog_of(tmp_path)
    write(tmp_path, "broken.yaml", "name: [unclosed\n")
    catalog.reload()
    assert [r.name for r in catalog.runbooks()] == ["echo"]
    assert [str(p) for p in catalog.problems] == ["broken.yaml: not valid YAML at line 2"]
    (tmp_path / "echo.yaml").unlink()
    (tmp_path / "broken.yaml").unlink()
    catalog.reload()
    assert catalog.runbooks() == ()
    assert catalog.problems == ()


def test_a_name_taken_by_another_file_is_refused_and_the_holder_keeps_it(tmp_path: Path) -> None:
    write(tmp_path, "z-first.yaml", runbook_yaml("echo"))
    catalog = catalog_of(tmp_path)
    write(tmp_path, "a-second.yaml", runbook_yaml("echo", argv='["/bin/false"]'))
    catalog.reload()
    echo = catalog.get("echo")
    assert echo is not None
    assert echo.source == "z-first.yaml"
    assert [str(p) for p in catalog.problems] == [
        "a-second.yaml: name: echo is already defined in z-first.yaml"
    ]


def test_a_name_given_twice_in_one_file_is_refused(tmp_path: Path) -> None:
    listed = "- " + textwrap.indent(runbook_yaml("one"), "  ")[2:]
    write(tmp_path, "pair.yaml", listed + listed)
    catalog = catalog_of(tmp_path)
    assert catalog.runbooks() == ()
    assert [str(p) for p in catalog.problems] == ["pair.yaml: 1.name: one is defined twice"]


def test_an_unreadable_directory_keeps_the_whole_catalog(tmp_path: Path) -> None:
    directory = tmp_path / "catalog"
    directory.mkdir()
    write(directory, "echo.yaml", runbook_yaml())
    catalog = catalog_of(directory)
    directory.rename(tmp_path / "moved")
    assert catalog.reload() is True
    assert [r.name for r in catalog.runbooks()] == ["echo"]
    assert len(catalog.problems) == 1
    assert catalog.problems[0].message.startswith("cannot read")


def test_reload_if_changed_reads_only_after_a_change(tmp_path: Path) -> None:
    write(tmp_path, "echo.yaml", runbook_yaml())
    catalog = catalog_of(tmp_path)
    generation = catalog.generation
    assert catalog.reload_if_changed() is False
    write(tmp_path, "echo.yaml", runbook_yaml().replace("10s", "30s"))
    assert catalog.reload_if_changed() is True
    assert catalog.generation == generation + 1


async def test_the_poll_task_reloads_on_change(tmp_path: Path) -> None:
    write(tmp_path, "echo.yaml", runbook_yaml())
    catalog = catalog_of(tmp_path, interval=0.02)
    await catalog.start()
    try:
        generation = catalog.generation
        write(tmp_path, "second.yaml", runbook_yaml("second"))
        async with asyncio.timeout(5):
            await catalog.changed(generation)
        assert [r.name for r in catalog.runbooks()] == ["echo", "second"]
    finally:
        await catalog.close()


def test_problems_are_values_that_render_with_file_and_key_path() -> None:
    problem = CatalogProblem("a.yaml", "executor.argv.1", "names no declared parameter (x)")
    assert str(problem) == "a.yaml: executor.argv.1: names no declared parameter (x)"
    assert str(CatalogProblem("a.yaml", "", "not UTF-8 text")) == "a.yaml: not UTF-8 text"


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_both_suffixes_are_read(tmp_path: Path, suffix: str) -> None:
    write(tmp_path, f"echo{suffix}", runbook_yaml())
    assert [r.name for r in catalog_of(tmp_path).runbooks()] == ["echo"]


def test_a_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    (tmp_path / "latin.yaml").write_bytes(b"name: caf\xe9\n")
    catalog = catalog_of(tmp_path)
    assert [str(p) for p in catalog.problems] == ["latin.yaml: not UTF-8 text"]
