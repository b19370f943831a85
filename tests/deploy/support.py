"""What the deployment tests share: the services and their settings classes, and a Dockerfile reader."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cascade.settings import ServiceSettings
from cascade.stack import DEFAULT_PORTS, SERVICES
from cascade.stack.certs import init_pki
from cascade.stack.identities import PKI_NAMES, ensure_tokens

__all__ = [
    "DATA_SERVICES",
    "DEFAULT_PORTS",
    "DOCKERFILE",
    "METRICS_PORT",
    "REPO",
    "SERVICES",
    "Stage",
    "env_problems",
    "kafka_properties",
    "kafka_security_problems",
    "listening_ports",
    "load_settings",
    "module_problems",
    "parse_dockerfile",
    "settings_class",
]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
# The services that own data which must outlive a container (their DATA_DIR is a volume).
DATA_SERVICES = ("ingest", "registry", "monitor")
# Prometheus port of every service in a container.
METRICS_PORT = 9464
# CASCADE_* variables that are not a service's settings but are still read (by the span exporter).
_OTHER_CASCADE_VARIABLES = frozenset({"CASCADE_TRACES_FILE"})


def settings_class(name: str) -> type[ServiceSettings]:
    """The settings class of `services.<name>`: the one in its settings module with its prefix."""
    module = importlib.import_module(f"cascade.services.{name}.settings")
    prefix = f"CASCADE_{name.upper()}_"
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value.model_config.get("env_prefix") == prefix
    ]
    assert len(found) == 1, f"cascade.services.{name}.settings should define one settings class with {prefix}"
    return found[0]


def env_problems(name: str, env: Mapping[str, str]) -> list[str]:
    """What is wrong with a container environment for service `name`: variables with its prefix
    that name no settings field, Cascade variables with another prefix, required fields unset."""
    cls = settings_class(name)
    prefix = f"CASCADE_{name.upper()}_"
    problems = []
    for key in env:
        if key.startswith(prefix):
            if key.removeprefix(prefix).lower() not in cls.model_fields:
                problems.append(f"{key} names no field of {cls.__name__}")
        elif key.startswith("CASCADE_") and key not in _OTHER_CASCADE_VARIABLES:
            problems.append(f"{key} is not {name}'s (its prefix is {prefix})")
    for field_name, info in cls.model_fields.items():
        if info.is_required() and prefix + field_name.upper() not in env:
            problems.append(f"{prefix}{field_name.upper()} is required and not set")
    return problems


def listening_ports(settings: ServiceSettings) -> list[int]:
    """The ports a service listens on, in this order: gRPC, REST (serving's, when enabled), metrics."""
    rest = [settings.http_port] if getattr(settings, "http_enabled", False) else []
    return [settings.grpc_port, *rest, settings.metrics_port]


def load_settings(name: str, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """The settings the service would build from exactly this environment (no .env file)."""
    for key in list(os.environ):
        if key.startswith("CASCADE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return settings_class(name)(_env_file=None)


def kafka_properties(env: Mapping[str, str]) -> dict[str, str]:
    """The broker properties the apache/kafka image renders from a container's KAFKA_* variables
    (its `utility render-properties`): prefix dropped, `___` a dash, `__` an underscore, `_` a dot
    (between two other characters, leftmost first, as its regular expression replaces), lower
    case. Like the image, a variable whose value holds `=` is left out: it splits each `KEY=VALUE`
    of the environment at every `=` and keeps only those with exactly two parts."""
    properties = {}
    for key, value in env.items():
        if not key.startswith("KAFKA_") or key in _KAFKA_NOT_PROPERTIES or "=" in value:
            continue
        dotted = re.sub(
            r"[^_]_[^_]", lambda match: match.group(0).replace("_", "."), key.removeprefix("KAFKA_")
        )
        properties[dotted.replace("___", "-").replace("__", "_").lower()] = value
    return properties


def kafka_security_problems(env: Mapping[str, str]) -> list[str]:
    """What keeps a broker configured by these variables from serving clients SASL_SSL only:
    a variable the image would drop, a listener other than SASL_SSL reachable from outside, a
    SASL_SSL listener without a login module for an enabled mechanism, no PEM key and trust."""
    properties = kafka_properties(env)
    problems = [f"{key}: the image drops a value holding '='" for key, value in env.items() if "=" in value]
    protocols = dict(item.split(":") for item in properties["listener.security.protocol.map"].split(","))
    mechanisms = properties.get("sasl.enabled.mechanisms", "").split(",")
    for listener in properties["listeners"].split(","):
        name, _, address = listener.partition("://")
        if protocols[name] != "SASL_SSL":
            if not address.startswith("127.0.0.1:"):
                problems.append(f"listener {name} is {protocols[name]} and not on loopback")
            continue
        for mechanism in mechanisms:
            jaas = properties.get(f"listener.name.{name.lower()}.{mechanism.lower()}.sasl.jaas.config", "")
            if not jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required"):
                problems.append(f"listener {name} has no SCRAM login module for {mechanism}")
    if mechanisms != ["SCRAM-SHA-512"]:
        problems.append(f"SASL mechanisms {mechanisms}: expected SCRAM-SHA-512 only")
    for store in ("keystore", "truststore"):
        if properties.get(f"ssl.{store}.type") != "PEM" or not properties.get(f"ssl.{store}.location"):
            problems.append(f"no PEM {store}")
    if any("password" in key for key in properties):
        problems.append(
            "a password in the broker's properties: PEM needs none, SCRAM users live in the metadata"
        )
    return problems


# Variables the image passes to the JVM, not to the broker's properties.
_KAFKA_NOT_PROPERTIES = frozenset(
    {
        "KAFKA_VERSION",
        "KAFKA_HEAP_OPTS",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_OPTS",
        "KAFKA_JMX_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_GC_LOG_OPTS",
        "KAFKA_LOG4J_ROOT_LOGLEVEL",
        "KAFKA_LOG4J_LOGGERS",
        "KAFKA_TOOLS_LOG4J_LOGLEVEL",
    }
)


def module_problems(command: list[str]) -> list[str]:
    """`python -m MODULE` must name a module that exists and can run as a program."""
    if command[:2] != ["python", "-m"] or len(command) < 3:
        return [f"{command} is not `python -m MODULE`"]
    module = command[2]
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # its parent package is missing
        spec = None
    if spec is None:
        return [f"no module {module}"]
    if spec.submodule_search_locations is not None and importlib.util.find_spec(f"{module}.__main__") is None:
        return [f"package {module} has no __main__"]
    return []


# ---------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV KEY=VALUE ... (the only form used here), all of them in order."""
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV {args!r}: use KEY=VALUE"
                env[key] = value
        return env

    def exposed(self) -> list[int]:
        return [int(port.split("/")[0]) for args in self.all("EXPOSE") for port in args.split()]

    def cmd(self) -> list[str] | None:
        args = self.last("CMD")
        return _exec_form(args) if args is not None else None

    def healthcheck(self) -> list[str] | None:
        args = self.last("HEALTHCHECK")
        if args is None:
            return None
        match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.+)", args, re.DOTALL)
        assert match, f"HEALTHCHECK {args!r}: expected [OPTIONS] CMD [...]"
        return _exec_form(match.group(2))


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), args
    return value


def parse_dockerfile(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages by name (or index), each with its instructions, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:  # as Docker: also inside a continued line
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert match, f"FROM {args!r}"
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), match.group(1))
            current = Stage(name=match.group(2) or str(len(stages)), base=base)
            stages[current.name] = current
        elif current is None:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            current.instructions.append((keyword, args))
    return stages


