"""deploy/k8s against the Kubernetes API schemas and against the code: every manifest is valid,
every variable is a real setting, every probe and Service port is a port the service listens on."""

from __future__ import annotations

import re
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
    expected_secret_files,
    files_the_commands_make,
    kafka_security_problems,
    listening_ports,
    load_settings,
    module_problems,
    own_secret_files,
)

K8S = REPO / "deploy" / "k8s"
# The secured deployment: the base plus the Secrets generated from deploy/secrets/.
OVERLAY: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "kustomization.yaml").read_text())
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
    assert container["command"] == ["python", "-m", f"cascade.services.{name}"]
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
            # Kubernetes' own gRPC probes cannot speak TLS: the image's check runs instead, with
            # the service's own TLS settings, so it must outlast its own 3 s answer deadline.
            command = container[probe]["exec"]["command"]
            assert command == [
                "python",
                "-m",
                "cascade.healthcheck",
                "--tls-of",
                name,
                f"127.0.0.1:{grpc_port}",
            ]
            assert module_problems(command) == []
            assert container[probe]["timeoutSeconds"] > 3, f"{name}'s {probe}"
    assert grpc_port in declared
    assert int(_setting(name, "METRICS_PORT")) in declared


def test_serving_is_given_longer_than_its_start_up_budget_to_turn_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Serving's health (what every probe asks) stays NOT_SERVING while it loads the models the
    registry names, or waits for the registry, for at most its start-up budget
    (services/serving/readiness.py). The startup probe must wait longer: a replica restarted while
    it waits for the registry cannot make the registry answer."""
    budget = load_settings("serving", _env("serving"), monkeypatch).startup_budget_seconds  # type: ignore[attr-defined]
    startup = _container("serving")["startupProbe"]

    assert startup["periodSeconds"] * startup["failureThreshold"] > budget
    ready = _container("serving")["readinessProbe"]["exec"]["command"]
    assert "--service" not in ready, "readiness asks the whole server, which is ready once loaded"


@pytest.mark.parametrize("name", SERVICES)
def test_every_port_the_service_listens_on_is_declared_and_served(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    listening = listening_ports(load_settings(name, _env(name), monkeypatch))
    declared = sorted(port["containerPort"] for port in _container(name)["ports"])
    served = sorted(port["port"] for port in _find("Service", name)["spec"]["ports"])

    assert declared == served == sorted(listening)


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


# ---------------------------------------------------------------------- secured by configuration

# What every Cascade service reads from cascade-shared; Kafka reads only the CA and its password.
SHARED_SECRET = "cascade-shared"
_SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "PRIVATE")


def _generated() -> dict[str, dict[str, str]]:
    """Each generated Secret: its keys and the file (relative to deploy/secrets/) each comes from."""
    secrets: dict[str, dict[str, str]] = {}
    for generator in OVERLAY["secretGenerator"]:
        keys = {}
        for entry in generator["files"]:
            key, _, path = entry.partition("=")
            assert path.startswith("secrets/"), f"{generator['name']}: {path} is not under deploy/secrets/"
            keys[key] = path.removeprefix("secrets/")
        secrets[generator["name"]] = keys
    return secrets


def _secret_volumes(name: str) -> dict[str, tuple[str, dict[str, str]]]:
    """mountPath -> (Secret name, file name in the mount -> file in deploy/secrets/) of each
    Secret the workload's container mounts."""
    generated = _generated()
    volumes = {volume["name"]: volume for volume in _pod(name)["volumes"]}
    mounted = {}
    for mount in _container(name)["volumeMounts"]:
        secret = volumes.get(mount["name"], {}).get("secret")  # a claim template is no volume here
        if secret is None:
            continue
        assert mount.get("readOnly") is True, f"{name} mounts {secret['secretName']} writable"
        keys = generated[secret["secretName"]]
        items = secret.get("items") or [{"key": key, "path": key} for key in keys]
        mounted[mount["mountPath"]] = (
            secret["secretName"],
            {item["path"]: keys[item["key"]] for item in items},
        )
    return mounted


