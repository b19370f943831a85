"""Start, watch and stop a whole local Cascade stack: the Kafka broker and the six services.

The CLI (`cascade up/status/down/demo`) and the integration tests both drive this module, so it
speaks no CLI: progress goes to an optional callback and failures raise `StackError`. Everything a
stack owns lives under one home directory::

    kafka/               the broker, or kafka/node-N/ per broker of a cluster (cascade.stack.kafka_broker)
    data/<service>/      each service's own data; services share no filesystem
    data/<service>-N/    ... and each further replica's (StackConfig.replicas); so logs/ and run/
    logs/<service>.log   the service's log, rotated by size (logs/<service>.log.1, ...; cascade.logs)
    logs/<service>.out   anything else it writes to stdout and stderr (a crash's traceback), appended
    run/<service>.pid    pid (= process group id) of the running service
    run/console.pid      the web console (`cascade ui`'s Streamlit server), if `start_console` ran;
    logs/console.log     its output
    traces/<name>.jsonl  OTLP-JSON spans, unless the caller chose OTEL_TRACES_EXPORTER

Each service is a detached process (its own session), so it outlives the command that started it
and a signal to its process group reaches anything it forks. Unix only, like cascade.stack.kafka_broker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.console.settings import DEFAULT_PORT as DEFAULT_CONSOLE_PORT
from cascade.healthcheck import Health, probe
from cascade.stack import kafka_broker
from cascade.stack.identities import (
    PKI_NAMES,
    cli_security,
    ensure_tokens,
    principals_file,
    secrets_dir,
    tls_dir,
    token_file,
    write_private,
)
from cascade.stack.kafka_broker import BrokerSecurity, ClusterConfig
from cascade.stack.processes import command_line, file_lock, port_accepts, signal_group, write_atomically

__all__ = [
    "CONSOLE",
    "DEFAULT_CONSOLE_PORT",
    "DEFAULT_METRICS_PORTS",
    "DEFAULT_PORTS",
    "DEPENDENCIES",
    "KAFKA_POM",
    "KAFKA_USER",
    "SERVICES",
    "Health",
    "ServiceStatus",
    "Stack",
    "StackConfig",
    "StackError",
    "check_health",
    "console_command",
    "console_env",
    "default_home",
    "remembered_config",
]

LOOPBACK = "127.0.0.1"
KAFKA_POM = kafka_broker.DEPLOY_DIR / "pom.xml"
# The SCRAM user of a stack with kafka_security; every service and the CLI connect as it.
KAFKA_USER = "cascade"
# Start order: the services others call first. All are started before any is awaited, and each
# retries Kafka and its dependencies, so the order only makes start-up a little smoother.
SERVICES: tuple[str, ...] = ("ingest", "registry", "trainer", "validator", "monitor", "serving")
DEFAULT_PORTS: Mapping[str, int] = {
    "ingest": 50051,
    "trainer": 50052,
    "validator": 50053,
    "registry": 50054,
    "monitor": 50055,
    "serving": 8001,
}
# Prometheus /metrics port of each service under `cascade up`.
DEFAULT_METRICS_PORTS: Mapping[str, int] = {
    "ingest": 9151,
    "trainer": 9152,
    "validator": 9153,
    "registry": 9154,
    "monitor": 9155,
    "serving": 9101,
}
# The services whose gRPC address each service is given, as CASCADE_<NAME>_<DEPENDENCY>_ADDRESS.
DEPENDENCIES: Mapping[str, tuple[str, ...]] = {
    "ingest": (),
    "registry": ("ingest",),  # lineage reads the dataset's batches from ingest
    "trainer": ("ingest", "registry"),
    "validator": ("ingest", "registry"),
    "monitor": ("ingest", "registry"),
    "serving": ("registry",),
}

# The web console (cascade.console) runs beside the services when asked (`start_console`); it is
# no service: no gRPC, not in SERVICES, and `start` never starts it.
CONSOLE = "console"
_CONSOLE_APP = "cascade.console.app"

Progress = Callable[[str], None]

_HEALTH_TIMEOUT = 1.0
_POLL_INTERVAL = 0.25
_PROGRESS_EVERY = 5.0
_KILL_GRACE = 5.0
_TAIL_LINES = 30
# Replica N > 1 of a service listens REPLICA_PORT_STEP * (N - 1) above the first replica's gRPC
# (serving: and REST) and metrics ports, unless StackConfig.ports names "<service>-N".
REPLICA_PORT_STEP = 10


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says why and where to look."""


