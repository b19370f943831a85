"""Run a real Apache Kafka 4.x broker (KRaft), or a local cluster of them, with plain ``java``.

Each JVM acts as both broker and controller (``process.roles=broker,controller``).
Everything a single node needs lives under ``BrokerConfig.home``::

    libs/               broker jars, resolved by Maven from deploy/kafka/pom.xml
    data/               KRaft metadata and topic logs (formatted once)
    logs/server.log     log4j2 output (deploy/kafka/log4j2.properties)
    logs/stdout.log     raw JVM stdout/stderr (crashes, bad JVM flags)
    cluster.id          generated once, so a re-format keeps the same id
    server.properties   rendered from deploy/kafka/server.properties.template
                        (+ sasl_ssl.properties.template when secured: then mode 0600)
    keystore.pem        secured only: the broker's key and certificate in one file (0600)
    scram.user          secured only: the SCRAM user the store was formatted with
    broker.pid          pid (= process group id) of the running JVM
    .lock               flock serialising start()/stop() across processes

A cluster (``ClusterConfig`` with ``brokers`` > 1) is that many such JVMs from the same jars,
whose controllers form one quorum of as many voters. It keeps ``libs/``, ``cluster.id`` and
``controllers`` (each voter's directory id) in its home and each node's own files in
``node-<id>/``. Node *i* (from 1) listens on ``port + 2(i-1)`` and ``controller_port + 2(i-1)``,
so the defaults give 9092/9093, 9094/9095, 9096/9097. On a cluster of three or more, topics are
replicated three times and a write needs two in-sync replicas, so one node can fail (or be
SIGKILLed by a test, ``kill()``) and be restarted (``start()`` of that node) with nothing lost.

With ``security`` (a ``BrokerSecurity``), the client listener is SASL_SSL only: TLS with PEM files
(the local CA's, ``cascade.stack.certs``) and SCRAM-SHA-512 for one user, whom Kafka's own StorageTool
writes into the metadata when the store is formatted. Brokers replicate over that listener as that
user; the controller listener stays PLAINTEXT on loopback.

Unix only: relies on process groups, ``fcntl`` and ``/proc`` (or ``ps``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cascade.stack.processes import (
    command_line,
    file_lock,
    port_accepts,
    port_bindable,
    signal_group,
    write_atomically,
)

__all__ = [
    "DEPLOY_DIR",
    "READY_LOG_LINE",
    "BrokerConfig",
    "BrokerError",
    "BrokerSecurity",
    "BrokerStatus",
    "ClusterConfig",
    "QuorumStatus",
    "install",
    "kill",
    "quorum_status",
    "render_server_properties",
    "start",
    "start_cluster",
    "status",
    "stop",
    "stop_cluster",
    "wait_ready",
]

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
LOOPBACK = "127.0.0.1"
# Logged by kafka.server.KafkaRaftServer once broker and controller are both
# up. The listener port is bound well before that, so a TCP connect alone
# would report "ready" while requests still fail.
READY_LOG_LINE = "Kafka Server started"
KAFKA_JAR_GLOB = "kafka_2.13-*.jar"
# The command-line tools jar (ConsoleProducer, ...); a libs dir resolved before the pom listed it
# lacks it, and is resolved again.
TOOLS_JAR_GLOB = "kafka-tools-[0-9]*.jar"

_POLL_INTERVAL = 0.1
_TAIL_LINES = 40
_KILL_GRACE = 5.0
SCRAM_MECHANISM = "SCRAM-SHA-512"
# What a SCRAM password may hold: Kafka reads it into a JAAS value in double quotes and StorageTool
# takes it in brackets, where quotes, backslashes, commas or brackets would change it.
_SAFE_PASSWORD = re.compile(r"[A-Za-z0-9._~+/=-]{12,}")
# Debian's Maven 3.8 writes colour resets even in batch mode.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Popen objects of brokers spawned by this process. Holding them keeps the
# child from being reaped behind our back (and avoids "subprocess is still
# running" ResourceWarnings); stop() uses them to reap, so no zombies linger.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
# A forked child inherits the dict but is not the broker's parent: poll() there
# would hit ECHILD, which Popen reports as "exited", and we'd forget a live broker.
os.register_at_fork(after_in_child=_CHILDREN.clear)


class BrokerError(RuntimeError):
    """The broker could not be installed, started or stopped."""


@dataclass(frozen=True)
class BrokerSecurity:
    """A SASL_SSL client listener: the broker's PEM certificate and key, the CA clients and other
    brokers are verified with, and the one SCRAM-SHA-512 user (its password read from a file)."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    username: str
    password_file: Path

    def password(self) -> str:
        """The password, checked to be one Kafka reads unchanged (never shown). The file holds it
        alone, no newline: the broker reads the file whole (DirectoryConfigProvider)."""
        try:
            password = self.password_file.read_text()
        except OSError as error:
            raise BrokerError(
                f"cannot read the Kafka password file {self.password_file}: {error.strerror}"
            ) from None
        if not _SAFE_PASSWORD.fullmatch(password):
            raise BrokerError(
                f"the Kafka password in {self.password_file} must be 12 or more of A-Z a-z 0-9 . _ ~ + / = - "
                "and nothing else (no newline)"
            )
        return password


