"""docker-compose.yml against the code: every variable is a real setting of its service, ports and
addresses agree with the image and with each other, volumes and dependencies are all declared."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    own_secret_files,
    parse_dockerfile,
)

COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
DEFINED: dict[str, Any] = COMPOSE["services"]
STAGES = parse_dockerfile()


def _service(name: str) -> dict[str, Any]:
    assert name in DEFINED, f"docker-compose.yml has no service {name!r}"
    service: dict[str, Any] = DEFINED[name]
    return service


def _env(name: str) -> dict[str, str]:
    environment = _service(name).get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def _setting(name: str, field: str) -> str:
    return _env(name)[f"CASCADE_{name.upper()}_{field}"]


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _published(name: str) -> list[tuple[int, int]]:
    """(host port, container port) of each published port."""
    pairs = []
    for port in _service(name).get("ports", []):
        if isinstance(port, dict):
            pairs.append((int(port.get("published") or port["target"]), int(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            pairs.append((int(parts[-2] if len(parts) > 1 else parts[-1]), int(parts[-1])))
    return pairs


def _mounts(name: str) -> list[tuple[str, str]]:
    """(source, target) of each mount; a named volume's source is its name."""
    mounts = []
    for volume in _service(name).get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            source, _, rest = str(volume).partition(":")
            mounts.append((source, rest.split(":")[0]))
    return mounts


def _is_named(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def _depends_on(name: str) -> dict[str, str]:
    depends = _service(name).get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: options.get("condition", "service_started") for name, options in depends.items()}


def _health_port(name: str) -> int:
    """The port the image's HEALTHCHECK asks, for the stage this service is built from."""
    command = STAGES[_service(name)["build"]["target"]].healthcheck()
    assert command is not None
    return _host_port(command[-1])[1]


# ---------------------------------------------------------------------- the Cascade services


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_is_built_from_its_own_stage(name: str) -> None:
    build = _service(name)["build"]

    assert (REPO / build.get("context", ".") / build["dockerfile"]).is_file()
    assert build["target"] == name
    assert name in STAGES


@pytest.mark.parametrize("name", SERVICES)
def test_env_names_only_real_settings_of_the_service(name: str) -> None:
    assert env_problems(name, _env(name)) == []


@pytest.mark.parametrize("name", SERVICES)
def test_settings_load_from_the_env_as_a_container_needs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(name, _env(name), monkeypatch)

    assert settings.grpc_host == "0.0.0.0", "in a container the server must listen on every interface"
    assert settings.metrics_port == METRICS_PORT
    assert settings.log_format == "json"
    assert settings.grpc_port == DEFAULT_PORTS[name]


@pytest.mark.parametrize("name", SERVICES)
def test_grpc_port_is_the_one_the_image_health_check_asks(name: str) -> None:
    assert "healthcheck" not in _service(name), "the image's health check applies"
    assert int(_setting(name, "GRPC_PORT")) == _health_port(name)


