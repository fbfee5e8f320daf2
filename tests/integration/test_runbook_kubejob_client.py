"""The Kubernetes REST client and the fake API server it is tested against: settings from
a service account, the paths and shapes of each call, error mapping, token rotation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.runbooks.executors.kube_client import (
    KubeAlreadyExistsError,
    KubeAuthError,
    KubeClient,
    KubeConfigError,
    KubeNotFoundError,
    KubeRequestError,
    KubeSettings,
    KubeUnavailableError,
)
from devtools.fake_kube import FakeKube
from tests.integration.kube_rig import NAMESPACE, job_template


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    async with FakeKube() as server:
        yield server


@pytest.fixture
async def client(kube: FakeKube, tmp_path: Path) -> AsyncIterator[KubeClient]:
    settings = KubeSettings.explicit(
        base_url=kube.base_url, token_file=kube.write_token_file(tmp_path / "token")
    )
    kube_client = KubeClient(settings)
    yield kube_client
    await kube_client.close()


def named(name: str, args: list[str]) -> dict[str, Any]:
    manifest = job_template(args)
    manifest["metadata"]["name"] = name
    manifest["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    return manifest


def test_in_cluster_settings_come_from_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "namespace").write_text("incident-bridge\n")
    (tmp_path / "ca.crt").write_text("not read until the first request\n")
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    settings = KubeSettings.in_cluster(environ=environ, account_dir=tmp_path)
    assert settings.base_url == "https://10.96.0.1:443"
    assert settings.token_file == tmp_path / "token"
    assert settings.ca_file == tmp_path / "ca.crt"
    assert settings.namespace == "incident-bridge"
    v6 = KubeSettings.in_cluster(
        environ={"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
        account_dir=tmp_path,
    )
    assert v6.base_url == "https://[fd00::1]:6443"


def test_in_cluster_settings_outside_a_pod_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        KubeSettings.in_cluster(environ={}, account_dir=tmp_path)
    environ = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeConfigError, match="no service account token"):
        KubeSettings.in_cluster(environ=environ, account_dir=tmp_path)


@pytest.mark.parametrize("url", ["http://10.0.0.1:8080", "http://kube.example", "ftp://x"])
def test_plain_http_is_for_loopback_only(url: str, tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError):
        KubeSettings.explicit(base_url=url, token_file=tmp_path / "token")
    for loopback in ("http://127.0.0.1:1", "http://[::1]:1", "http://localhost:1"):
        KubeSettings.explicit(base_url=loopback, token_file=tmp_path / "token")


async def test_create_get_list_log_and_delete_speak_the_real_paths(
    kube: FakeKube, client: KubeClient
) -> None:
    created = await client.create_job(NAMESPACE, named("backup-1", ["log-lines", "3"]))
    assert created["metadata"]["uid"]
    assert created["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"]
    with pytest.raises(KubeAlreadyExistsError, match=r'jobs\.batch "backup-1" already exists'):
        await client.create_job(NAMESPACE, named("backup-1", ["log-lines", "3"]))

    pods = await client.list_job_pods(NAMESPACE, "backup-1")
    assert len(pods) == 1
    pod = pods[0]["metadata"]["name"]
    assert pod.startswith("backup-1-")
    lines = [line async for line in client.stream_pod_log(NAMESPACE, pod, container="main")]
    assert [line.split(" ", 1)[1] for line in lines] == ["line 1", "line 2", "line 3"]
    assert all(line.split(" ", 1)[0].endswith("Z") for line in lines)
    job = await client.get_job(NAMESPACE, "backup-1")
    assert [c["type"] for c in job["status"]["conditions"]] == ["SuccessCriteriaMet", "Complete"]

    assert await client.delete_job(NAMESPACE, "backup-1") is True
    assert await client.delete_job(NAMESPACE, "backup-1") is False
    with pytest.raises(KubeNotFoundError, match=r'jobs\.batch "backup-1" not found'):
        await client.get_job(NAMESPACE, "backup-1")
    assert await client.list_job_pods(NAMESPACE, "backup-1") == []

    paths = [(r.method, r.path, r.status) for r in kube.requests]
    assert paths[:3] == [
        ("POST", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", 201),
        ("POST", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", 409),
        ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods", 200),
    ]
    assert kube.requests[2].query == {"labelSelector": "job-name=backup-1"}
    delete = kube.requests_to("DELETE")[0]
    assert delete.query == {"propagationPolicy": "Background"}
    assert delete.body == {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "propagationPolicy": "Background",
    }


async def test_the_fake_orphans_pods_by_default_as_kubernetes_does(
    kube: FakeKube, client: KubeClient, tmp_path: Path
) -> None:
    await client.create_job(NAMESPACE, named("orphaning", ["sleep", "30"]))
    async with aiohttp.ClientSession() as http:
        response = await http.delete(
            f"{kube.base_url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs/orphaning",
            headers={"Authorization": f"Bearer {kube.token}"},
        )
        assert response.status == 200
    assert kube.job(NAMESPACE, "orphaning") is None
    assert len(kube.running_pods()) == 1  # what a client that forgets the policy leaves


async def test_api_refusals_map_to_distinct_errors(kube: FakeKube, client: KubeClient) -> None:
    no_policy = named("bad", ["echo", "x"])
    del no_policy["spec"]["template"]["spec"]["restartPolicy"]
    with pytest.raises(KubeRequestError, match=r"422 Invalid.*restartPolicy"):
        await client.create_job(NAMESPACE, no_policy)
    with pytest.raises(KubeRequestError, match=r"400 BadRequest.*namespace"):
        await client.create_job(
            "other", {**named("x", ["echo"]), "metadata": {"name": "x", "namespace": NAMESPACE}}
        )
    kube.forbidden_namespaces.add("locked")
    with pytest.raises(KubeAuthError, match="403 Forbidden"):
        await client.get_job("locked", "x")
    kube.fail_next(503, count=3)
    with pytest.raises(KubeUnavailableError, match="503"):
        await client.get_job(NAMESPACE, "x")
    assert [r.status for r in kube.requests_to("GET", f"/namespaces/{NAMESPACE}/jobs/x")] == [
        503,
        503,
        503,
    ]


async def test_a_rotated_token_is_read_again(kube: FakeKube, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("stale-token-4c1d")
    client = KubeClient(KubeSettings.explicit(base_url=kube.base_url, token_file=token_file))
    try:
        with pytest.raises(KubeAuthError, match="401") as refused:
            await client.get_job(NAMESPACE, "x")
        assert "stale-token-4c1d" not in str(refused.value)
        kube.write_token_file(token_file)
        with pytest.raises(KubeNotFoundError):
            await client.get_job(NAMESPACE, "x")
    finally:
        await client.close()


async def test_errors_are_status_objects(kube: FakeKube) -> None:
    async with aiohttp.ClientSession() as http:
        unauthorized = await http.get(f"{kube.base_url}/api/v1/namespaces/a/pods")
        assert unauthorized.status == 401
        assert await unauthorized.json() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }
        unknown = await http.get(
            f"{kube.base_url}/apis/apps/v1/deployments",
            headers={"Authorization": f"Bearer {kube.token}"},
        )
        assert unknown.status == 404
        assert (await unknown.json())["reason"] == "NotFound"
