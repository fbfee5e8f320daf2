"""``incident-bridge postmortem ID`` as an operator runs it: a real process, real MongoDB."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.write_concern import WriteConcern

from bridge import exitcodes
from bridge.incidents.mongo_store import MongoIncidentStore
from bridge.incidents.postmortem import render_postmortem
from bridge.model import (
    Body,
    EventID,
    Kind,
    Platform,
    RemoteMessageID,
    RemoteRef,
    RemoteUserID,
    Sender,
    TimelineEvent,
)
from bridge.timeline.mongo import MongoTimelineStore
from devtools.servers import MongoServer, free_port
from tests.support.fakes import FakeClock
from tests.unit.incidents.test_postmortem import INC, MATRIX_ROOM, NOW, T, drill, own

DEADLINE_S = 60.0
CHATTY = 1_200
"""Extra messages, so the command reads the timeline over several pages."""
EVE = Sender(platform=Platform.MATRIX, user_id=RemoteUserID("@eve:example.org"), display_name="Eve")


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Seeded:
    config: Path
    expected: str


async def postmortem(*args: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "postmortem",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("BRIDGE")},
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), DEADLINE_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def write_config(tmp_path: Path, uri: str, database: str, mongo_extra: str = "") -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        f"mongo:\n  uri: '{uri}'\n  database: {database}\n  server_selection_timeout_s: 1\n"
        f"{mongo_extra}"
        "matrix:\n  server_name: example.org\n"
        "teams:\n  app_id: app\n"
        "logging:\n  format: json\n"
    )
    return path


@pytest.fixture
async def seeded(mongo_server: MongoServer, tmp_path: Path) -> AsyncIterator[Seeded]:
    """The drill incident and its timeline (plus many messages) stored in MongoDB."""
    database = f"postmortem_{uuid.uuid4().hex[:12]}"
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri, tz_aware=True)
    store = MongoTimelineStore(
        client, database, clock=FakeClock(), write_concern=WriteConcern(w=1, j=True)
    )
    incident, events = drill()
    chatter = [
        TimelineEvent(
            id=EventID(f"01CHAT{number:05d}"),
            incident_id=INC,
            kind=Kind.MESSAGE,
            origin=RemoteRef(room=MATRIX_ROOM, message_id=RemoteMessageID(f"$chat{number}")),
            origin_variant="",
            sender=EVE,
            body=Body(text=f"update {number}"),
            occurred_at=T + timedelta(minutes=2, milliseconds=number),
            received_at=T,
        )
        for number in range(CHATTY)
    ]
    # Mirrors are stored pending, then recorded as sent (as delivery does).
    unsent = [replace(e, mirrors=()) for e in (*events, *chatter)]
    await store.append_many(
        [(e, [m.room for m in o.mirrors]) for e, o in zip(unsent, (*events, *chatter), strict=True)]
    )
    for event in events:
        for mirror in event.mirrors:
            await store.set_mirror(event.id, mirror)
    incidents = MongoIncidentStore(store.database)
    await incidents.create(incident)
    expected = render_postmortem(incident, [*events, *chatter], now=NOW, is_own=own)
    yield Seeded(write_config(tmp_path, mongo_server.uri, database), expected)
    await client.drop_database(database)
    await client.close()


def without_generated(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if not line.startswith("- Generated: ")]


async def test_prints_the_postmortem_of_a_stored_incident(seeded: Seeded) -> None:
    run = await postmortem(INC, "--config", str(seeded.config))
    assert run.code == exitcodes.OK, run.stderr
    assert run.stderr == ""
    assert without_generated(run.stdout) == without_generated(seeded.expected)
    assert "  - Eve `@eve:example.org`: 1200 message(s)" in run.stdout
    assert "- Time to acknowledge: 3 min (180 s, at 2026-11-01 12:03:00 UTC)" in run.stdout
    assert "- Time to resolve: 45 min (2700 s, at 2026-11-01 12:45:00 UTC)" in run.stdout
    assert "teams_aad-bob" not in run.stdout  # the ghost's echo and the bot are no participants


async def test_writes_the_postmortem_to_a_file(seeded: Seeded, tmp_path: Path) -> None:
    target = tmp_path / "INC-7.md"
    run = await postmortem(INC, "--config", str(seeded.config), "--output", str(target))
    assert run.code == exitcodes.OK, run.stderr
    assert run.stdout == ""
    assert without_generated(target.read_text(encoding="utf-8")) == without_generated(
        seeded.expected
    )


async def test_an_unknown_incident_is_one_line_and_exit_64(seeded: Seeded) -> None:
    run = await postmortem("INC-404", "--config", str(seeded.config))
    assert run.code == exitcodes.USAGE
    assert run.stdout == ""
    assert run.stderr == "incident-bridge: no incident INC-404\n"


async def test_an_unwritable_output_is_one_line(seeded: Seeded, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "INC-7.md"
    run = await postmortem(INC, "--config", str(seeded.config), "--output", str(target))
    assert run.code == exitcodes.USAGE
    assert run.stderr.startswith(f"incident-bridge: cannot write {target}")
    assert len(run.stderr.splitlines()) == 1


async def test_unreachable_mongodb_exits_69_without_a_traceback(tmp_path: Path) -> None:
    uri = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    config = write_config(tmp_path, uri, "nowhere", "  startup_timeout_s: 0\n")
    run = await postmortem(INC, "--config", str(config))
    assert run.code == exitcodes.UNAVAILABLE
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        "incident-bridge: cannot reach MongoDB: ServerSelectionTimeoutError"
    ]
    assert "Traceback" not in run.stderr


async def test_invalid_settings_exit_78(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("mongo: {}\n")
    run = await postmortem(INC, "--config", str(config))
    assert run.code == exitcodes.CONFIG
    assert "mongo.uri" in run.stderr


async def test_a_missing_id_is_a_usage_error() -> None:
    run = await postmortem()
    assert run.code == exitcodes.USAGE