@pytest.mark.parametrize("name", SERVICES)
def test_published_ports_are_ports_the_service_listens_on(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    listening = listening_ports(load_settings(name, _env(name), monkeypatch))

    for _host, container in _published(name):
        assert container in listening


@pytest.mark.parametrize("name", ["ingest", "serving"])
def test_ingest_and_serving_answer_on_the_host_where_the_cli_looks(name: str) -> None:
    # `cascade ingest` and inference clients use the default ports on 127.0.0.1.
    grpc_port = int(_setting(name, "GRPC_PORT"))

    assert (DEFAULT_PORTS[name], grpc_port) in _published(name)


def test_serving_rest_answers_on_the_host_on_its_default_port(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings("serving", _env("serving"), monkeypatch)
    default = type(settings).model_fields["http_port"].default

    assert settings.http_enabled is True
    assert (default, settings.http_port) in _published("serving")


@pytest.mark.parametrize("name", DATA_SERVICES)
def test_data_dir_of_a_data_owner_is_its_own_named_volume(name: str) -> None:
    data_dir = _setting(name, "DATA_DIR")
    volumes = [source for source, target in _mounts(name) if target == data_dir and _is_named(source)]
    others = [source for other in DEFINED if other != name for source, _ in _mounts(other)]

    assert len(volumes) == 1, f"{name}'s DATA_DIR {data_dir} should be a named volume"
    assert volumes[0] not in others, "services share no data"


@pytest.mark.parametrize("name", SERVICES)
def test_services_wait_for_healthy_kafka_and_for_what_they_call(name: str) -> None:
    depends = _depends_on(name)
    kafka_host, kafka_port = _host_port(_setting(name, "KAFKA_BOOTSTRAP"))

    assert depends.get(kafka_host) == "service_healthy"
    assert f"{kafka_host}:{kafka_port}" in _kafka_advertised()
    called = [key for key in _env(name) if key.endswith("_ADDRESS")]
    for key in called:
        host, port = _host_port(_env(name)[key])
        assert host in SERVICES, f"{key}: {host} is not a Cascade service"
        assert port == int(_setting(host, "GRPC_PORT")), f"{key}: {host} listens on another port"
        assert depends.get(host) == "service_healthy", f"{name} calls {host}: wait until it is healthy"


def _kafka_advertised() -> set[str]:
    listeners = _env("kafka")["KAFKA_ADVERTISED_LISTENERS"].split(",")
    return {listener.split("://", 1)[1] for listener in listeners}


@pytest.mark.parametrize("name", SERVICES)
def test_spans_go_to_the_collector(name: str) -> None:
    env = _env(name)
    endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])

    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert endpoint.hostname == "otel-collector" and endpoint.hostname in DEFINED
    receiver = _collector_config()["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert _host_port(receiver)[1] == endpoint.port


# ---------------------------------------------------------------------- the whole file


def test_every_dependency_exists_and_healthy_ones_have_a_health_check() -> None:
    for name in DEFINED:
        for dependency, condition in _depends_on(name).items():
            assert dependency in DEFINED, f"{name} depends on {dependency}, which is not defined"
            if condition == "service_healthy":
                has_image_check = "build" in DEFINED[dependency] and _health_port(dependency) > 0
                assert "healthcheck" in DEFINED[dependency] or has_image_check, dependency


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used = {source for name in DEFINED for source, _ in _mounts(name) if _is_named(source)}

    assert used == declared


def test_bind_mounted_files_exist() -> None:
    for name in DEFINED:
        for source, _ in _mounts(name):
            if source.startswith("."):
                assert (REPO / source).is_file(), f"{name} mounts {source}, which does not exist"


def test_kafka_is_the_official_image_in_kraft_mode() -> None:
    kafka = _service("kafka")
    env = _env("kafka")

    assert kafka["image"] == "apache/kafka:4.1.1"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "healthcheck" in kafka
    # A cluster id is 16 bytes in URL-safe base64, unpadded.
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    assert ("kafka-data", env["KAFKA_LOG_DIRS"]) in _mounts("kafka")


def _collector_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "otel" / "collector.yaml").read_text())
    return config


def test_collector_exports_traces_to_jaeger_and_the_debug_log() -> None:
    config = _collector_config()
    traces = config["service"]["pipelines"]["traces"]
    mounted = [source for source, _ in _mounts("otel-collector")]

    assert "./deploy/otel/collector.yaml" in mounted
    for kind in ("receivers", "processors", "exporters"):
        for component in traces[kind]:
            assert component in config[kind], f"the traces pipeline uses undefined {kind} {component}"
    assert "batch" in traces["processors"]
    assert "debug" in traces["exporters"]
    otlp = [name for name in traces["exporters"] if name.split("/")[0] in ("otlp", "otlp_grpc")]
    assert len(otlp) == 1
    host, port = _host_port(config["exporters"][otlp[0]]["endpoint"])
    assert host == "jaeger" and host in DEFINED
    assert port == 4317


