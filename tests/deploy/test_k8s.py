"""deploy/k8s against the Kubernetes API schemas and against the code: every manifest is valid,
every variable is a real setting, every probe and Service port is a port the service listens on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.deploy.support import (
    DATA_SERVICES,
    DEFAULT_PORTS,
    METRICS_PORT,
    REPO,
    SERVICES,
    env_problems,
    load_settings,
    module_problems,
)

K8S = REPO / "deploy" / "k8s"
# The oldest Kubernetes the manifests must work on (native gRPC probes are GA since 1.27).
KUBERNETES_VERSION = "1.31.0"
NAMESPACE = "cascade"
CONFIG_MAP = "cascade-config"
MANIFESTS = sorted(path for path in K8S.glob("*.y*ml") if path.name != "kustomization.yaml")
DOCUMENTS: list[tuple[Path, dict[str, Any]]] = [
    (path, document)
    for path in MANIFESTS
    for document in yaml.safe_load_all(path.read_text())
    if document is not None
]
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def _id(entry: tuple[Path, dict[str, Any]]) -> str:
    path, document = entry
    return f"{path.name}:{document['kind']}/{document['metadata']['name']}"


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in DOCUMENTS if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/k8s, found {len(found)}"
    return found[0]


def _workload(name: str) -> dict[str, Any]:
    found = [
        doc
        for _, doc in DOCUMENTS
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one Deployment or StatefulSet {name!r}"
    return found[0]


def _pod(name: str) -> dict[str, Any]:
    pod: dict[str, Any] = _workload(name)["spec"]["template"]["spec"]
    return pod


def _container(name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [c for c in _pod(name)["containers"] if c["name"] == name]
    assert len(containers) == 1, f"{name}'s pod should have one container named {name}"
    return containers[0]


def _config_map_data(name: str) -> dict[str, str]:
    data: dict[str, str] = _find("ConfigMap", name).get("data", {})
    return data


def _env(name: str) -> dict[str, str]:
    """The container's environment as the kubelet would build it (envFrom first, then env);
    a field reference becomes a stand-in value."""
    container = _container(name)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_config_map_data(source["configMapRef"]["name"]))
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
            continue
        ref = variable["valueFrom"]
        if "configMapKeyRef" in ref:
            data = _config_map_data(ref["configMapKeyRef"]["name"])
            key = ref["configMapKeyRef"]["key"]
            assert key in data, f"{name}: {variable['name']} refers to missing key {key}"
            env[variable["name"]] = data[key]
        else:
            env[variable["name"]] = f"{name}-stand-in-for-{ref['fieldRef']['fieldPath']}"
    return env


def _setting(name: str, field: str) -> str:
    return _env(name)[f"CASCADE_{name.upper()}_{field}"]


def _container_ports(workload: dict[str, Any]) -> dict[str, int]:
    return {
        port.get("name", str(port["containerPort"])): port["containerPort"]
        for container in workload["spec"]["template"]["spec"]["containers"]
        for port in container.get("ports", [])
    }


def _selected(selector: dict[str, str]) -> list[dict[str, Any]]:
    """Workloads whose pods carry every label of the selector."""
    return [
        doc
        for _, doc in DOCUMENTS
        if doc["kind"] in ("Deployment", "StatefulSet")
        and selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
    ]


# ---------------------------------------------------------------------- schema and layout


@pytest.mark.parametrize("entry", DOCUMENTS, ids=_id)
def test_every_document_is_valid_kubernetes(entry: tuple[Path, dict[str, Any]]) -> None:
    _, document = entry
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_sets_the_namespace() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())

    assert sorted(kustomization["resources"]) == sorted(path.name for path in MANIFESTS)
    assert kustomization["namespace"] == NAMESPACE
    assert _find("Namespace", NAMESPACE)


def test_kustomize_renders_the_base() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc is not None]

    assert len(documents) == len(DOCUMENTS)
    for document in documents:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE


# ---------------------------------------------------------------------- each Cascade service


@pytest.mark.parametrize("name", SERVICES)
def test_data_owners_are_single_stateful_pods_with_a_volume(name: str) -> None:
    workload = _workload(name)
    data_dir = _setting(name, "DATA_DIR")
    data_mounts = [m for m in _container(name)["volumeMounts"] if m["mountPath"] == data_dir]
    assert len(data_mounts) == 1, f"{name}'s DATA_DIR must be a volume: the root filesystem is read-only"
    volume = data_mounts[0]["name"]

    if name in DATA_SERVICES:
        assert workload["kind"] == "StatefulSet"
        assert workload["spec"]["replicas"] == 1
        claims = [claim["metadata"]["name"] for claim in workload["spec"]["volumeClaimTemplates"]]
        assert volume in claims
    else:
        assert workload["kind"] == "Deployment"
        volumes = {v["name"]: v for v in _pod(name)["volumes"]}
        assert "emptyDir" in volumes[volume]


def test_trainer_and_serving_run_two_replicas() -> None:
    assert _workload("trainer")["spec"]["replicas"] == 2
    assert _workload("serving")["spec"]["replicas"] == 2


@pytest.mark.parametrize("name", SERVICES)
def test_command_runs_the_service_module(name: str) -> None:
    container = _container(name)

    assert container["image"].split(":")[0] == "cascade"
    assert container["command"] == ["python", "-m", f"services.{name}"]
    assert module_problems(container["command"]) == []


@pytest.mark.parametrize("name", SERVICES)
def test_env_names_only_real_settings_of_the_service(name: str) -> None:
    assert env_problems(name, _env(name)) == []


@pytest.mark.parametrize("name", SERVICES)
def test_settings_load_from_the_env_as_a_container_needs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(name, _env(name), monkeypatch)

    assert settings.grpc_host == "0.0.0.0", "in a container the server must listen on every interface"
    assert settings.grpc_port == DEFAULT_PORTS[name]
    assert settings.metrics_port == METRICS_PORT
    assert settings.log_format == "json"


@pytest.mark.parametrize("name", SERVICES)
def test_kafka_and_tracing_come_from_the_shared_config_map(name: str) -> None:
    container = _container(name)
    refs = {
        variable["name"]: variable["valueFrom"]["configMapKeyRef"]
        for variable in container["env"]
        if "configMapKeyRef" in variable.get("valueFrom", {})
    }
    prefix = f"CASCADE_{name.upper()}_"

    assert refs[prefix + "KAFKA_BOOTSTRAP"] == {"name": CONFIG_MAP, "key": "KAFKA_BOOTSTRAP"}
    assert {"configMapRef": {"name": CONFIG_MAP}} in container["envFrom"]
    assert _env(name)["OTEL_TRACES_EXPORTER"] == "otlp"


@pytest.mark.parametrize("name", SERVICES)
def test_probes_ask_the_port_the_service_listens_on(name: str) -> None:
    container = _container(name)
    grpc_port = int(_setting(name, "GRPC_PORT"))
    declared = [port["containerPort"] for port in container["ports"]]

    assert "readinessProbe" in container and "livenessProbe" in container
    for probe in PROBES:
        if probe in container:
            assert container[probe]["grpc"]["port"] == grpc_port, f"{name}'s {probe}"
    assert grpc_port in declared
    assert int(_setting(name, "METRICS_PORT")) in declared


@pytest.mark.parametrize("name", SERVICES)
def test_service_exposes_grpc_and_metrics_for_scraping(name: str) -> None:
    service = _find("Service", name)
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    annotations = service["metadata"]["annotations"]

    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert _selected(service["spec"]["selector"]) == [_workload(name)]
    assert ports["grpc"]["port"] == int(_setting(name, "GRPC_PORT"))
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]["port"] == METRICS_PORT


@pytest.mark.parametrize("name", SERVICES)
def test_addresses_name_the_service_and_port_of_what_is_called(name: str) -> None:
    for key, value in _env(name).items():
        if key.startswith("CASCADE_") and key.endswith("_ADDRESS"):
            host, _, port = value.rpartition(":")
            service = _find("Service", host)
            served = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
            assert served, f"{key}: Service {host} has no port {port}"
            assert _selected(service["spec"]["selector"]) == [_workload(host)]
            assert int(port) == int(_setting(host, "GRPC_PORT"))


@pytest.mark.parametrize("name", SERVICES)
def test_pods_run_locked_down_with_limits(name: str) -> None:
    pod = _pod(name)
    container = _container(name)
    security = container["securityContext"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()


def test_each_serving_replica_has_its_own_instance_id() -> None:
    variables = {variable["name"]: variable for variable in _container("serving")["env"]}
    instance_id = variables["CASCADE_SERVING_INSTANCE_ID"]

    assert instance_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


# ---------------------------------------------------------------------- availability and Kafka


@pytest.mark.parametrize("name", ["serving", "trainer"])
def test_disruption_budget_keeps_one_pod(name: str) -> None:
    budget = _find("PodDisruptionBudget", name)

    assert budget["spec"]["minAvailable"] == 1
    assert _selected(budget["spec"]["selector"]["matchLabels"]) == [_workload(name)]


def test_serving_scales_on_cpu_from_two_to_eight() -> None:
    autoscaler = _find("HorizontalPodAutoscaler", "serving")
    spec = autoscaler["spec"]

    assert autoscaler["apiVersion"] == "autoscaling/v2"
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serving"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 8)
    assert spec["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]


def test_kafka_bootstrap_is_the_development_broker() -> None:
    host, _, port = _config_map_data(CONFIG_MAP)["KAFKA_BOOTSTRAP"].rpartition(":")
    service = _find("Service", host)
    kafka = _workload(host)
    container = _container(host)
    env = {variable["name"]: variable.get("value") for variable in container["env"]}

    assert kafka["kind"] == "StatefulSet"
    assert container["image"] == "apache/kafka:4.1.1"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert f"{host}:{port}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert _selected(service["spec"]["selector"]) == [kafka]
    ports = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    assert ports and ports[0]["targetPort"] in _container_ports(kafka)


def test_every_service_targets_declared_container_ports() -> None:
    for _, service in DOCUMENTS:
        if service["kind"] != "Service":
            continue
        name = service["metadata"]["name"]
        selected = _selected(service["spec"]["selector"])
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        declared = _container_ports(selected[0])
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            names_or_numbers = declared if isinstance(target, str) else declared.values()
            assert target in names_or_numbers, f"Service {name}: the pods declare no port {target}"