@dataclass(frozen=True)
class BrokerConfig:
    """One node. Alone by default; a node of a cluster is built by `ClusterConfig.nodes`."""

    home: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    node_id: int = 1
    # (node id, controller port) of every voter of the controller quorum; empty: this node alone.
    voters: tuple[tuple[int, int], ...] = ()
    # What the nodes of a cluster share (jars, cluster id, voters' directory ids); None: `home`.
    cluster_home: Path | None = None
    # None: a PLAINTEXT client listener; set: SASL_SSL only.
    security: BrokerSecurity | None = None

    @property
    def client_protocol(self) -> str:
        return "PLAINTEXT" if self.security is None else "SASL_SSL"

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def quorum(self) -> tuple[tuple[int, int], ...]:
        return self.voters or ((self.node_id, self.controller_port),)

    @property
    def replication_factor(self) -> int:
        """Copies of each partition: three where there are that many nodes, else one per node."""
        return min(len(self.quorum), 3)

    @property
    def min_insync_replicas(self) -> int:
        """Acknowledged writes (acks=all) survive the loss of any one node once there are three copies."""
        return 2 if self.replication_factor >= 3 else 1

    @property
    def shared_home(self) -> Path:
        return self.cluster_home or self.home

    @property
    def libs_dir(self) -> Path:
        return self.shared_home / "libs"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.logs_dir / "stdout.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def cluster_id_file(self) -> Path:
        return self.shared_home / "cluster.id"

    @property
    def controllers_file(self) -> Path:
        return self.shared_home / "controllers"

    @property
    def keystore_file(self) -> Path:
        return self.home / "keystore.pem"

    @property
    def scram_user_file(self) -> Path:
        return self.home / "scram.user"