def test_jaeger_ui_is_published() -> None:
    assert (16686, 16686) in _published("jaeger")


def test_prometheus_is_optional_and_scrapes_every_service() -> None:
    prometheus = _service("prometheus")
    mounted = dict(_mounts("prometheus"))
    config_file = Path(next(source for source in mounted if source.endswith("prometheus.yml")))
    config = yaml.safe_load((REPO / config_file).read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }

    assert prometheus["profiles"] == ["metrics"]
    assert targets == {f"{name}:{_setting(name, 'METRICS_PORT')}" for name in SERVICES}


# ---------------------------------------------------------------------- secured by configuration

SECRETS_DIR = "./deploy/secrets/"
# Mounted into every Cascade service: the CA bundle, the principals (hashes and roles, no tokens)
# and the password of the Kafka user.
SHARED_SECRET_FILES = ("tls/ca.pem", "principals.toml", "kafka-password")
_SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "PRIVATE")


def _secret_files() -> dict[str, str]:
    """Each top-level secret's file, relative to deploy/secrets/."""
    files = {}
    for name, secret in (COMPOSE.get("secrets") or {}).items():
        assert set(secret) == {"file"}, f"secret {name}: only `file:` secrets (made by the commands on top)"
        assert secret["file"].startswith(SECRETS_DIR), f"secret {name} should live under {SECRETS_DIR}"
        files[name] = secret["file"].removeprefix(SECRETS_DIR)
    return files


def _mounted_secrets(name: str) -> dict[str, str]:
    """Path in the container -> the file (relative to deploy/secrets/) of each secret it mounts."""
    files = _secret_files()
    mounted = {}
    for entry in _service(name).get("secrets", []):
        source, target = (entry, entry) if isinstance(entry, str) else (entry["source"], entry.get("target"))
        assert source in files, f"{name} mounts undefined secret {source}"
        path = target if target and target.startswith("/") else f"/run/secrets/{target or source}"
        mounted[path] = files[source]
    return mounted