@dataclass
class StackConfig:
    home: Path = Path(".cascade")
    kafka_port: int = 9092
    controller_port: int = 9093
    # 1: one broker; 3: a KRaft cluster whose topics keep three copies (ports: cascade.stack.kafka_broker).
    kafka_brokers: int = 1
    topic_prefix: str = "cascade"
    # gRPC port per service; a service left out keeps its DEFAULT_PORTS entry.
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    # Added to every service's environment last, e.g. {"CASCADE_TRAINER_MIN_ROWS": "50"}.
    extra_env: dict[str, str] = field(default_factory=dict)
    # Write spans to traces/<service>.jsonl (ignored when the caller sets OTEL_TRACES_EXPORTER).
    traces: bool = True
    # Prometheus port per service; a service left out exposes no /metrics.
    metrics_ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_METRICS_PORTS))
    log_format: str = "json"
    # gRPC security (cascade.security): every hop on TLS with the home's local CA (made if missing);
    # mTLS: services also require client certificates; auth: every service requires a principal
    # holding the method's role. Tokens are made in the home either way, and the CLI uses admin's.
    tls: bool = False
    mtls: bool = False
    auth: bool = False
    # Kafka security: the broker's client listener is SASL_SSL only (the home's CA; SCRAM-SHA-512
    # user KAFKA_USER with a random password in HOME/secrets/kafka-password), and services use it.
    kafka_security: bool = False
    # Processes per service (1 when left out). Replica 1 keeps the service's name; replica N is
    # "<service>-N", with its own data dir, log, pid file and ports (REPLICA_PORT_STEP). Replicas share
    # what the settings make shared (Kafka, a database URL, an object store), a consumer group
    # (serving: one group per replica, by its instance id), and every caller is given all replicas
    # of a service it depends on.
    replicas: dict[str, int] = field(default_factory=dict)

    @property
    def serves_tls(self) -> bool:
        return self.tls or self.mtls


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    endpoint: str
    health: Health