@dataclass(frozen=True)
class ClusterConfig:
    """``brokers`` nodes (1 is the plain single broker, in ``home`` itself) from one set of jars."""

    home: Path
    brokers: int = 1
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    security: BrokerSecurity | None = None

    def __post_init__(self) -> None:
        if self.brokers < 1:
            raise BrokerError(f"a Kafka cluster needs at least one broker, not {self.brokers}")

    @property
    def nodes(self) -> tuple[BrokerConfig, ...]:
        if self.brokers == 1:
            return (
                BrokerConfig(self.home, self.port, self.controller_port, self.heap, security=self.security),
            )
        ids = range(1, self.brokers + 1)
        voters = tuple((node_id, self.controller_port + 2 * (node_id - 1)) for node_id in ids)
        return tuple(
            BrokerConfig(
                home=self.home / f"node-{node_id}",
                port=self.port + 2 * (node_id - 1),
                controller_port=controller_port,
                heap=self.heap,
                node_id=node_id,
                voters=voters,
                cluster_home=self.home,
                security=self.security,
            )
            for node_id, controller_port in voters
        )

    def node(self, node_id: int) -> BrokerConfig:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise BrokerError(f"no node {node_id} in a cluster of {self.brokers}")

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated: clients find the cluster through any one."""
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def libs_dir(self) -> Path:
        return self.home / "libs"

    @property
    def replication_factor(self) -> int:
        return self.nodes[0].replication_factor

    @property
    def min_insync_replicas(self) -> int:
        return self.nodes[0].min_insync_replicas


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    ready: bool
    node_id: int = 1


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def install(config: BrokerConfig | ClusterConfig, *, pom: Path, quiet: bool = True) -> Path:
    """Resolve the broker jars into ``home/libs`` (no-op if already there)."""
    libs = config.libs_dir
    if any(libs.glob(KAFKA_JAR_GLOB)) and any(libs.glob(TOOLS_JAR_GLOB)):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven ('mvn') not found on PATH; it is needed to fetch the Kafka jars")
    _java_executable()  # mvn needs a JDK too; fail with our message, not Maven's.
    libs.parent.mkdir(parents=True, exist_ok=True)
    # Download into a scratch dir and rename at the end, so an interrupted run
    # never leaves a libs/ that looks complete but lacks jars.
    staging = libs.parent / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        mvn, "-B", *(["-q"] if quiet else []),
        "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    returncode, tail = _run_with_tail(command, echo=not quiet)
    if returncode != 0 or not any(staging.glob(KAFKA_JAR_GLOB)):
        raise BrokerError(
            f"Maven failed to fetch the Kafka jars (exit code {returncode}).\n"
            f"Command: {' '.join(command)}\n--- last lines of output ---\n{tail}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def start(
    config: BrokerConfig,
    *,
    pom: Path,
    timeout: float = 60.0,
    deploy_dir: Path = DEPLOY_DIR,
) -> int:
    """Start the broker (or find the one already running) and return its pid.

    ``timeout`` bounds the wait for the broker to come up, not the one-off
    Maven download, whose duration depends on the network.
    """
    config.home.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with _home_lock(config):
        pid = _running_pid(config)
        if pid is not None:
            _wait_accepting(config, pid, deadline)
            return pid
        return _wait_launched(config, _launch(config, pom, deploy_dir), deadline)


def start_cluster(
    cluster: ClusterConfig,
    *,
    pom: Path,
    timeout: float = 90.0,
    deploy_dir: Path = DEPLOY_DIR,
) -> list[int]:
    """Start every node not yet running (all before waiting for any: a node's controller cannot
    finish starting without a majority of the quorum) and return their pids, in node order."""
    if cluster.brokers == 1:
        return [start(cluster.nodes[0], pom=pom, timeout=timeout, deploy_dir=deploy_dir)]
    cluster.home.mkdir(parents=True, exist_ok=True)
    install(cluster, pom=pom)
    deadline = time.monotonic() + timeout
    launches: dict[int, _Launch | int] = {}
    with _cluster_lock(cluster):
        for node in cluster.nodes:
            node.home.mkdir(parents=True, exist_ok=True)
            with _home_lock(node):
                pid = _running_pid(node)
                launches[node.node_id] = pid if pid is not None else _launch(node, pom, deploy_dir)
    pids = []
    for node in cluster.nodes:
        launch = launches[node.node_id]
        if isinstance(launch, int):
            _wait_accepting(node, launch, deadline)
            pids.append(launch)
        else:
            pids.append(_wait_launched(node, launch, deadline))
    return pids


def status(config: BrokerConfig) -> BrokerStatus:
    pid = _running_pid(config)
    running = pid is not None
    return BrokerStatus(
        running=running,
        pid=pid,
        bootstrap=config.bootstrap,
        ready=running and port_accepts(LOOPBACK, config.port),
        node_id=config.node_id,
    )


@dataclass(frozen=True)
class QuorumStatus:
    """The KRaft controller quorum: who leads it, who votes."""

    leader_id: int
    voters: tuple[int, ...]


def quorum_status(cluster: ClusterConfig, *, timeout: float = 60.0) -> QuorumStatus:
    """The quorum as Kafka's own MetadataQuorumCommand reports it, through any live broker (or,
    when clients must authenticate, any live controller: their listener is loopback PLAINTEXT)."""
    if cluster.security is None:
        through = ["--bootstrap-server", cluster.bootstrap]
    else:
        controllers = ",".join(f"{LOOPBACK}:{node.controller_port}" for node in cluster.nodes)
        through = ["--bootstrap-controller", controllers]
    command = [
        _java_executable(), "-cp", f"{cluster.libs_dir}/*", "org.apache.kafka.tools.MetadataQuorumCommand",
        *through, "describe", "--status",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise BrokerError(f"the quorum of {cluster.bootstrap} did not answer in {timeout:g} s") from error
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    if result.returncode != 0 or "LeaderId" not in fields or "CurrentVoters" not in fields:
        raise BrokerError(
            f"cannot describe the quorum of {cluster.bootstrap} (exit code {result.returncode}):\n"
            + _tail(result.stdout + result.stderr)
        )
    voters = json.loads(fields["CurrentVoters"])
    return QuorumStatus(int(fields["LeaderId"]), tuple(sorted(int(voter["id"]) for voter in voters)))


def kill(config: BrokerConfig) -> bool:
    """SIGKILL the node, as a crash or a pulled plug would; return True if it was running."""
    if not config.home.is_dir():
        return False
    with _home_lock(config):
        pid = _running_pid(config)
        if pid is not None:
            signal_group(pid, signal.SIGKILL)
            if not _wait_for_exit(pid, _KILL_GRACE):
                raise BrokerError(f"Kafka broker pid {pid} survived SIGKILL")
        config.pid_file.unlink(missing_ok=True)
        return pid is not None


def stop_cluster(cluster: ClusterConfig, *, timeout: float = 30.0) -> bool:
    """Stop every node; return True if any was running.

    All nodes get SIGTERM at once: stopped one by one, the last ones would lose their quorum
    and wait out their controlled shutdown before giving up."""
    running = {node.node_id: pid for node in cluster.nodes if (pid := _running_pid(node)) is not None}
    for pid in running.values():
        signal_group(pid, signal.SIGTERM)
    for node in cluster.nodes:
        stop(node, timeout=timeout)
    return bool(running)


def stop(config: BrokerConfig, *, timeout: float = 30.0) -> bool:
    """Stop the broker from this home; return True if one was running."""
    if not config.home.is_dir():
        return False
    with _home_lock(config):
        pid = _running_pid(config)
        if pid is not None:
            _terminate_group(pid, timeout)
        config.pid_file.unlink(missing_ok=True)
        return pid is not None


def wait_ready(bootstrap_host: str, port: int, timeout: float) -> bool:
    """Poll until ``bootstrap_host:port`` accepts TCP connections; False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if port_accepts(bootstrap_host, port):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)