def test_the_secured_overlay_applies_the_base_with_secrets_from_the_commands_files(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    made = files_the_commands_make(secrets)
    read = {file for keys in _generated().values() for file in keys.values()}

    assert OVERLAY["resources"] == ["k8s"]
    assert OVERLAY["namespace"] == NAMESPACE
    assert read - made == {"kafka-password"}  # the one made by hand
    assert not [doc for _, doc in DOCUMENTS if doc["kind"] == "Secret"], "Secrets come from files only"


@pytest.mark.parametrize("name", SERVICES)
def test_service_requires_auth_serves_tls_and_uses_kafka_over_sasl_ssl(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(name, _env(name), monkeypatch)

    assert settings.auth_required is True
    assert settings.auth_principals_file is not None
    assert None not in (settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
    assert settings.token_file is not None
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_password_file is not None and settings.kafka_ssl_ca_file is not None
    assert settings.token.get_secret_value() == ""


@pytest.mark.parametrize("name", SERVICES)
def test_every_file_setting_is_in_a_mounted_secret_and_its_own(name: str) -> None:
    prefix = f"CASCADE_{name.upper()}_"
    mounted = _secret_volumes(name)
    files = {key.removeprefix(prefix): value for key, value in _env(name).items() if key.endswith("_FILE")}
    expected = expected_secret_files(name)

    assert set(files) == set(expected)
    for field_name, path in files.items():
        directory, _, file_name = path.rpartition("/")
        assert directory in mounted, f"{prefix}{field_name}={path}: nothing is mounted at {directory}"
        secret, keys = mounted[directory]
        assert keys.get(file_name) == expected[field_name], f"{prefix}{field_name} reads {secret}/{file_name}"


@pytest.mark.parametrize("name", [*SERVICES, "kafka"])
def test_each_pod_mounts_only_its_own_secret_and_the_shared_one(name: str) -> None:
    shared_files = {"tls/ca.pem", "kafka-password"} | ({"principals.toml"} if name != "kafka" else set())
    volumes = {volume["name"]: volume for volume in _pod(name)["volumes"]}
    mounted = _secret_volumes(name)

    assert {secret for secret, _ in mounted.values()} == {f"cascade-{name}", SHARED_SECRET}
    for secret, keys in mounted.values():
        allowed = set(own_secret_files(name).values()) if secret != SHARED_SECRET else shared_files
        assert set(keys.values()) <= allowed, f"{name} mounts {secret} files it does not need"
    for volume in volumes.values():
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o440, "readable by the pod's user and group only"


def test_each_services_secret_holds_only_its_own_identity() -> None:
    for secret, keys in _generated().items():
        owner = secret.removeprefix("cascade-")
        if secret != SHARED_SECRET:
            assert set(keys.values()) <= set(own_secret_files(owner).values()), secret


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [text for value in node.values() for text in _strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_no_secret_value_or_pem_is_written_in_the_manifests() -> None:
    values = [text for _, document in DOCUMENTS for text in _strings(document)]

    assert not [value for value in values if "-----BEGIN" in value]
    assert not [value for value in values if re.search(r"password=(?!\$\(cat /run/secrets/)", value)]
    for _, document in DOCUMENTS:
        if document["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in document["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):
                key = variable["name"]
                if any(word in key for word in _SECRET_WORDS) and not key.endswith("_FILE"):
                    raise AssertionError(f"{key} holds a secret inline; mount it from a Secret")


def _kafka_env() -> dict[str, str]:
    return {variable["name"]: variable.get("value", "") for variable in _container("kafka")["env"]}


def _kafka_listeners() -> dict[str, tuple[str, str, str]]:
    """Listener name -> (bound address, advertised address or "", security protocol)."""
    env = _kafka_env()
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    bound = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    return {name: (address, advertised.get(name, ""), protocols[name]) for name, address in bound.items()}


def test_kafka_serves_pods_only_sasl_ssl_and_plaintext_only_on_its_loopback() -> None:
    for name, (bound, advertised, protocol) in _kafka_listeners().items():
        if protocol != "SASL_SSL":
            assert bound.startswith("127.0.0.1:"), f"listener {name} ({protocol}) must not leave the pod"
            assert advertised in ("", bound)
        # The image's start script treats "SSL://" and "SASL_" in a listener as its JKS set-up.
        assert "SSL" not in name and "SASL" not in name


@pytest.mark.parametrize("name", SERVICES)
def test_services_reach_kafka_on_sasl_ssl_as_its_scram_user(name: str) -> None:
    listeners = {advertised: protocol for _, advertised, protocol in _kafka_listeners().values()}
    start = "\n".join(_container("kafka")["args"])
    mechanism = _setting(name, "KAFKA_SASL_MECHANISM")
    username = _setting(name, "KAFKA_SASL_USERNAME")
    password_file = next(
        f"{path}/{file_name}"
        for path, (_, keys) in _secret_volumes("kafka").items()
        for file_name, file in keys.items()
        if file == "kafka-password"
    )

    assert listeners[_setting(name, "KAFKA_BOOTSTRAP")] == "SASL_SSL"
    assert _setting(name, "KAFKA_SECURITY_PROTOCOL") == "SASL_SSL"
    assert mechanism in _kafka_env()["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    assert f'--add-scram "{mechanism}=[name={username},password=$(cat {password_file})]"' in start


def test_kafka_tls_uses_its_own_pem_key_in_memory_and_the_services_ca() -> None:
    env = _kafka_env()
    start = "\n".join(_container("kafka")["args"])
    files = {
        f"{path}/{file_name}": file
        for path, (_, keys) in _secret_volumes("kafka").items()
        for file_name, file in keys.items()
    }
    by_file = {file: path for path, file in files.items()}
    keystore = env["KAFKA_SSL_KEYSTORE_LOCATION"]
    tmp = next(m["name"] for m in _container("kafka")["volumeMounts"] if m["mountPath"] == "/tmp")
    tmp_volume = next(v for v in _pod("kafka")["volumes"] if v["name"] == tmp)

    assert env["KAFKA_SSL_KEYSTORE_TYPE"] == env["KAFKA_SSL_TRUSTSTORE_TYPE"] == "PEM"
    assert files[env["KAFKA_SSL_TRUSTSTORE_LOCATION"]] == "tls/ca.pem"
    assert keystore.startswith("/tmp/") and tmp_volume["emptyDir"]["medium"] == "Memory"
    assert f"cat {by_file['tls/kafka.key']} {by_file['tls/kafka.pem']} > {keystore}" in start
    assert start.index("umask 077") < start.index(keystore)


def test_the_brokers_rendered_properties_serve_clients_sasl_ssl_only() -> None:
    # As the image turns the KAFKA_* variables into server.properties (checked against a real
    # Kafka 4.1.1 with SASL_SSL clients when this was written; no Docker here).
    assert kafka_security_problems(_kafka_env()) == []


# ---------------------------------------------------------------------- scaled out: deploy/replicated

REPLICATED = REPO / "deploy" / "replicated"
REPLICATED_KUSTOMIZATION: dict[str, Any] = yaml.safe_load((REPLICATED / "kustomization.yaml").read_text())


def _replicated_documents() -> list[dict[str, Any]]:
    """The overlay as kustomize renders it, built offline: the base, less the StatefulSets its
    patches delete, plus its Deployments and its generated ConfigMap."""
    deleted = {
        (patch["kind"], patch["metadata"]["name"])
        for patch in (yaml.safe_load(p["patch"]) for p in REPLICATED_KUSTOMIZATION["patches"])
        if patch.get("$patch") == "delete"
    }
    documents = [doc for _, doc in DOCUMENTS if (doc["kind"], doc["metadata"]["name"]) not in deleted]
    for resource in REPLICATED_KUSTOMIZATION["resources"]:
        if resource != "../k8s":
            documents += [d for d in yaml.safe_load_all((REPLICATED / resource).read_text()) if d is not None]
    for generated in REPLICATED_KUSTOMIZATION["configMapGenerator"]:
        literals = dict(literal.split("=", 1) for literal in generated["literals"])
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generated["name"]},
                "data": literals,
            }
        )
    return documents


REPLICATED_DOCUMENTS = _replicated_documents()


def _replicated_workload(name: str) -> dict[str, Any]:
    (found,) = [
        doc
        for doc in REPLICATED_DOCUMENTS
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] == name
    ]
    return found


def _replicated_env(name: str) -> dict[str, str]:
    """As `_env`, on the overlay; a Secret's key becomes a stand-in value."""
    (container,) = [c for c in _replicated_workload(name)["spec"]["template"]["spec"]["containers"]]
    config_maps = {
        d["metadata"]["name"]: d.get("data", {}) for d in REPLICATED_DOCUMENTS if d["kind"] == "ConfigMap"
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        ref = variable.get("valueFrom", {})
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
        elif "configMapKeyRef" in ref:
            env[variable["name"]] = config_maps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in ref:
            env[variable["name"]] = f"secret {ref['secretKeyRef']['name']}/{ref['secretKeyRef']['key']}"
        else:
            env[variable["name"]] = f"{name}-stand-in-for-{ref['fieldRef']['fieldPath']}"
    return env


def read_write_once_volumes_shared_by_replicas(documents: list[dict[str, Any]]) -> list[str]:
    """Deployments with more than one replica that mount a ReadWriteOnce (or -OncePod) claim: each
    replica would need the volume alone, so all but one would not start (or, on one node, share
    a database file and an outbox meant for one writer). A claim not among the documents counts too."""
    claims = {
        doc["metadata"]["name"]: set(doc["spec"].get("accessModes", []))
        for doc in documents
        if doc["kind"] == "PersistentVolumeClaim"
    }
    problems = []
    for doc in documents:
        if doc["kind"] != "Deployment" or doc["spec"].get("replicas", 1) <= 1:
            continue
        for volume in doc["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" not in volume:
                continue
            claim = volume["persistentVolumeClaim"]["claimName"]
            modes = claims.get(claim, {"unknown"})
            if modes & {"ReadWriteOnce", "ReadWriteOncePod", "unknown"}:
                problems.append(f"Deployment {doc['metadata']['name']} mounts {claim} ({sorted(modes)})")
    return problems


@pytest.mark.parametrize("variant", ["base", "replicated"])
def test_no_deployment_with_replicas_mounts_a_read_write_once_volume(variant: str) -> None:
    documents = [doc for _, doc in DOCUMENTS] if variant == "base" else REPLICATED_DOCUMENTS
    assert read_write_once_volumes_shared_by_replicas(documents) == []


def test_the_read_write_once_check_finds_a_shared_claim() -> None:
    claim = {
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"]},
    }
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "registry"},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}
            },
        },
    }
    assert read_write_once_volumes_shared_by_replicas([claim, deployment]) == [
        "Deployment registry mounts data (['ReadWriteOnce'])"
    ]
    unknown = {**deployment, "metadata": {"name": "ingest"}}
    assert read_write_once_volumes_shared_by_replicas([unknown]) == [
        "Deployment ingest mounts data (['unknown'])"
    ]


