"""S6 at the manifest level: thousands of hostile values rendered into a Job template and
created through the fake API server each land as one literal JSON string (in ``args``,
in an ``env`` value, inside a longer string) and never change the Job's structure; the
only values refused are those JSON cannot carry unchanged (lone surrogates) and Jobs too
large for the API server, and a refused Job is never sent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.runbooks.executors.base import ExecutorError
from bridge.runbooks.executors.kube_client import KubeClient, KubeSettings
from bridge.runbooks.executors.kubejob_manifest import MAX_MANIFEST_BYTES, build_manifest
from bridge.runbooks.model import Value
from devtools.fake_kube import FakeKube
from tests.integration.kube_rig import NAMESPACE, invocation, job_template

FRAGMENTS = (
    "\n", "\r\n", "\r", ";", "&", "&&", "|", "||", "$(id)", "`id`", "${IFS}", "$HOME", "../",
    "..", "/etc/passwd", "'", '"', "\\", "*", "?", "~", "<", ">", "2>&1", "#", "%s", "{}",
    "{a}", "{{", "}}", "{v0}", "{secret:TOKEN}", '"}', '"]', '", "privileged": true, "x": "',
    "]}", "-", "--", " ", "\t", "\x1b[31m", "\x7f", "\u202e", "\u2066", "\uff1b", "\u037e",
    "\uff0f", "\u0430", "\u200b", "\ufeff", "\u2028", "e\u0301", "\U0001f600", "\udc80",
    "\ud800", "\x00", "%00", "%2e%2e%2f", "\\u0000", "null", "true", "0", "[]",
)  # fmt: skip
PER_JOB = 30

fragment_or_text = st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6))
small_values = st.lists(fragment_or_text, max_size=10).map("".join)
big_values = st.sampled_from(FRAGMENTS).map(lambda piece: (piece * 65_536)[:65_536])
batches = st.tuples(
    st.lists(small_values, min_size=PER_JOB - 1, max_size=PER_JOB - 1),
    st.lists(big_values, min_size=0, max_size=1),
).map(lambda parts: (parts[0] + parts[1] + ["plain"] * PER_JOB)[:PER_JOB])


def template() -> dict[str, Any]:
    args: list[str] = []
    for index in range(PER_JOB):
        args += ["echo", f"{{v{index}}}", "echo", f"<{{v{index}}}>"]
    return job_template(args, env={f"V{index}": f"{{v{index}}}" for index in range(PER_JOB)})


def valid_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped_size(values: list[str]) -> int:
    """What the values take in the Job's JSON: each is sent three times, escaped."""
    return 3 * sum(len(json.dumps(value)) for value in values)


def shape(node: Any) -> Any:
    """The structure of a JSON document: every string leaf blanked."""
    if isinstance(node, dict):
        return {key: shape(value) for key, value in node.items()}
    if isinstance(node, list):
        return [shape(item) for item in node]
    return "" if isinstance(node, str) else node


def test_s6_hostile_values_are_literal_strings_in_the_created_job(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    kube = FakeKube()
    loop.run_until_complete(kube.start())
    client = KubeClient(
        KubeSettings.explicit(
            base_url=kube.base_url, token_file=kube.write_token_file(tmp_path / "token")
        )
    )
    reference_args: dict[str, Value] = {f"v{i}": "plain" for i in range(PER_JOB)}
    reference = build_manifest(
        invocation(template(), reference_args),
        prefix="runbook",
        default_namespace="default",
        secrets={},
    )
    reference_shape = shape(reference.body)
    counted = [0, 0]  # [values created literally, values in a refused Job]

    async def create_and_read_back(values: list[str]) -> dict[str, Any] | None:
        args: dict[str, Value] = {f"v{i}": value for i, value in enumerate(values)}
        run = invocation(template(), args, run_id=f"R-{len(kube.requests)}")
        try:
            manifest = build_manifest(
                run, prefix="runbook", default_namespace="default", secrets={}
            )
        except ExecutorError as refused:
            reason = str(refused)
        else:
            reason = ""
        if reason:
            if all(valid_unicode(value) for value in values):
                assert "bytes" in reason
                assert escaped_size(values) > MAX_MANIFEST_BYTES // 2
            return None
        assert all(valid_unicode(value) for value in values)
        assert escaped_size(values) <= MAX_MANIFEST_BYTES
        await client.create_job(manifest.namespace, manifest.body)
        stored = kube.job(NAMESPACE, manifest.name)
        assert stored is not None
        created = stored.to_json()
        await client.delete_job(manifest.namespace, manifest.name)
        return created

    @settings(
        max_examples=440,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(values=batches)
    def check(values: list[str]) -> None:
        invalid = [value for value in values if not valid_unicode(value)]
        small = [value for value in values if valid_unicode(value) and len(value) < 1000]
        big = [value for value in values if valid_unicode(value) and len(value) >= 1000]
        for job_values in (small, *([value] for value in big), *([value] for value in invalid)):
            padded = [*job_values, *["plain"] * (PER_JOB - len(job_values))]
            through_the_api(padded, len(job_values))

    def through_the_api(values: list[str], meant: int) -> None:
        posts_before = len(kube.requests_to("POST"))
        created = loop.run_until_complete(create_and_read_back(values))
        if created is None:
            assert len(kube.requests_to("POST")) == posts_before
            counted[1] += meant
            return
        container = created["spec"]["template"]["spec"]["containers"][0]
        expected_args: list[str] = []
        for value in values:
            expected_args += ["echo", value, "echo", f"<{value}>"]
        assert container["args"] == expected_args
        assert container["env"] == [
            {"name": f"V{index}", "value": value} for index, value in enumerate(values)
        ]
        sent = {key: created[key] for key in ("apiVersion", "kind", "metadata", "spec")}
        for volatile in ("uid", "creationTimestamp", "generation", "resourceVersion"):
            sent["metadata"].pop(volatile)
        assert shape(sent["metadata"]) == shape(
            {**reference.body["metadata"], "name": created["metadata"]["name"]}
        )
        assert shape(container) == shape(
            reference_shape["spec"]["template"]["spec"]["containers"][0]
        )
        counted[0] += meant

    try:
        check()
    finally:
        loop.run_until_complete(client.close())
        loop.run_until_complete(kube.stop())
        loop.close()
    assert counted[0] + counted[1] >= 10_000, counted  # values thrown at the executor
    assert counted[1] > 0, "no refusable value was ever generated"
    assert kube.running_pods() == []