# --------------------------------------------------------------------------
# Start helpers
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Launch:
    """A JVM just spawned, and where its run's lines begin in server.log."""

    process: subprocess.Popen[bytes]
    log_offset: int


def _launch(config: BrokerConfig, pom: Path, deploy_dir: Path) -> _Launch:
    """Render, format once and spawn the node (its home lock held); return without waiting."""
    config.pid_file.unlink(missing_ok=True)
    _ensure_ports_free(config)
    install(config, pom=pom)
    _write_server_properties(config, deploy_dir)
    log4j_config = deploy_dir / "log4j2.properties"
    _format_storage_once(config, log4j_config)
    return _spawn(config, log4j_config)


def _wait_accepting(config: BrokerConfig, pid: int, deadline: float) -> None:
    # Ours and alive; normally already listening, but allow for a broker
    # left mid-startup by a start() that was interrupted elsewhere.
    if not wait_ready(LOOPBACK, config.port, max(deadline - time.monotonic(), 0.0)):
        raise BrokerError(
            f"broker pid {pid} from {config.home} is running but not accepting on {config.bootstrap}"
        )


def _ensure_ports_free(config: BrokerConfig) -> None:
    for port in (config.port, config.controller_port):
        if port_accepts(LOOPBACK, port):
            raise BrokerError(
                f"port {LOOPBACK}:{port} is already in use by a process that is not the broker "
                f"from {config.home} (no live pid in {config.pid_file}). If it is a stray Kafka, "
                "find it with: pgrep -af kafka.Kafka"
            )
        if not port_bindable(LOOPBACK, port):
            raise BrokerError(
                f"port {LOOPBACK}:{port} is held without a listener, likely the local end of another "
                "connection (ports from 32768 are the kernel's ephemeral range): choose a port below it"
            )