@pytest.mark.parametrize(
    "document",
    [doc for doc in REPLICATED_DOCUMENTS if doc["metadata"]["name"] in DATA_SERVICES],
    ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}",
)
def test_the_replicated_overlays_documents_are_valid_kubernetes(document: dict[str, Any]) -> None:
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", DATA_SERVICES)
def test_the_data_services_scale_out_on_shared_state(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    workload = _replicated_workload(name)
    assert workload["kind"] == "Deployment" and workload["spec"]["replicas"] >= 2
    env = _replicated_env(name)
    assert env_problems(name, env) == []
    settings = load_settings(name, env, monkeypatch)
    assert getattr(settings, "database_url") == f"secret cascade-postgres/{name}-url"  # noqa: B009
    data_dir = str(settings.data_dir)
    pod = workload["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == data_dir]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mount["name"]], "a replica's data directory is only a cache"
    if name == "monitor":
        return
    url = settings.segment_url if name == "ingest" else settings.artifact_url  # type: ignore[attr-defined]
    assert url.startswith("s3://")
    # The secret key is a file from the cascade-s3 Secret, mounted read-only; never a value.
    secret_file = Path(settings.s3_secret_access_key_file)  # type: ignore[attr-defined]
    (s3_mount,) = [
        m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == str(secret_file.parent)
    ]
    assert s3_mount["readOnly"] is True
    assert volumes[s3_mount["name"]]["secret"]["secretName"] == "cascade-s3"
    assert settings.s3_secret_access_key.get_secret_value() == ""  # type: ignore[attr-defined]


def test_kustomize_renders_the_replicated_overlay_as_built_offline() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(REPLICATED)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc is not None]

    def ids(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return sorted((doc["kind"], doc["metadata"]["name"]) for doc in docs)

    assert ids(documents) == ids(REPLICATED_DOCUMENTS)
    assert read_write_once_volumes_shared_by_replicas(documents) == []
    for name in DATA_SERVICES:
        (workload,) = [d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
        assert workload["metadata"]["namespace"] == NAMESPACE and workload["spec"]["replicas"] == 2