class Stack:
    """One local stack, identified by its home directory. Cheap to build: it holds no resources,
    so any number of `Stack` objects (or CLI processes) can manage the same home."""

    def __init__(
        self,
        config: StackConfig | None = None,
        *,
        on_progress: Progress | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config or StackConfig()
        # Resolved once: services run with the repository as their working directory.
        self.home = self.config.home.expanduser().resolve()
        self.kafka = ClusterConfig(
            home=self.home / "kafka",
            brokers=self.config.kafka_brokers,
            port=self.config.kafka_port,
            controller_port=self.config.controller_port,
            security=self._broker_security(),
        )
        self._progress = on_progress or (lambda _message: None)
        # The caller's environment, which services inherit; a copy, so later changes to
        # os.environ in this process cannot change what services get. Tests pass their own.
        self._environ = dict(os.environ if environ is None else environ)
        # The latest process this object spawned per service, kept so it can be reaped (no
        # zombies, no ResourceWarning) and its exit code reported.
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        # Size of each log and output file before the latest start, so errors show only that run's lines.
        self._log_offsets: dict[str, int] = {}
        self._output_offsets: dict[str, int] = {}

    # ------------------------------------------------------------------ paths and addresses

    def data_dir(self, name: str) -> Path:
        return self.home / "data" / name

    def log_file(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def output_file(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.out"

    def pid_file(self, name: str) -> Path:
        return self.home / "run" / f"{name}.pid"

    def traces_file(self, name: str) -> Path:
        return self.home / "traces" / f"{name}.jsonl"

    def replicas(self, service: str) -> list[str]:
        """The process names of a service's replicas: the service's own name, then "<service>-N"."""
        _check_known(service)
        count = max(1, self.config.replicas.get(service, 1))
        return [service, *(f"{service}-{number}" for number in range(2, count + 1))]

    def instances(self, services: Iterable[str] = SERVICES) -> list[str]:
        """Every process of the given services, in start order."""
        return [name for service in _ordered(services) for name in self.replicas(service)]

    def port(self, name: str) -> int:
        """gRPC port of a service (its first replica) or of one replica ("<service>-N")."""
        service, number = self._replica_of(name)
        first = self.config.ports.get(service, DEFAULT_PORTS[service])
        return self.config.ports.get(name, first + REPLICA_PORT_STEP * (number - 1))

    def metrics_port(self, name: str) -> int:
        """Prometheus port of a service or replica; 0 (no /metrics) for a service left out."""
        service, number = self._replica_of(name)
        first = self.config.metrics_ports.get(service, 0)
        return self.config.metrics_ports.get(name, first and first + REPLICA_PORT_STEP * (number - 1))

    def address(self, name: str) -> str:
        """`host:port` of a service's (first replica's) gRPC server or of one replica's, or the Kafka
        bootstrap list for "kafka"."""
        if name == "kafka":
            return self.kafka.bootstrap
        return f"{LOOPBACK}:{self.port(name)}"

    def service_address(self, service: str) -> str:
        """Where a caller finds a service: its address, or with several replicas a gRPC target
        naming them all (ipv4:a,b), so a call goes to one that answers."""
        replicas = self.replicas(service)
        if len(replicas) == 1:
            return self.address(service)
        return "ipv4:" + ",".join(self.address(name) for name in replicas)

    def rest_port(self, name: str = "serving") -> int:
        """Serving's (or one serving replica's) KServe V2 REST port: one below its gRPC port, as
        Triton pairs them (8000 and 8001), so that stacks on other ports never share it."""
        return self.port(name) - 1

    def _replica_of(self, name: str) -> tuple[str, int]:
        """(service, replica number) of a process name; StackError for one this stack has not."""
        service, _, number = name.rpartition("-")
        if service in DEFAULT_PORTS and number.isdigit() and name in self.replicas(service):
            return service, int(number)
        _check_known(name)
        return name, 1

    # ------------------------------------------------------------------ environment

    def service_env(self, name: str) -> dict[str, str]:
        """The variables the stack sets for one service (on top of the caller's environment)."""
        service, _number = self._replica_of(name)
        prefix = f"CASCADE_{service.upper()}_"
        settings = {
            "KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "TOPIC_PREFIX": self.config.topic_prefix,
            "TOPIC_REPLICATION_FACTOR": str(self.kafka.replication_factor),
            "GRPC_HOST": LOOPBACK,
            "GRPC_PORT": str(self.port(name)),
            "DATA_DIR": str(self.data_dir(name)),
            "METRICS_PORT": str(self.metrics_port(name)),
            "LOG_FORMAT": self.config.log_format,
            **self._security_settings(service),
            **self.kafka_client_settings(),
        }
        for dependency in DEPENDENCIES[service]:
            settings[f"{dependency.upper()}_ADDRESS"] = self.service_address(dependency)
        if service == "serving":
            settings["HTTP_PORT"] = str(self.rest_port(name))
            if len(self.replicas(service)) > 1:  # one consumer group per replica, named after it
                settings["INSTANCE_ID"] = name
        if service == "registry":  # chat notifications link to the console, once `start_console` runs it
            settings["CONSOLE_URL_FILE"] = str(self.console_url_file())
        env = {prefix + key: value for key, value in settings.items()}
        env["PYTHONUNBUFFERED"] = "1"  # a crash's last words reach the log
        env.update(self.tracing_env(name))
        env.update(self.config.extra_env)
        return env

    # ------------------------------------------------------------------ Kafka security

    def kafka_password_file(self) -> Path:
        return secrets_dir(self.home) / "kafka-password"

    def _broker_security(self) -> BrokerSecurity | None:
        if not self.config.kafka_security:
            return None
        pki = tls_dir(self.home)
        return BrokerSecurity(
            pki / "kafka.pem", pki / "kafka.key", pki / "ca.pem", KAFKA_USER, self.kafka_password_file()
        )

    def kafka_client_settings(self) -> dict[str, str]:
        """How a client of this stack's Kafka connects, as the KAFKA_* settings (no secret in them:
        the password stays in its file)."""
        if not self.config.kafka_security:
            return {}
        return {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": kafka_broker.SCRAM_MECHANISM,
            "KAFKA_SASL_USERNAME": KAFKA_USER,
            "KAFKA_SASL_PASSWORD_FILE": str(self.kafka_password_file()),
            "KAFKA_SSL_CA_FILE": str(tls_dir(self.home) / "ca.pem"),
        }

    def kafka_client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments for the CLI's and tests' own Kafka clients of this stack."""
        from cascade.kafka_security import aiokafka_kwargs
        from cascade.settings import ServiceSettings

        settings = {key.lower(): value for key, value in self.kafka_client_settings().items()}
        return aiokafka_kwargs(ServiceSettings.model_validate(settings))

    def _prepare_kafka_secrets(self) -> None:
        """The CA and the broker's certificate, and a SCRAM password made once and kept."""
        if not self.config.kafka_security:
            return
        from cascade.stack.certs import init_pki

        init_pki(tls_dir(self.home), PKI_NAMES)
        password_file = self.kafka_password_file()
        if not password_file.exists():
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.parent.chmod(0o700)
            # No newline: the broker reads the file whole (cascade.stack.kafka_broker.BrokerSecurity).
            write_private(password_file, secrets.token_urlsafe(32))

    def _security_settings(self, name: str) -> dict[str, str]:
        """A service's identity (its token file), the principals it knows, and its TLS material."""
        settings = {
            "AUTH_PRINCIPALS_FILE": str(principals_file(secrets_dir(self.home))),
            "AUTH_REQUIRED": str(self.config.auth).lower(),
            "TOKEN_FILE": str(token_file(secrets_dir(self.home), name)),
        }
        if self.config.serves_tls:
            pki = tls_dir(self.home)
            settings |= {
                "TLS_CERT_FILE": str(pki / f"{name}.pem"),
                "TLS_KEY_FILE": str(pki / f"{name}.key"),
                "TLS_CA_FILE": str(pki / "ca.pem"),
                "TLS_REQUIRE_CLIENT_CERT": str(self.config.mtls).lower(),
            }
        return settings

    @property
    def client_security(self) -> ClientSecurity:
        """How local tools (CLI, tests, bench) call the stack: as admin, over TLS if it serves TLS."""
        return cli_security(self.home, tls=self.config.serves_tls)

    def _prepare_identities(self) -> None:
        ensure_tokens(secrets_dir(self.home))
        if self.config.serves_tls:
            from cascade.stack.certs import init_pki  # cryptography loads only for a stack that needs it

            init_pki(tls_dir(self.home), PKI_NAMES)

    def tracing_env(self, component: str) -> dict[str, str]:
        """OTEL variables for one process of the stack (a service, or "cli"); empty when the caller
        chose an exporter, since their choice wins."""
        if "OTEL_TRACES_EXPORTER" in self._environ:
            return {}
        if not self.config.traces:
            # Without this the SDK default, otlp, would retry a collector that is not there.
            return {"OTEL_TRACES_EXPORTER": "none"}
        return {
            "OTEL_TRACES_EXPORTER": "otlp_json_file",
            "CASCADE_TRACES_FILE": str(self.traces_file(component)),
        }

    # ------------------------------------------------------------------ start

    def start(self, services: Iterable[str] = SERVICES, timeout: float = 120.0) -> None:
        """Start Kafka and the given services unless already running, then wait until every one
        reports SERVING. On failure the processes that did start keep running: call `stop()`.
        `timeout` does not count the one-off download of the Kafka jars."""
        names = self.instances(services)
        self._install_kafka()
        self._prepare_identities()
        self._prepare_kafka_secrets()
        self._remember_ports()
        deadline = time.monotonic() + timeout
        self._start_kafka(timeout)
        for name in names:
            self._ensure_running(name)
        self._wait_serving(names, deadline)

    def _remember_ports(self) -> None:
        """Write the ports to HOME/run/stack.json, so later commands on this home find the services."""
        saved = {
            "kafka_port": self.config.kafka_port,
            "controller_port": self.config.controller_port,
            "kafka_brokers": self.config.kafka_brokers,
            "topic_prefix": self.config.topic_prefix,
            "ports": {name: self.port(name) for name in SERVICES},
            "metrics_ports": self.config.metrics_ports,
            "tls": self.config.tls,
            "mtls": self.config.mtls,
            "auth": self.config.auth,
            "kafka_security": self.config.kafka_security,
            "replicas": self.config.replicas,
        }
        remembered = self.home / "run" / "stack.json"
        remembered.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(remembered, json.dumps(saved, indent=2))

    def start_kafka(self, timeout: float = 90.0) -> None:
        """Start the broker(s) alone (installing them first if needed) and remember the config, so
        later commands on this home find a cluster by its home alone."""
        self._install_kafka()
        self._prepare_kafka_secrets()
        self._remember_ports()
        self._start_kafka(timeout)

    def start_service(self, name: str, timeout: float = 60.0) -> None:
        """Start one service or replica (Kafka is assumed up) unless running, and wait until it is
        SERVING."""
        self._prepare_identities()
        self._ensure_running(name)
        self._wait_serving([name], time.monotonic() + timeout)

    def _start_kafka(self, timeout: float) -> None:
        for node in self.kafka.nodes:
            broker = kafka_broker.status(node)
            if broker.running:
                self._progress(f"Kafka already running (pid {broker.pid}) on {broker.bootstrap}")
            else:
                self._progress(f"Starting Kafka on {broker.bootstrap}")
        # Also when running: start() then waits out a broker another process is still starting.
        kafka_broker.start_cluster(self.kafka, pom=KAFKA_POM, timeout=timeout)

    def _install_kafka(self) -> None:
        if not self.kafka.libs_dir.is_dir():
            self._progress("Fetching the Kafka jars with Maven (first run only)")
        kafka_broker.install(self.kafka, pom=KAFKA_POM)

    def _ensure_running(self, name: str) -> None:
        self._replica_of(name)
        with self._lock():
            pid = self.pid(name)
            if pid is not None:
                self._progress(f"{name} already running (pid {pid})")
                return
            if port_accepts(LOOPBACK, self.port(name)):
                raise StackError(
                    f"cannot start {name}: {self.address(name)} is already taken by a process that is not "
                    f"this stack's {name} (no live pid in {self.pid_file(name)})"
                )
            self._spawn(name)

    def _spawn(self, name: str) -> None:
        log_file, output_file = self.log_file(name), self.output_file(name)
        for directory in (log_file.parent, self.pid_file(name).parent, self.data_dir(name)):
            directory.mkdir(parents=True, exist_ok=True)
        self._log_offsets[name] = log_file.stat().st_size if log_file.exists() else 0
        with output_file.open("ab") as output:
            started = datetime.now(UTC).isoformat()
            module = f"cascade.services.{self._replica_of(name)[0]}"
            output.write(f"===== cascade: starting {module} as {name} at {started} =====\n".encode())
            output.flush()
            self._output_offsets[name] = output.tell()
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=_repo_root(),
                # The service writes its log itself, rotating it, so no outage can fill the disk.
                env={**self._environ, **self.service_env(name), "CASCADE_LOG_FILE": str(log_file)},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[name] = process
        write_atomically(self.pid_file(name), f"{process.pid}\n")
        self._progress(f"Started {name} (pid {process.pid}) on {self.address(name)}")

    def _wait_serving(self, names: list[str], deadline: float) -> None:
        pending = list(names)
        next_report = time.monotonic() + _PROGRESS_EVERY
        while pending:
            for name in list(pending):
                if self.pid(name) is None:
                    raise StackError(self._died_message(name))
                if check_health(self.address(name), security=self.client_security) == "SERVING":
                    pending.remove(name)
                    serving = self._replica_of(name)[0] == "serving"
                    rest = f" (KServe V2 REST on {LOOPBACK}:{self.rest_port(name)})" if serving else ""
                    self._progress(f"{name} is SERVING on {self.address(name)}{rest}")
            if not pending:
                return
            now = time.monotonic()
            if now >= deadline:
                raise StackError(self._timeout_message(pending))
            if now >= next_report:
                self._progress(f"Waiting for {', '.join(pending)} to report SERVING")
                next_report = now + _PROGRESS_EVERY
            time.sleep(_POLL_INTERVAL)

    def _died_message(self, name: str) -> str:
        exit_code = self._forget_exited(name)
        how = f"exited with code {exit_code}" if exit_code is not None else "exited"
        return f"{name} {how} during start-up.\n{self._log_tail(name)}"

    def _timeout_message(self, pending: list[str]) -> str:
        tails = "\n".join(self._log_tail(name) for name in pending)
        return f"{', '.join(pending)} not SERVING in time (still running; `stop()` ends them).\n{tails}"

    def _forget_exited(self, name: str) -> int | None:
        """Exit code of the service if this object spawned it; drops its stale pid file."""
        child = self._children.pop(name, None)
        self.pid_file(name).unlink(missing_ok=True)
        return None if child is None else child.poll()

    def _log_tail(self, name: str) -> str:
        return "\n".join(
            _tail(path, offsets.get(name, 0))
            for path, offsets in (
                (self.log_file(name), self._log_offsets),
                (self.output_file(name), self._output_offsets),
            )
        )

    # ------------------------------------------------------------------ the web console

    def console_url(self, port: int) -> str:
        return f"http://{LOOPBACK}:{port}/"

    def console_url_file(self) -> Path:
        """Where the running console's URL is written for the registry's notifications to link to."""
        return self.home / "run" / "console.url"

    def start_console(self, port: int = DEFAULT_CONSOLE_PORT, timeout: float = 60.0) -> str:
        """Start the web console of this stack on `port` in the background (unless it runs already)
        and wait until it answers; its URL. StackError when Streamlit is missing, the port is taken
        or the console does not come up (its log's last lines say why)."""
        if importlib.util.find_spec("streamlit") is None:
            raise StackError("the console needs Streamlit: pip install 'cascade-mlops[console]'")
        with self._lock():
            pid = self.pid(CONSOLE)
            if pid is not None:
                running = self.console_port(pid)
                self._progress(f"console already running (pid {pid}) on {self.console_url(running or port)}")
                return self.console_url(running or port)
            if port_accepts(LOOPBACK, port):
                raise StackError(
                    f"cannot start the console: port {port} is taken (--console-port picks another)"
                )
            self._spawn_console(port)
        url = self.console_url(port)
        deadline = time.monotonic() + timeout
        while not console_answers(port):
            if self.pid(CONSOLE) is None:
                self._forget_exited(CONSOLE)
                raise StackError(f"the console exited during start-up.\n{_tail(self.log_file(CONSOLE), 0)}")
            if time.monotonic() >= deadline:
                raise StackError(
                    f"the console did not answer on {url} in {timeout:g} s (see {self.log_file(CONSOLE)})"
                )
            time.sleep(_POLL_INTERVAL)
        self._progress(f"console is up on {url}")
        self.console_url_file().write_text(url)
        return url

    def _spawn_console(self, port: int) -> None:
        log_file = self.log_file(CONSOLE)
        for directory in (log_file.parent, self.pid_file(CONSOLE).parent):
            directory.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as output:
            started = datetime.now(UTC).isoformat()
            output.write(f"===== cascade: starting the console on port {port} at {started} =====\n".encode())
            output.flush()
            process = subprocess.Popen(
                console_command(LOOPBACK, port, self.home),
                cwd=_repo_root(),
                env=console_env(self.home, self._environ),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[CONSOLE] = process
        write_atomically(self.pid_file(CONSOLE), f"{process.pid}\n")
        self._progress(f"Started the console (pid {process.pid}) on {self.console_url(port)}")

    def console_port(self, pid: int) -> int | None:
        """The port a running console listens on, read from its command line."""
        for part in (command_line(pid) or "").split():
            if part.startswith("--server.port="):
                with contextlib.suppress(ValueError):
                    return int(part.split("=", 1)[1])
        return None

    def console_status(self) -> ServiceStatus:
        """The console's row: its URL, SERVING when its health page answers, DOWN without a process."""
        pid = self.pid(CONSOLE)
        port = self.console_port(pid) if pid is not None else None
        if pid is None or port is None:
            return ServiceStatus(CONSOLE, None, "-", "DOWN")
        health: Health = "SERVING" if console_answers(port) else "NOT_SERVING"
        return ServiceStatus(CONSOLE, pid, self.console_url(port), health)

    def stop_console(self, timeout: float = 10.0) -> bool:
        """Stop the console if it runs; whether it did."""
        pid = self.pid(CONSOLE)
        if pid is None:
            self.pid_file(CONSOLE).unlink(missing_ok=True)
            return False
        self._progress("Stopping the console")
        signal_group(pid, signal.SIGTERM)
        if self._wait_exit({CONSOLE: pid}, timeout):
            signal_group(pid, signal.SIGKILL)
            if self._wait_exit({CONSOLE: pid}, _KILL_GRACE):
                raise StackError(f"the console (pid {pid}) still runs after SIGKILL")
        self.pid_file(CONSOLE).unlink(missing_ok=True)
        self.console_url_file().unlink(missing_ok=True)
        return True

    # ------------------------------------------------------------------ stop

    def kill_service(
        self, name: str, sig: signal.Signals = signal.SIGTERM, wait: bool = True, timeout: float = 30.0
    ) -> bool:
        """Send `sig` to a service's process group; with `wait`, return once it is gone. Returns
        whether it was running. SIGKILL leaves Kafka offsets uncommitted, as a real crash would."""
        pid = self.pid(name)
        if pid is None:
            self.pid_file(name).unlink(missing_ok=True)
            return False
        signal_group(pid, sig)
        if wait:
            if self._wait_exit({name: pid}, timeout):
                raise StackError(f"{name} (pid {pid}) still running {timeout:g} s after {sig.name}")
            self.pid_file(name).unlink(missing_ok=True)
        return True

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every service, SIGKILL what is left after `timeout`, then stop Kafka.
        Idempotent, and leaves no process of this stack behind."""
        if not self.home.is_dir():
            return
        self.stop_console()
        running = {name: pid for name in self.instances() if (pid := self.pid(name)) is not None}
        if running:
            self._progress(f"Stopping {', '.join(running)}")
        for pid in running.values():
            signal_group(pid, signal.SIGTERM)
        stubborn = self._wait_exit(running, timeout)
        for name, pid in stubborn.items():
            self._progress(f"{name} (pid {pid}) ignored SIGTERM for {timeout:g} s; killing it")
            signal_group(pid, signal.SIGKILL)
        survivors = self._wait_exit(stubborn, _KILL_GRACE)
        if survivors:
            raise StackError(f"still running after SIGKILL: {survivors}")
        for name in self.instances():
            self.pid_file(name).unlink(missing_ok=True)
        if any(kafka_broker.status(node).running for node in self.kafka.nodes):
            self._progress("Stopping Kafka")
        kafka_broker.stop_cluster(self.kafka)

    def _wait_exit(self, pids: dict[str, int], timeout: float) -> dict[str, int]:
        """Wait until the processes are gone; return those still running at the deadline."""
        deadline = time.monotonic() + timeout
        alive = dict(pids)
        while alive:
            alive = {name: pid for name, pid in alive.items() if self._is_service_process(pid, name)}
            if not alive or time.monotonic() >= deadline:
                break
            time.sleep(_POLL_INTERVAL / 2)
        return alive

    # ------------------------------------------------------------------ status

    def pid(self, name: str) -> int | None:
        """Pid of the service if its pid file names a live process that is that service."""
        try:
            pid = int(self.pid_file(name).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if self._is_service_process(pid, name) else None

    def health(self, name: str) -> Health:
        """DOWN without a live process; NOT_SERVING while it starts, drains or lost Kafka."""
        if self.pid(name) is None:
            return "DOWN"
        health = check_health(self.address(name), security=self.client_security)
        return "NOT_SERVING" if health == "DOWN" else health

    def status(self) -> list[ServiceStatus]:
        """Kafka first (one row per broker: kafka-1, kafka-2, ... on a cluster), then every service
        in start order. Never raises for a stack that is down."""
        rows = []
        for node in self.kafka.nodes:
            broker = kafka_broker.status(node)
            kafka_health: Health = "SERVING" if broker.ready else "NOT_SERVING" if broker.running else "DOWN"
            name = "kafka" if self.kafka.brokers == 1 else f"kafka-{broker.node_id}"
            rows.append(ServiceStatus(name, broker.pid, broker.bootstrap, kafka_health))
        for name in self.instances():
            rows.append(ServiceStatus(name, self.pid(name), self.address(name), self.health(name)))
        return rows

    # ------------------------------------------------------------------ process helpers

    def _is_service_process(self, pid: int, name: str) -> bool:
        child = self._children.get(name)
        if child is not None and child.pid == pid:
            return child.poll() is None  # poll() also reaps it, so no zombie lingers
        # Not our child: check the command line, which also guards against pid reuse.
        seen = command_line(pid)
        if name == CONSOLE:
            return seen is not None and "streamlit" in seen and _console_script() in seen
        return seen is not None and f"cascade.services.{self._replica_of(name)[0]}" in seen

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Two `cascade up` at once must not both find a service down and start it twice.
        with file_lock(self.home / "run" / ".lock"):
            yield


def remembered_config(home: Path) -> StackConfig | None:
    """The config a stack in `home` was started with, if one was."""
    try:
        saved = json.loads((home / "run" / "stack.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return StackConfig(
        home=home,
        kafka_port=int(saved["kafka_port"]),
        controller_port=int(saved["controller_port"]),
        kafka_brokers=int(saved.get("kafka_brokers", 1)),
        topic_prefix=str(saved["topic_prefix"]),
        ports={str(k): int(v) for k, v in saved["ports"].items()},
        metrics_ports={str(k): int(v) for k, v in saved["metrics_ports"].items()},
        tls=bool(saved.get("tls", False)),
        mtls=bool(saved.get("mtls", False)),
        auth=bool(saved.get("auth", False)),
        kafka_security=bool(saved.get("kafka_security", False)),
        replicas={str(k): int(v) for k, v in saved.get("replicas", {}).items()},
    )


HOME_DIR_NAME = ".cascade"


def default_home(cwd: Path, environ: Mapping[str, str]) -> Path:
    """The home a command uses when given none: the nearest `.cascade` directory in `cwd` or a
    parent (a stack started inside a checkout), else `cascade` under the user's data directory
    (XDG_DATA_HOME, default ~/.local/share). Either way one stack is found from any directory,
    so `cascade status` run elsewhere does not report a running stack DOWN."""
    for directory in (cwd, *cwd.parents):
        candidate = directory / HOME_DIR_NAME
        if candidate.is_dir():
            return candidate
    data_home = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "~")) / ".local" / "share")
    return Path(data_home).expanduser() / "cascade"


def check_health(
    address: str, timeout: float = _HEALTH_TIMEOUT, security: ClientSecurity = PLAINTEXT
) -> Health:
    """`grpc.health.v1.Health/Check` for the whole server (service ""); DOWN if unreachable."""
    health, _reason = probe(address, timeout=timeout, security=security)
    return health


def _console_script() -> str:
    """The file Streamlit runs for the console, found without importing it (importing it would run
    the app); it needs no Streamlit to be found."""
    spec = importlib.util.find_spec(_CONSOLE_APP)
    if spec is None or spec.origin is None:
        raise StackError(f"{_CONSOLE_APP} is not installed")
    return str(Path(spec.origin).resolve())


def console_command(host: str, port: int, home: Path) -> list[str]:
    """The Streamlit command line serving the console of the stack in `home`."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        _console_script(),
        "--server.headless=true",
        f"--server.address={host}",
        f"--server.port={port}",
        "--browser.gatherUsageStats=false",
        # Pages are built from the installed package; no reload on file changes.
        "--server.runOnSave=false",
        "--server.fileWatcherType=none",
        "--global.developmentMode=false",
        # A console, not an app under development: no Deploy button, no rerun/settings menu.
        "--client.toolbarMode=viewer",
    ]


def console_env(home: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The console's environment: the caller's (`os.environ` by default) and where the stack lives."""
    return {**(os.environ if environ is None else environ), "CASCADE_CONSOLE_HOME": str(home)}


def console_answers(port: int, timeout: float = 1.0) -> bool:
    """Whether a Streamlit server on the loopback `port` answers its health page with ok."""
    # Straight to the address: a proxy named in the environment must not answer for it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{LOOPBACK}:{port}/_stcore/health", timeout=timeout) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _check_known(name: str) -> None:
    if name not in DEFAULT_PORTS:
        raise StackError(f"unknown service {name!r}; the services are {', '.join(SERVICES)}")


def _ordered(services: Iterable[str]) -> list[str]:
    wanted = set(services)
    for name in wanted:
        _check_known(name)
    return [name for name in SERVICES if name in wanted]


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def _tail(path: Path, offset: int) -> str:
    """The last lines of a file written after `offset` (from its start if it rotated since)."""
    try:
        with path.open("rb") as file:
            file.seek(offset if offset <= os.fstat(file.fileno()).st_size else 0)
            text = file.read().decode(errors="replace")
    except FileNotFoundError:
        text = ""
    lines = "\n".join(text.splitlines()[-_TAIL_LINES:]) or "(empty)"
    return f"--- last lines of {path} ---\n{lines}"