def render_server_properties(config: BrokerConfig, deploy_dir: Path = DEPLOY_DIR) -> str:
    """The node's server.properties, as start() writes it. Secured, it names the password file,
    whose content is checked now: a password Kafka cannot use would only fail clients later."""
    template = string.Template((deploy_dir / "server.properties.template").read_text())
    rendered = template.substitute(
        client_listener=config.client_protocol,
        node_id=config.node_id,
        port=config.port,
        controller_port=config.controller_port,
        quorum_bootstrap_servers=",".join(f"{LOOPBACK}:{port}" for _, port in config.quorum),
        data_dir=config.data_dir,
        replication_factor=config.replication_factor,
        min_insync_replicas=config.min_insync_replicas,
    )
    if config.security is None:
        return rendered
    security = string.Template((deploy_dir / "sasl_ssl.properties.template").read_text())
    config.security.password()
    return (
        rendered
        + "\n"
        + security.substitute(
            username=config.security.username,
            password_dir=config.security.password_file.parent,
            password_name=config.security.password_file.name,
            keystore_file=config.keystore_file,
            ca_file=config.security.ca_file,
        )
    )


def _write_server_properties(config: BrokerConfig, deploy_dir: Path) -> None:
    private = config.security is not None
    if config.security is not None:
        # Kafka's PEM keystore reads the key and its certificate chain from one file.
        key_and_chain = config.security.key_file.read_text() + config.security.cert_file.read_text()
        write_atomically(config.keystore_file, key_and_chain, private=True)
    write_atomically(config.properties_file, render_server_properties(config, deploy_dir), private=private)


def _format_storage_once(config: BrokerConfig, log4j_config: Path) -> None:
    if (config.data_dir / "meta.properties").exists():
        _check_scram_user(config)
        return
    config.data_dir.mkdir(parents=True, exist_ok=True)
    # Both flags bootstrap a dynamic (KIP-853) quorum, which requires
    # controller.quorum.bootstrap.servers in server.properties: --standalone makes
    # this node the sole voter; --initial-controllers names every voter with its
    # directory id, the same list on every node, each finding its own entry by node.id.
    quorum = ["--initial-controllers", _initial_controllers(config)] if config.voters else ["--standalone"]
    # In KRaft a SCRAM user is a metadata record, which the store's first records can carry. (The
    # password is on StorageTool's command line for that one run, as with kafka-storage.sh.)
    scram = (
        [
            "--add-scram",
            f"{SCRAM_MECHANISM}=[name={config.security.username},password={config.security.password()}]",
        ]
        if config.security is not None
        else []
    )
    command = [
        *_java_command(config, log4j_config, heap=None),
        "kafka.tools.StorageTool", "format", *quorum, *scram,
        "-t", _cluster_id(config), "-c", str(config.properties_file),
    ]  # fmt: skip
    returncode, tail = _run_with_tail(command, echo=False)
    if returncode != 0:
        raise BrokerError(f"formatting {config.data_dir} failed (exit code {returncode}):\n{tail}")
    if config.security is not None:
        write_atomically(config.scram_user_file, config.security.username + "\n")


