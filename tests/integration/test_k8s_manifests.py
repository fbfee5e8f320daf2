"""The Kubernetes manifests under k8s/, as kustomize renders them.

Each of the base and the overlays is rendered with ``kubectl kustomize`` and every
document is validated against the schemas of the pinned Kubernetes version in strict
mode (an unknown or misspelt field fails). On top, the rules of the deployment: locked
down containers, probes on the daemon's endpoints, a grace period that covers its
shutdown, a Role with only what the kubernetes-job executor calls, no secret values in
production, pinned images, selectors that select the bridge's pods, and settings that
the bridge's own loader accepts, with the paths of their secrets and catalog mounted.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from adapters.matrix.registration import build_registration
from adapters.teams.inbound import MESSAGES_PATH
from adapters.teams.media_host import MEDIA_PATH
from bridge.config import Settings
from bridge.config.loader import load_settings
from bridge.runbooks.catalog import parse_file, roles_from_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.34"
RENDER_TIMEOUT_S = 60.0
TARGETS = {
    "base": (K8S / "base", None),
    "development": (K8S / "overlays" / "development", "incident-bridge-dev"),
    "production": (K8S / "overlays" / "production", "incident-bridge"),
}
OVERLAYS = ("development", "production")
BRIDGE = "incident-bridge"
SECRET_MOUNT = "/var/run/secrets/incident-bridge"
FEDERATED_TOKEN = "/var/run/secrets/azure/tokens/azure-identity-token"
POD_NAME = "incident-bridge-5d8f7c9b6-x2x7q"
POD_KINDS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
JOB_EXECUTOR_RULES = {
    # bridge/runbooks/executors/kube_client.py: create_job, get_job, delete_job;
    # list_job_pods, get_pod; stream_pod_log.
    ("batch", "jobs"): {"create", "get", "delete"},
    ("", "pods"): {"get", "list"},
    ("", "pods/log"): {"get"},
}
PUBLIC_PATHS = {MESSAGES_PATH, MEDIA_PATH.split("/{", 1)[0], "/_matrix/app"}


@dataclass(frozen=True, slots=True)
class Rendered:
    """One kustomization's output."""

    name: str
    namespace: str | None
    docs: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    @property
    def bridge(self) -> dict[str, Any]:
        return self.named("Deployment", BRIDGE)

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.bridge["spec"]["template"]["spec"]
        return spec

    @property
    def pod_labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.bridge["spec"]["template"]["metadata"]["labels"]
        return labels

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = [
            c for c in self.pod["containers"] if c["name"] == BRIDGE
        ]
        assert len(containers) == 1
        return containers[0]

    def volume(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [v for v in self.pod["volumes"] if v["name"] == name]
        assert len(found) == 1, f"{self.name}: no volume {name}"
        return found[0]

    def mount_at(self, path: str) -> dict[str, Any]:
        """The bridge container's mount that holds ``path``."""
        for mount in self.container["volumeMounts"]:
            root = mount["mountPath"].rstrip("/")
            if path == root or path.startswith(root + "/"):
                return dict(mount)
        raise AssertionError(f"{self.name}: nothing is mounted at {path}")

    def configmap_of(self, volume: str) -> dict[str, str]:
        data: dict[str, str] = self.named("ConfigMap", self.volume(volume)["configMap"]["name"])[
            "data"
        ]
        return data

    def secret_values(self) -> dict[str, str]:
        """The mounted Secret's values when the kustomization generates it, else empty."""
        name = self.volume("secrets")["secret"]["secretName"]
        found = [s for s in self.of_kind("Secret") if s["metadata"]["name"] == name]
        if not found:
            return {}
        data = found[0].get("data", {})
        return {key: base64.b64decode(value).decode() for key, value in data.items()}

    def config_path(self) -> str:
        args = self.container["args"]
        assert args[:2] == ["run", "--config"], args
        path: str = args[2]
        return path


def _render(name: str) -> Rendered:
    directory, namespace = TARGETS[name]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is needed on PATH to render the manifests (`kubectl kustomize`); "
            "install the Kubernetes client (1.27 or later)"
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=RENDER_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    docs = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    return Rendered(name=name, namespace=namespace, docs=docs)


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    return {name: _render(name) for name in TARGETS}


def _settings(target: Rendered, tmp_path: Path) -> Settings:
    """The rendered settings file, read by the bridge's loader as the pod would read it:
    with the Deployment's BRIDGE__ environment and its mounted secret files (the
    generated Secret's values, or placeholders where the operator creates the Secret)."""
    config_path = target.config_path()
    mount = target.mount_at(config_path)
    assert mount["mountPath"] == config_path
    text = target.configmap_of(mount["name"])[mount["subPath"]]
    raw = yaml.safe_load(text)
    values = target.secret_values()
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir(exist_ok=True)
    for key, path in _file_keys(raw):
        mount = target.mount_at(path)
        assert mount["mountPath"] == SECRET_MOUNT, f"{key}: {path} is not in the Secret mount"
        assert "secret" in target.volume(mount["name"])
        file_name = path.removeprefix(SECRET_MOUNT + "/")
        if values:
            assert file_name in values, f"{key}: the Secret has no key {file_name}"
        placeholder = "mongodb://mongo.example.org:27017/?replicaSet=rs0"
        if file_name != "mongo-uri":
            placeholder = f"placeholder-{file_name}"
        secret = values.get(file_name, placeholder) + "\n"
        (secret_dir / file_name).write_text(secret, encoding="utf-8")
    rewritten = text.replace(SECRET_MOUNT + "/", f"{secret_dir}/")
    settings_file = tmp_path / "config.yaml"
    settings_file.write_text(rewritten, encoding="utf-8")
    return load_settings(settings_file, _environment(target))


def _file_keys(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    for key, value in node.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, Mapping):
            yield from _file_keys(value, where)
        elif str(key).endswith("_file"):
            yield where, str(value)


def _environment(target: Rendered) -> dict[str, str]:
    environ: dict[str, str] = {}
    for variable in target.container.get("env", []):
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
        elif variable["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            environ[variable["name"]] = POD_NAME
        else:
            pytest.fail(f"{target.name}: env {variable['name']} has a source the test ignores")
    return environ


def _pod_specs(target: Rendered) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec shipped: workloads, and the Job templates of kubernetes-job runbooks."""
    for doc in target.docs:
        keys = POD_KINDS.get(doc["kind"])
        if keys is not None:
            node = doc
            for key in keys:
                node = node[key]
            yield f"{doc['kind']}/{doc['metadata']['name']}", node
    for name, job in _runbook_jobs(target):
        yield f"runbook {name}", job["spec"]["template"]["spec"]


def _runbooks(target: Rendered) -> Iterator[tuple[str, dict[str, Any]]]:
    for file_name, text in target.configmap_of("runbooks").items():
        data = yaml.safe_load(text)
        for runbook in data if isinstance(data, list) else [data]:
            yield file_name, runbook


def _runbook_jobs(target: Rendered) -> Iterator[tuple[str, dict[str, Any]]]:
    for _, runbook in _runbooks(target):
        if runbook["executor"]["type"] == "kubernetes-job":
            yield runbook["name"], runbook["executor"]["template"]


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# -- schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("name", TARGETS)
def test_every_document_is_valid_for_the_pinned_kubernetes(
    rendered: dict[str, Rendered], name: str
) -> None:
    target = rendered[name]
    documents = [(f"{d['kind']}/{d['metadata']['name']}", d) for d in target.docs]
    documents += [(f"runbook {n} Job", job) for n, job in _runbook_jobs(target)]
    problems = []
    for what, document in documents:
        try:
            used = kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{what}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{what}: {exc.message}")
        else:
            assert used == KUBERNETES_VERSION, f"{what}: validated against {used}"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_namespaced_object_is_in_the_overlay_namespace(
    rendered: dict[str, Rendered], name: str
) -> None:
    target = rendered[name]
    assert target.named("Namespace", str(target.namespace))
    for doc in target.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == target.namespace, doc["metadata"]


# -- containers ----------------------------------------------------------------------


@pytest.mark.parametrize("name", TARGETS)
def test_every_container_is_locked_down(rendered: dict[str, Rendered], name: str) -> None:
    specs = list(_pod_specs(rendered[name]))
    assert any(what == f"Deployment/{BRIDGE}" for what, _ in specs)
    for what, pod in specs:
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host_namespace), what
        assert not any("hostPath" in v for v in pod.get("volumes", [])), what
        pod_context = pod.get("securityContext", {})
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{what} container {container['name']}"
            context = {**pod_context, **container.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True, where
            assert context.get("runAsUser", 1) != 0, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert not context.get("privileged"), where
            capabilities = context.get("capabilities", {})
            assert capabilities.get("drop") == ["ALL"], where
            assert not capabilities.get("add"), where
            assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"


@pytest.mark.parametrize("name", TARGETS)
def test_images_are_pinned(rendered: dict[str, Rendered], name: str) -> None:
    images = [
        (what, container["image"])
        for what, pod in _pod_specs(rendered[name])
        for container in pod["containers"] + pod.get("initContainers", [])
    ]
    for what, image in images:
        if "@sha256:" in image:
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag, f"{what}: {image} has no tag"
        assert tag != "latest", f"{what}: {image}"
    assert rendered[name].container["image"].startswith("ghcr.io/incident-bridge/incident-bridge:")


@pytest.mark.parametrize("name", TARGETS)
def test_the_bridge_runs_as_the_image_user_with_a_writable_tmp_only(
    rendered: dict[str, Rendered], name: str
) -> None:
    target = rendered[name]
    context = {**target.pod["securityContext"], **target.container["securityContext"]}
    assert (context["runAsUser"], context["runAsGroup"]) == (10001, 10001)
    assert target.pod["securityContext"]["fsGroup"] == 10001
    writable = [m for m in target.container["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == ["/tmp"]
    assert "emptyDir" in target.volume(writable[0]["name"])


# -- the daemon's lifecycle ------------------------------------------------------------


@pytest.mark.parametrize("name", TARGETS)
def test_probes_use_the_daemon_endpoints(
    rendered: dict[str, Rendered], name: str, tmp_path: Path
) -> None:
    target = rendered[name]
    settings = _settings(target, tmp_path)
    container = target.container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.http.port}
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    readiness = container["readinessProbe"]
    assert readiness["timeoutSeconds"] > settings.readiness.check_timeout_s
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget > settings.mongo.startup_timeout_s + settings.teams.request_timeout_s


@pytest.mark.parametrize("name", TARGETS)
def test_the_grace_period_covers_the_shutdown(
    rendered: dict[str, Rendered], name: str, tmp_path: Path
) -> None:
    target = rendered[name]
    shutdown = _settings(target, tmp_path).shutdown
    # SIGTERM: the readiness grace, then the web server's drain, then the delivery
    # workers' drain, each bounded by drain_timeout_s (bridge/app.py), one after the other.
    assert shutdown.readiness_grace_s >= 3, "endpoints need time to drop the pod"
    needed = shutdown.readiness_grace_s + 2 * shutdown.drain_timeout_s
    assert target.pod["terminationGracePeriodSeconds"] > needed
    assert "lifecycle" not in target.container


@pytest.mark.parametrize(("name", "replicas"), [("base", 2), ("development", 2), ("production", 3)])
def test_rolling_updates_keep_every_ready_replica(
    rendered: dict[str, Rendered], name: str, replicas: int
) -> None:
    spec = rendered[name].bridge["spec"]
    assert spec["replicas"] == replicas
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    spread = spec["template"]["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {c["topologyKey"] for c in spread}
    budget = rendered[name].named("PodDisruptionBudget", BRIDGE)["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable", 0) >= 1


# -- settings ------------------------------------------------------------------------


@pytest.mark.parametrize("name", TARGETS)
def test_the_settings_load_and_point_at_what_is_mounted(
    rendered: dict[str, Rendered], name: str, tmp_path: Path
) -> None:
    target = rendered[name]
    settings = _settings(target, tmp_path)
    assert settings.delivery.instance_id == POD_NAME
    assert settings.http.host == "0.0.0.0"
    assert settings.logging.format == "json"
    assert settings.mongo.write_concern == "majority"
    assert settings.api.token is not None
    catalog = str(settings.runbooks.catalog_dir)
    assert target.mount_at(catalog)["mountPath"] == catalog
    assert target.configmap_of(target.mount_at(catalog)["name"])
    if settings.teams.enabled and settings.teams.auth.type == "workload_identity":
        assert settings.teams.auth.federated_token_path == FEDERATED_TOKEN


@pytest.mark.parametrize("name", TARGETS)
def test_the_runbook_catalog_is_valid_and_runs_jobs_in_the_bridges_namespace(
    rendered: dict[str, Rendered], name: str, tmp_path: Path
) -> None:
    target = rendered[name]
    roles = roles_from_settings(_settings(target, tmp_path).runbooks)
    catalog = target.configmap_of("runbooks")
    assert catalog
    for file_name, text in catalog.items():
        runbooks, problems = parse_file(file_name, text, roles)
        assert runbooks, file_name
        assert not problems, [str(p) for p in problems]
    for file_name, runbook in _runbooks(target):
        if runbook["executor"]["type"] == "kubernetes-job":
            # The Role allows Jobs in the bridge's namespace only, which is the default.
            assert "namespace" not in runbook["executor"], file_name
            assert "namespace" not in runbook["executor"]["template"].get("metadata", {})


# -- access --------------------------------------------------------------------------


@pytest.mark.parametrize("name", TARGETS)
def test_the_role_grants_only_what_the_job_executor_calls(
    rendered: dict[str, Rendered], name: str
) -> None:
    target = rendered[name]
    assert not target.of_kind("ClusterRole")
    assert not target.of_kind("ClusterRoleBinding")
    (role,) = target.of_kind("Role")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert not rule.get("resourceNames")
        assert not rule.get("nonResourceURLs")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == JOB_EXECUTOR_RULES
    (binding,) = target.of_kind("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = target.pod["serviceAccountName"]
    assert target.named("ServiceAccount", account)
    subject = {"kind": "ServiceAccount", "name": account}
    if target.namespace is not None:
        subject["namespace"] = target.namespace
        assert role["metadata"]["namespace"] == target.namespace
    assert binding["subjects"] == [subject]
    # The token is mounted for the executor only; other pods get none.
    assert target.named("ServiceAccount", account)["automountServiceAccountToken"] is False
    assert target.pod["automountServiceAccountToken"] is True
    for what, pod in _pod_specs(target):
        if what != f"Deployment/{BRIDGE}":
            assert pod.get("automountServiceAccountToken") is False, what


@pytest.mark.parametrize("name", ["base", "production"])
def test_no_secret_values_are_shipped(rendered: dict[str, Rendered], name: str) -> None:
    target = rendered[name]
    assert not target.of_kind("Secret")
    assert target.volume("secrets")["secret"]["secretName"] == "incident-bridge-secrets"


def test_the_development_secrets_are_visibly_fake(rendered: dict[str, Rendered]) -> None:
    values = rendered["development"].secret_values()
    assert values.pop("mongo-uri") == "mongodb://mongo-0.mongo:27017/?replicaSet=rs0"
    assert values
    assert all("NOT-A-SECRET" in value for value in values.values()), values


def test_production_signs_in_to_teams_with_workload_identity(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    target = rendered["production"]
    teams = _settings(target, tmp_path).teams
    assert teams.enabled
    assert teams.auth.type == "workload_identity"
    assert teams.auth.client_secret is None
    account = target.named("ServiceAccount", target.pod["serviceAccountName"])
    annotations = account["metadata"]["annotations"]
    assert annotations["azure.workload.identity/client-id"] == teams.app_id
    assert annotations["azure.workload.identity/tenant-id"] == teams.tenant_id
    assert target.pod_labels["azure.workload.identity/use"] == "true"
    assert "azure.workload.identity/use" not in target.bridge["spec"]["selector"]["matchLabels"]


# -- traffic -------------------------------------------------------------------------


@pytest.mark.parametrize("name", TARGETS)
def test_selectors_select_the_bridge_pods(rendered: dict[str, Rendered], name: str) -> None:
    target = rendered[name]
    labels = target.pod_labels
    assert _selects(target.bridge["spec"]["selector"]["matchLabels"], labels)
    services = {s["metadata"]["name"]: s["spec"] for s in target.of_kind("Service")}
    assert _selects(services[BRIDGE]["selector"], labels)
    assert services[BRIDGE]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert not services[BRIDGE].get("publishNotReadyAddresses")
    budget = target.named("PodDisruptionBudget", BRIDGE)["spec"]["selector"]["matchLabels"]
    assert _selects(budget, labels)
    policy = target.named("NetworkPolicy", BRIDGE)["spec"]["podSelector"]["matchLabels"]
    assert _selects(policy, labels)
    other_pods = [
        doc["spec"]["template"]["metadata"]["labels"]
        for doc in target.docs
        if doc["kind"] in ("StatefulSet", "Deployment") and doc["metadata"]["name"] != BRIDGE
    ]
    for pod_labels in other_pods:
        assert not _selects(services[BRIDGE]["selector"], pod_labels)
        assert not _selects(policy, pod_labels)


@pytest.mark.parametrize("name", TARGETS)
def test_the_network_policy_opens_the_http_port_and_the_needed_egress(
    rendered: dict[str, Rendered], name: str
) -> None:
    spec = rendered[name].named("NetworkPolicy", BRIDGE)["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    inbound = [port for rule in spec["ingress"] for port in rule["ports"]]
    assert inbound == [{"protocol": "TCP", "port": 8080}]
    outbound = {(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]}
    assert {("UDP", 53), ("TCP", 53), ("TCP", 27017), ("TCP", 443), ("TCP", 6443)} <= outbound


def test_the_production_ingress_exposes_only_the_public_endpoints(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    target = rendered["production"]
    (ingress,) = target.of_kind("Ingress")
    settings = _settings(target, tmp_path)
    public_host = re.sub(r"^https://", "", settings.http.public_url).rstrip("/")
    services = {s["metadata"]["name"] for s in target.of_kind("Service")}
    tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
    paths = set()
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] == public_host
        assert rule["host"] in tls_hosts
        for entry in rule["http"]["paths"]:
            paths.add(entry["path"])
            assert entry["backend"]["service"]["name"] in services
            assert entry["backend"]["service"]["port"] == {"name": "http"}
    assert paths == PUBLIC_PATHS


def test_the_development_registration_matches_the_bridge(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    target = rendered["development"]
    matrix = _settings(target, tmp_path).matrix
    assert matrix.as_token is not None
    assert matrix.hs_token is not None
    configmaps = [
        c for c in target.of_kind("ConfigMap") if "registration.yaml" in c.get("data", {})
    ]
    (registration,) = [yaml.safe_load(c["data"]["registration.yaml"]) for c in configmaps]
    expected = build_registration(
        url=f"http://{BRIDGE}.{target.namespace}.svc:8080",
        server_name=matrix.server_name,
        as_id=matrix.as_id,
        bot_localpart=matrix.bot_localpart,
        ghost_prefix=matrix.ghost_prefix,
        as_token=matrix.as_token.get_secret_value(),
        hs_token=matrix.hs_token.get_secret_value(),
    )
    assert registration == expected.to_yaml_dict()


def test_the_operations_guide_creates_the_secret_production_reads(
    rendered: dict[str, Rendered],
) -> None:
    target = rendered["production"]
    config_mount = target.mount_at(target.config_path())
    text = target.configmap_of(config_mount["name"])[config_mount["subPath"]]
    keys = {path.removeprefix(SECRET_MOUNT + "/") for _, path in _file_keys(yaml.safe_load(text))}
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    secret = target.volume("secrets")["secret"]["secretName"]
    # The command and its continuation lines (each ending with a backslash).
    command = re.search(
        rf"kubectl -n {target.namespace} create secret generic {secret}((?:.*\\\n)*.*)", guide
    )
    assert command is not None, "docs/operations.md: no `kubectl create secret` for production"
    assert set(re.findall(r"--from-file=([\w-]+)=", command.group(1))) == keys