def own_secret_files(name: str) -> dict[str, str]:
    """A service's own identity, as `cascade auth init` and `cascade certs init` name its files
    (relative to deploy/secrets/), by the setting that points at each."""
    return {
        "TOKEN_FILE": f"{name}.token",
        "TLS_CERT_FILE": f"tls/{name}.pem",
        "TLS_KEY_FILE": f"tls/{name}.key",
    }


def expected_secret_files(name: str) -> dict[str, str]:
    """Every `*_FILE` setting a secured service is given, and the file under deploy/secrets/ each
    must read: its own identity, and the CA, principals and Kafka password every service shares."""
    return {
        **own_secret_files(name),
        "TLS_CA_FILE": "tls/ca.pem",
        "AUTH_PRINCIPALS_FILE": "principals.toml",
        "KAFKA_SASL_PASSWORD_FILE": "kafka-password",
        "KAFKA_SSL_CA_FILE": "tls/ca.pem",
    }


def files_the_commands_make(secrets: Path) -> set[str]:
    """What `cascade auth init --dir SECRETS` and `cascade certs init --dir SECRETS/tls` write,
    relative to SECRETS."""
    ensure_tokens(secrets)
    init_pki(secrets / "tls", PKI_NAMES)
    return {str(path.relative_to(secrets)) for path in secrets.rglob("*") if path.is_file()}