def _check_scram_user(config: BrokerConfig) -> None:
    """A store formatted without the SCRAM user would start and then refuse every client."""
    if config.security is None:
        return
    formatted_with = config.scram_user_file.read_text().strip() if config.scram_user_file.exists() else None
    if formatted_with != config.security.username:
        raise BrokerError(
            f"{config.data_dir} was formatted without the SCRAM user {config.security.username!r}, "
            "which only formatting creates: use a new home, or remove that directory (losing its topics)"
        )


def _cluster_id(config: BrokerConfig) -> str:
    path = config.cluster_id_file
    if path.exists():
        return path.read_text().strip()
    cluster_id = _new_kafka_uuid()
    write_atomically(path, cluster_id + "\n")
    return cluster_id


def _initial_controllers(config: BrokerConfig) -> str:
    """``id@host:port:directory-id`` of every voter. The directory ids are drawn once per cluster
    and kept: a node formatted later must name the same voters as those formatted before."""
    path = config.controllers_file
    if path.exists():
        directories = dict(line.split() for line in path.read_text().splitlines() if line.strip())
    else:
        directories = {str(node_id): _new_kafka_uuid() for node_id, _ in config.quorum}
        write_atomically(path, "".join(f"{node} {directory}\n" for node, directory in directories.items()))
    return ",".join(
        f"{node_id}@{LOOPBACK}:{port}:{directories[str(node_id)]}" for node_id, port in config.quorum
    )


def _new_kafka_uuid() -> str:
    # Same encoding as Kafka's Uuid.randomUuid() (what `StorageTool random-uuid`
    # prints): URL-safe base64 of 16 random bytes, no padding. A leading "-"
    # would be parsed as a CLI flag, so Kafka rejects those too.
    while True:
        encoded = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not encoded.startswith("-"):
            return encoded


def _spawn(config: BrokerConfig, log4j_config: Path) -> _Launch:
    config.logs_dir.mkdir(parents=True, exist_ok=True)
    # server.log is appended to across runs; only lines after this offset
    # belong to the JVM we are about to start.
    log_offset = _file_size(config.server_log)
    java = _java_command(config, log4j_config, heap=config.heap)
    command = [*java, "kafka.Kafka", str(config.properties_file)]
    with config.stdout_log.open("wb") as stdout:
        # New session: the broker outlives us and gets its own process group,
        # so stop() can signal the JVM and anything it forks in one go.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            cwd=config.home,
            start_new_session=True,
        )
    _CHILDREN[process.pid] = process
    write_atomically(config.pid_file, f"{process.pid}\n")
    return _Launch(process, log_offset)


def _wait_launched(config: BrokerConfig, launch: _Launch, deadline: float) -> int:
    try:
        _wait_until_started(config, launch.process, launch.log_offset, deadline)
    except BrokerError:
        _terminate_group(launch.process.pid, _KILL_GRACE)
        config.pid_file.unlink(missing_ok=True)
        raise
    return launch.process.pid


def _wait_until_started(
    config: BrokerConfig, process: subprocess.Popen[bytes], log_offset: int, deadline: float
) -> None:
    while True:
        returncode = process.poll()
        if returncode is not None:
            raise BrokerError(
                f"Kafka broker exited with code {returncode} during startup.\n"
                + _startup_logs(config, log_offset)
            )
        started = _log_contains(config.server_log, READY_LOG_LINE, log_offset)
        if started and port_accepts(LOOPBACK, config.port):
            return
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Kafka broker (pid {process.pid}) not ready on {config.bootstrap} in time; killed it.\n"
                + _startup_logs(config, log_offset)
            )
        time.sleep(_POLL_INTERVAL)


