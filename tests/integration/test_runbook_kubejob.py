"""The ``kubernetes-job`` executor against the fake API server on loopback: the Job it
creates, logs streamed in order, outcomes, 409 AlreadyExists as already dispatched, S6 at
the manifest level, R12 (timeout within 1 s, cancel within 5 s, nothing left running),
and refusals that say what is wrong without the token or a secret."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.runbooks.executors.base import MASK, ExecutorError
from bridge.runbooks.executors.kube_client import KubeClient, KubeSettings
from bridge.runbooks.executors.kubejob import KubeJobSettings, KubernetesJobExecutor
from bridge.runbooks.model import RunState
from devtools.fake_kube import FakeKube
from tests.integration.kube_rig import NAMESPACE, Collected, invocation, job_template

CANARY = "canary-kube-secret-5d1e0b"
FAST = KubeJobSettings(poll_interval_s=0.05, log_drain_s=1.0)


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as server:
        yield server


@pytest.fixture
async def client(kube: FakeKube, tmp_path: Path) -> AsyncIterator[KubeClient]:
    settings = KubeSettings.explicit(
        base_url=kube.base_url,
        token_file=kube.write_token_file(tmp_path / "token"),
        namespace="fallback",
    )
    kube_client = KubeClient(settings)
    yield kube_client
    await kube_client.close()


@pytest.fixture
def executor(client: KubeClient) -> KubernetesJobExecutor:
    return KubernetesJobExecutor(client=client, settings=FAST)


def created_body(kube: FakeKube) -> dict[str, Any]:
    posts = [r for r in kube.requests_to("POST", "/jobs") if r.status == 201]
    assert len(posts) == 1, posts
    body: dict[str, Any] = posts[0].body
    return body


# -- the Job and its output --------------------------------------------------------------


async def test_success_streams_the_pod_log_in_order_while_the_job_runs(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    template = job_template(
        ["echo", "hello {who}", "log-lines", "30", "sleep", "0.3", "echo", "done"]
    )
    output = Collected()
    finished_when_first_line_came: list[bool] = []

    def sink(text: str) -> None:
        if not output.chunks:
            job = kube.job(NAMESPACE, "runbook-r-1")
            finished_when_first_line_came.append(job is None or job.finished)
        output(text)

    outcome = await executor.run(invocation(template, {"who": "world"}), sink)

    assert outcome.state is RunState.SUCCEEDED
    assert outcome.summary == "Job runbook-r-1 Complete (CompletionsReached)"
    assert output.lines == ["hello world", *(f"line {n}" for n in range(1, 31)), "done"]
    assert finished_when_first_line_came == [False]
    assert kube.running_pods() == []
    assert kube.requests_to("DELETE") == []


async def test_the_created_job_carries_what_the_bridge_sets(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    template = job_template(
        ["echo", "x"], job_spec={"activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 600}
    )
    template["metadata"]["name"] = "chosen-by-the-template"
    template["metadata"]["generateName"] = "nope-"
    outcome = await executor.run(invocation(template, run_id="R-42", timeout_s=90.5), Collected())
    assert outcome.state is RunState.SUCCEEDED

    body = created_body(kube)
    request = kube.requests_to("POST", "/jobs")[0]
    assert request.path == f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    metadata = body["metadata"]
    assert metadata["name"] == "runbook-r-42"
    assert "generateName" not in metadata
    assert metadata["namespace"] == NAMESPACE
    assert metadata["labels"] == {
        "team": "sre",
        "app.kubernetes.io/managed-by": "incident-bridge",
        "incident-bridge/run": "R-42",
    }
    assert metadata["annotations"]["incident-bridge/runbook"] == "job-under-test"
    assert len(metadata["annotations"]["incident-bridge/manifest-digest"]) == 64
    spec = body["spec"]
    assert spec["activeDeadlineSeconds"] == 90  # never longer than the run's timeout
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == 600
    pod_template = spec["template"]
    assert pod_template["metadata"]["labels"]["incident-bridge/run"] == "R-42"
    assert pod_template["spec"]["restartPolicy"] == "Never"


async def test_a_shorter_deadline_and_a_backoff_limit_in_the_template_are_kept(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    template = job_template(
        ["echo", "attempt", "fail", "2"],
        job_spec={"activeDeadlineSeconds": 20, "backoffLimit": 1},
    )
    output = Collected()
    outcome = await executor.run(invocation(template), output)

    assert outcome.state is RunState.FAILED
    assert outcome.summary == "Job runbook-r-1 Failed (BackoffLimitExceeded); exit code 2"
    assert output.lines == ["attempt", "attempt"]  # both pods, one after the other
    body = created_body(kube)
    assert body["spec"]["activeDeadlineSeconds"] == 20
    assert body["spec"]["backoffLimit"] == 1


async def test_a_failed_job_is_failed_with_its_condition_reason_and_exit_code(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    output = Collected()
    outcome = await executor.run(invocation(job_template(["echo", "boom", "fail", "3"])), output)
    assert outcome.state is RunState.FAILED
    assert outcome.summary == "Job runbook-r-1 Failed (BackoffLimitExceeded); exit code 3"
    assert output.lines == ["boom"]
    assert kube.running_pods() == []


async def test_the_jobs_own_deadline_is_a_failure_named_so(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    template = job_template(["echo", "slow", "sleep", "30"], job_spec={"activeDeadlineSeconds": 1})
    outcome = await executor.run(invocation(template), Collected())
    assert outcome.state is RunState.FAILED
    assert outcome.summary.startswith("Job runbook-r-1 Failed (DeadlineExceeded)")
    assert kube.running_pods() == []


async def test_a_pending_pod_is_waited_for(tmp_path: Path) -> None:
    async with FakeKube(start_delay_s=0.4) as kube:
        client = KubeClient(
            KubeSettings.explicit(
                base_url=kube.base_url, token_file=kube.write_token_file(tmp_path / "t")
            )
        )
        try:
            executor = KubernetesJobExecutor(client=client, settings=FAST)
            output = Collected()
            outcome = await executor.run(invocation(job_template(["log-lines", "3"])), output)
        finally:
            await client.close()
        assert outcome.state is RunState.SUCCEEDED
        assert output.lines == ["line 1", "line 2", "line 3"]
        refused = [r for r in kube.requests_to("GET", "/log") if r.status == 400]
        assert refused, "the log was never asked for while the pod was pending"


async def test_a_dropped_log_stream_resumes_without_repeating_or_losing_lines(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    template = job_template(
        ["echo", "one", "echo", "two", "sleep", "0.5", "echo", "three", "echo", "four"]
    )
    output = Collected()
    runs = asyncio.create_task(executor.run(invocation(template), output))
    try:
        await output.seen("two\n")
        kube.cut_log_streams()
        outcome = await asyncio.wait_for(runs, 10)
    finally:
        runs.cancel()
    assert outcome.state is RunState.SUCCEEDED
    assert output.lines == ["one", "two", "three", "four"]
    streams = kube.requests_to("GET", "/log")
    assert len(streams) >= 2
    assert "sinceTime" in streams[-1].query
    assert all(r.query.get("follow") == "true" for r in streams)


# -- 409 AlreadyExists: already dispatched ----------------------------------------------


async def test_a_second_start_of_the_same_run_follows_the_same_job(
    kube: FakeKube, client: KubeClient
) -> None:
    template = job_template(["echo", "started", "sleep", "0.6", "echo", "finished"])
    first_output, second_output = Collected(), Collected()
    first = asyncio.create_task(
        KubernetesJobExecutor(client=client, settings=FAST).run(
            invocation(template, run_id="R-9"), first_output
        )
    )
    try:
        await first_output.seen("started\n")
        second = await KubernetesJobExecutor(client=client, settings=FAST).run(
            invocation(template, run_id="R-9"), second_output
        )
        first_outcome = await asyncio.wait_for(first, 10)
    finally:
        first.cancel()

    assert first_outcome.state is second.state is RunState.SUCCEEDED
    assert [r.status for r in kube.requests_to("POST", "/jobs")] == [201, 409]
    job = kube.job(NAMESPACE, "runbook-r-9")
    assert job is not None
    assert len(job.pods) == 1
    assert "already dispatched" in second_output.lines[0]
    assert second_output.lines[1:] == ["started", "finished"]
    assert first_output.lines == ["started", "finished"]
    assert kube.requests_to("DELETE") == []


async def test_attaching_to_a_finished_job_reports_its_outcome(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    template = job_template(["echo", "ran once"])
    await executor.run(invocation(template, run_id="R-5"), Collected())
    again = Collected()
    outcome = await executor.run(invocation(template, run_id="R-5"), again)
    assert outcome.state is RunState.SUCCEEDED
    assert again.lines[1:] == ["ran once"]
    assert len(kube.requests_to("POST", "/jobs")) == 2
    job = kube.job(NAMESPACE, "runbook-r-5")
    assert job is not None
    assert len(job.pods) == 1


async def test_a_job_of_the_same_name_that_is_not_this_runs_is_left_alone(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    await executor.run(invocation(job_template(["echo", "a"]), run_id="R-6"), Collected())
    with pytest.raises(ExecutorError, match="not created for this run"):
        await executor.run(invocation(job_template(["echo", "b"]), run_id="R-6"), Collected())
    assert kube.job(NAMESPACE, "runbook-r-6") is not None
    assert kube.requests_to("DELETE") == []


# -- S6: hostile values are literal strings in the Job -----------------------------------

HOSTILE = (
    "a\nb", "; rm -rf /", "& whoami", "| cat /etc/passwd", "$(id)", "`id`", "../../etc",
    "nul\x00byte", "\u0430dmin", "\u202eevil", '"}, "privileged": true, "x": {"', "{who}",
    "{secret:TOKEN}", "x" * 65_536,
)  # fmt: skip


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
async def test_s6_a_hostile_value_is_one_literal_arg_env_value_and_log_line(
    kube: FakeKube, executor: KubernetesJobExecutor, value: str
) -> None:
    template = job_template(
        ["echo", "{v}", "env", "V", "echo", "end"], env={"V": "{v}", "FIXED": "f"}
    )
    output = Collected()
    outcome = await executor.run(invocation(template, {"v": value}), output)
    assert outcome.state is RunState.SUCCEEDED
    container = created_body(kube)["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["echo", value, "env", "V", "echo", "end"]
    assert container["env"] == [{"name": "V", "value": value}, {"name": "FIXED", "value": "f"}]
    assert output.text == f"{value}\n{value}\nend\n"


# -- R12: timeout and cancel ----------------------------------------------------------------


async def test_r12_timeout_returns_within_1s_deletes_the_job_and_leaves_nothing(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    template = job_template(["echo", "working", "sleep", "120"])
    output = Collected()
    loop = asyncio.get_running_loop()

    async def run_with_deadline(deadline: float) -> None:
        async with asyncio.timeout_at(deadline):
            await executor.run(invocation(template, run_id="R-12"), output)

    deadline = loop.time() + 1.5
    with pytest.raises(TimeoutError):
        await run_with_deadline(deadline)
    returned_after = loop.time() - deadline

    assert "working" in output.lines
    assert returned_after < 1.0, returned_after
    assert kube.job(NAMESPACE, "runbook-r-12") is None
    assert kube.running_pods() == []
    deletes = kube.requests_to("DELETE", "/jobs/runbook-r-12")
    assert [(r.status, r.query.get("propagationPolicy")) for r in deletes] == [(200, "Background")]


async def test_r12_cancel_takes_effect_within_5s_even_if_cancelled_again(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    output = Collected()
    runs = asyncio.create_task(
        executor.run(invocation(job_template(["echo", "up", "sleep", "120"])), output)
    )
    try:
        await output.seen("up\n")
        started = time.monotonic()
        runs.cancel()
        await asyncio.sleep(0)  # the delete has begun: a second cancel must not cut it short
        runs.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(runs, return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        runs.cancel()
    assert runs.cancelled()
    assert elapsed < 5.0
    assert kube.job(NAMESPACE, "runbook-r-1") is None
    assert kube.running_pods() == []


async def test_r12_a_cancel_while_the_create_is_in_flight_still_deletes(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    slow = kube.slow_next(30, method="POST")  # created, but the answer never comes in time
    runs = asyncio.create_task(
        executor.run(invocation(job_template(["echo", "up", "sleep", "120"])), Collected())
    )
    try:
        async with asyncio.timeout(5):
            await slow.reached.wait()
        started = time.monotonic()
        runs.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(runs, return_exceptions=True)
        elapsed = time.monotonic() - started
    finally:
        runs.cancel()
    assert runs.cancelled()
    assert elapsed < 1.0, elapsed
    assert [r.status for r in kube.requests_to("DELETE")] == [200]
    assert kube.cluster.jobs == {}
    assert kube.running_pods() == []


async def test_r12_a_cancel_between_create_attempts_deletes_what_may_exist(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    refused = kube.fail_next(503, count=1, method="POST", retry_after=1.0)
    runs = asyncio.create_task(
        executor.run(invocation(job_template(["sleep", "120"])), Collected())
    )
    try:
        async with asyncio.timeout(5):
            await refused.reached.wait()
        runs.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(runs, return_exceptions=True)
    finally:
        runs.cancel()
    assert runs.cancelled()
    assert [r.status for r in kube.requests_to("POST")] == [503]
    assert [r.status for r in kube.requests_to("DELETE")] == [404]
    assert kube.cluster.jobs == {}


# -- refusals: clear, and never the token or a secret ---------------------------------------


async def test_a_wrong_token_is_a_clear_error_without_the_token(
    kube: FakeKube, tmp_path: Path
) -> None:
    wrong = "wrong-token-" + CANARY
    token_file = tmp_path / "wrong-token"
    token_file.write_text(wrong)
    client = KubeClient(KubeSettings.explicit(base_url=kube.base_url, token_file=token_file))
    executor = KubernetesJobExecutor(client=client, settings=FAST)
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(ExecutorError) as refused:
            await executor.run(invocation(job_template(["echo", "x"])), Collected())
    finally:
        await client.close()
    message = str(refused.value)
    assert "401 Unauthorized" in message
    assert "token" in message
    assert wrong not in message
    assert kube.token not in message
    assert wrong not in json.dumps(logs, default=str)
    assert [r.authorized for r in kube.requests] == [False]
    assert kube.cluster.jobs == {}


async def test_missing_rbac_is_a_clear_error(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    kube.forbidden_namespaces.add(NAMESPACE)
    with pytest.raises(ExecutorError, match=r"403 Forbidden.*RBAC") as refused:
        await executor.run(invocation(job_template(["echo", "x"])), Collected())
    assert "cannot create resource" in str(refused.value)


async def test_a_secret_quoted_by_the_api_server_is_masked(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    template = job_template(["echo", "x"], env={"TOKEN": "{secret:TOKEN}"})
    template["spec"]["template"]["spec"]["containers"][0]["name"] = "Not_A_Label"
    run = invocation(template, secrets={"TOKEN": CANARY})
    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(ExecutorError, match="422 Invalid") as refused,
    ):
        await executor.run(run, Collected())
    assert CANARY not in str(refused.value)
    assert CANARY not in json.dumps(logs, default=str)
    # what reached the API server had the secret in place
    sent = kube.requests_to("POST", "/jobs")[0].body
    assert sent["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == CANARY


async def test_transient_api_errors_are_retried(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    kube.fail_next(503, count=1, method="POST")
    kube.fail_next(429, count=1, method="POST", retry_after=0.1)
    kube.fail_next(500, count=3, method="GET", path_contains="/jobs/")
    outcome = await executor.run(invocation(job_template(["echo", "x"])), Collected())
    assert outcome.state is RunState.SUCCEEDED
    assert [r.status for r in kube.requests_to("POST", "/jobs")] == [503, 429, 201]


async def test_an_api_that_stays_down_at_create_is_an_error_and_nothing_is_left(
    kube: FakeKube, executor: KubernetesJobExecutor
) -> None:
    kube.fail_next(500, count=3, method="POST")
    with pytest.raises(ExecutorError, match="unavailable"):
        await executor.run(invocation(job_template(["echo", "x"])), Collected())
    assert len(kube.requests_to("DELETE")) == 1
    assert kube.cluster.jobs == {}


# -- the plan --------------------------------------------------------------------------------


def test_the_plan_shows_the_job_with_secrets_masked(client: KubeClient) -> None:
    template = job_template(
        ["echo", "{who}", "echo", "{secret:TOKEN}"], env={"AUTH": "Bearer {secret:TOKEN}"}
    )
    executor = KubernetesJobExecutor(client=client, settings=FAST)
    run = invocation(template, {"who": "w\u0430rld; rm"}, secrets={"TOKEN": CANARY})
    plan = executor.plan(run)
    first, _, manifest = plan.partition("\n")
    assert first == f"POST /apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    body = json.loads(manifest)
    container = body["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["echo", "w\u0430rld; rm", "echo", MASK]
    assert container["env"] == [{"name": "AUTH", "value": f"Bearer {MASK}"}]
    assert body["metadata"]["name"] == "runbook-r-1"
    assert "\\u0430" in manifest  # look-alike characters are visible in a dry run
    assert CANARY not in plan
    # A dry run needs no secret values.
    assert MASK in executor.plan(invocation(template, {"who": "w"}))


async def test_a_runbook_without_a_namespace_uses_the_service_accounts(
    kube: FakeKube, client: KubeClient
) -> None:
    from tests.integration.kube_rig import runbook  # noqa: PLC0415

    base = invocation(job_template(["echo", "x"]))
    run = type(base)(
        run_id=base.run_id,
        runbook=runbook(job_template(["echo", "x"]), namespace=""),
        args={},
    )
    outcome = await KubernetesJobExecutor(client=client, settings=FAST).run(run, Collected())
    assert outcome.state is RunState.SUCCEEDED
    assert kube.job("fallback", "runbook-r-1") is not None