def test_secret_files_are_the_ones_the_commands_make_and_git_ignores_them(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    made = files_the_commands_make(secrets)
    ignored = (REPO / ".gitignore").read_text().splitlines()

    assert set(_secret_files().values()) - made == {"kafka-password"}  # the one made by hand
    assert SECRETS_DIR.removeprefix("./") in ignored


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
    assert settings.token.get_secret_value() == "", "a token belongs in a file, not in the compose file"


@pytest.mark.parametrize("name", SERVICES)
def test_every_file_setting_is_a_mounted_secret_and_its_own(name: str) -> None:
    prefix = f"CASCADE_{name.upper()}_"
    mounted = _mounted_secrets(name)
    files = {key.removeprefix(prefix): value for key, value in _env(name).items() if key.endswith("_FILE")}
    expected = expected_secret_files(name)

    assert set(files) == set(expected)
    for field_name, path in files.items():
        assert path in mounted, f"{prefix}{field_name}={path} is not mounted"
        assert mounted[path] == expected[field_name], f"{prefix}{field_name} reads {mounted[path]}"


@pytest.mark.parametrize("name", [*SERVICES, "kafka"])
def test_each_container_mounts_no_other_identity(name: str) -> None:
    shared = SHARED_SECRET_FILES if name != "kafka" else ("tls/ca.pem", "kafka-password")
    allowed = {*shared, *own_secret_files(name).values()}

    assert set(_mounted_secrets(name).values()) <= allowed
    for other, service in DEFINED.items():
        if other not in (*SERVICES, "kafka"):
            assert "secrets" not in service, f"{other} needs no Cascade secret"


def _strings(node: Any) -> list[str]:
    """Every string value in a parsed YAML tree (comments are gone)."""
    if isinstance(node, dict):
        return [text for value in node.values() for text in _strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_no_secret_value_or_pem_is_written_in_the_file() -> None:
    values = _strings(COMPOSE)

    assert not [value for value in values if "-----BEGIN" in value]
    # The one password in play is read from its secret when the broker starts.
    inline = [value for value in values if re.search(r"password=(?!\$\$\(cat /run/secrets/)", value)]
    assert inline == []
    for name in DEFINED:
        for key, value in _env(name).items():
            if any(word in key for word in _SECRET_WORDS) and not key.endswith("_FILE"):
                raise AssertionError(f"{name}: {key}={value!r} holds a secret inline; mount it as a file")


def _kafka_listeners() -> dict[str, tuple[str, str, str]]:
    """Listener name -> (bound address, advertised address or "", security protocol)."""
    env = _env("kafka")
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    bound = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    return {name: (address, advertised.get(name, ""), protocols[name]) for name, address in bound.items()}


def test_kafka_serves_others_only_sasl_ssl_and_plaintext_only_on_its_loopback() -> None:
    for name, (bound, advertised, protocol) in _kafka_listeners().items():
        if protocol != "SASL_SSL":
            assert bound.startswith("127.0.0.1:"), (
                f"listener {name} ({protocol}) must not leave the container"
            )
            assert advertised in ("", bound)
        # The image's start script treats "SSL://" and "SASL_" in a listener as its JKS set-up.
        assert "SSL" not in name and "SASL" not in name


@pytest.mark.parametrize("name", SERVICES)
def test_services_reach_kafka_on_a_sasl_ssl_listener_as_its_scram_user(name: str) -> None:
    env = _env("kafka")
    listeners = {advertised: protocol for _, advertised, protocol in _kafka_listeners().values()}
    command = " ".join(_service("kafka")["command"])

    assert listeners[_setting(name, "KAFKA_BOOTSTRAP")] == "SASL_SSL"
    assert _setting(name, "KAFKA_SECURITY_PROTOCOL") == "SASL_SSL"
    mechanism = _setting(name, "KAFKA_SASL_MECHANISM")
    assert mechanism in env["KAFKA_SASL_ENABLED_MECHANISMS"].split(",")
    # The broker's SCRAM user is the services' user, with the password from the same secret.
    username = _setting(name, "KAFKA_SASL_USERNAME")
    assert (
        f'--add-scram "{mechanism}=[name={username},password=$$(cat /run/secrets/kafka-password)]"' in command
    )
    assert "/run/secrets/kafka-password" in _mounted_secrets("kafka")


def test_kafka_tls_uses_its_own_pem_key_and_the_services_ca() -> None:
    env = _env("kafka")
    mounted = _mounted_secrets("kafka")
    command = _service("kafka")["command"][0]

    assert env["KAFKA_SSL_KEYSTORE_TYPE"] == env["KAFKA_SSL_TRUSTSTORE_TYPE"] == "PEM"
    assert mounted[env["KAFKA_SSL_TRUSTSTORE_LOCATION"]] == "tls/ca.pem"
    # The keystore is made at start from the mounted key and certificate, into a private tmpfs.
    keystore = env["KAFKA_SSL_KEYSTORE_LOCATION"]
    assert keystore.startswith("/tmp/") and any(
        entry.startswith("/tmp:") for entry in _service("kafka")["tmpfs"]
    )
    in_container = {file: path for path, file in mounted.items()}
    key, cert = in_container["tls/kafka.key"], in_container["tls/kafka.pem"]
    assert f"cat {key} {cert} > {keystore}" in command
    assert command.index("umask 077") < command.index(keystore)


def test_the_brokers_rendered_properties_serve_clients_sasl_ssl_only() -> None:
    # As the image turns the KAFKA_* variables into server.properties (checked against a real
    # Kafka 4.1.1 with SASL_SSL clients when this was written; no Docker here).
    assert kafka_security_problems(_env("kafka")) == []