def _java_command(config: BrokerConfig, log4j_config: Path, *, heap: str | None) -> list[str]:
    heap_flags = [f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC"] if heap else []
    return [
        _java_executable(),
        *heap_flags,
        f"-Dlog4j2.configurationFile={log4j_config}",
        f"-Dkafka.logs.dir={config.logs_dir}",
        "-cp",
        f"{config.libs_dir}/*",  # expanded by java itself, not a shell
    ]


def _java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("'java' not found on PATH (and JAVA_HOME unset); Kafka 4.x needs Java 17+")
    return java


# --------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------


def _running_pid(config: BrokerConfig) -> int | None:
    """Pid from the pid file if that process is alive and is *this* home's broker."""
    try:
        pid = int(config.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if not _process_alive(pid):
        return None
    # Guards against pid reuse after a crash or reboot.
    seen = command_line(pid)
    if seen is not None and str(config.properties_file) not in seen:
        return None
    return pid


def _process_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]  # poll() reaped it
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else; the command line check decides
    return True


def _terminate_group(pid: int, timeout: float) -> None:
    # Kafka shuts down cleanly on SIGTERM (flushes logs, closes the metadata
    # log), which makes the next start fast; SIGKILL only as a last resort.
    signal_group(pid, signal.SIGTERM)
    if _wait_for_exit(pid, timeout):
        return
    signal_group(pid, signal.SIGKILL)
    if not _wait_for_exit(pid, _KILL_GRACE):
        raise BrokerError(f"Kafka broker pid {pid} survived SIGKILL")


def _wait_for_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _process_alive(pid) and command_line(pid) != "":
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    _CHILDREN.pop(pid, None)
    return True


@contextlib.contextmanager
def _home_lock(config: BrokerConfig) -> Iterator[None]:
    # Serialises start/stop across processes (e.g. parallel test workers) so two
    # callers never both decide "not running" and spawn two brokers.
    with file_lock(config.home / ".lock"):
        yield


@contextlib.contextmanager
def _cluster_lock(cluster: ClusterConfig) -> Iterator[None]:
    # Two cluster starts at once must not both draw the voters' directory ids. A file of its
    # own: a second flock on node-level .lock from this process would wait on itself.
    with file_lock(cluster.home / ".cluster.lock"):
        yield


def _run_with_tail(command: list[str], *, echo: bool) -> tuple[int, str]:
    """Run ``command``, optionally echoing its output; return (exit code, output tail)."""
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    except OSError as error:
        raise BrokerError(f"cannot run {command[0]}: {error}") from error
    with process:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(_ANSI_ESCAPE.sub("", line.rstrip("\n")))
            if echo:
                sys.stderr.write(line)
    return process.returncode, "\n".join(tail)


# --------------------------------------------------------------------------
# Small I/O helpers
# --------------------------------------------------------------------------


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            if _file_size(path) >= offset:  # else rotated: read the new file whole
                handle.seek(offset)
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _log_contains(path: Path, needle: str, offset: int) -> bool:
    return needle in _read_from(path, offset)


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


_PROBLEM_LINE = re.compile(r"\b(ERROR|FATAL)\b")
_PROBLEM_LINES = 10


def _problems(text: str) -> str:
    """The first ERROR and FATAL lines of a run, each with the exception line logged under it (the
    message that says what failed, e.g. which address was in use), without stack frames: why a
    broker stopped is logged once, early, and its shutdown then fills the tail."""
    found: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if _PROBLEM_LINE.search(line):
            found.append(line)
            following = lines[number + 1] if number + 1 < len(lines) else ""
            if following and not following.startswith(("[", "\t", " ")):
                found.append("  " + following)
        if len(found) >= _PROBLEM_LINES:
            break
    return "\n".join(found)


def _startup_logs(config: BrokerConfig, log_offset: int) -> str:
    this_run = _read_from(config.server_log, log_offset)
    problems = _problems(this_run)
    return (
        (f"--- first errors in {config.server_log} (this run) ---\n{problems}\n" if problems else "")
        + f"--- {config.stdout_log} ---\n{_tail(_read_from(config.stdout_log, 0))}\n"
        f"--- {config.server_log} (this run) ---\n{_tail(this_run)}"
    )
