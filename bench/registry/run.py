"""Registry throughput and latency: the real registry process over gRPC on loopback, against plain
file and SQLite baselines measured in the same run.

    flock /tmp/cascade-heavy.lock .venv/bin/python bench/registry/run.py           # about 70 s
    flock /tmp/cascade-heavy.lock .venv/bin/python bench/registry/run.py --kafka   # with a broker
    .venv/bin/python bench/registry/run.py --artifact-mib 8 --calls 200 --moves 80 --grown-versions 30

The registry runs as `cascade up` runs it (`python -m cascade.services.registry`, SQLite store, every call
traced to an OTLP-JSON file), its data in a temp dir on the baselines' filesystem. No Kafka broker
by default: the registry serves gRPC anyway (health NOT_SERVING) and keeps its events in the
outbox, every write trying to flush it and failing at once. `--kafka` starts a private broker with
cascade.stack.kafka_broker (jars fetched by Maven into bench/.work/registry/kafka once) so that writes
publish their events as in production. Steps, in order (MB = 10^6 bytes):

1. Upload (CreateModelVersion, 1 MiB chunks) of a ~64 MiB valid ONNX model (a MatMul with a random
   float32 initializer: the registry reads every upload's signature) against writing the same bytes
   to a temp file, fsync, atomic rename. Medians of runs alternating with the baseline, as in 2.
2. Download (DownloadArtifact, the client checking the sha256) against reading the stored file,
   and reading + sha256.
3. The slowest GetModelVersion of a second client polling during one upload, then one download.
4. GetModelVersion and ListModels latency, sequential, against grpc.health Check on the same server.
5. SetAlias `champion` back and forth, 1 client then 4 concurrent, against raw sqlite3 with the same
   durability (WAL, synchronous=FULL, BEGIN IMMEDIATE, one UPDATE + one INSERT per transaction).
6. The same reads and moves once a model has 300 versions carrying trainer-shaped tags.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb  # noqa: E402
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc  # noqa: E402

MiB = 1024 * 1024
CHUNK = MiB  # what the trainer and the CLI send, and what the registry streams back
BIG_MODEL = "bench_big"
ALIAS_MODEL = "bench_alias"
GROWN_MODEL = "bench_grown"
CONCURRENT_CLIENTS = 4
GROWN_CALLS = 200  # per figure of the growth step: its calls are slow by design
KAFKA_HOME = REPO / "bench" / ".work" / "registry" / "kafka"
Stub = registry_pb2_grpc.RegistryServiceStub


# -- artifacts and tags ----------------------------------------------------------------------------
def matmul_model(inputs: int, outputs: int, seed: int) -> bytes:
    """A valid ONNX model y = x @ W, W a random float32 initializer of inputs x outputs: random
    bytes do not compress, so the size on the wire and on disk is the initializer's."""
    weight = np.random.default_rng(seed).standard_normal((inputs, outputs), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["output"])],
        "bench",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, inputs])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, outputs])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model: bytes = helper.make_model(graph).SerializeToString()
    return model


def big_artifact(mib: int) -> bytes:
    inputs = 4096
    return matmul_model(inputs, mib * MiB // (inputs * 4), seed=0)


def trainer_shaped_tags(rng: np.random.Generator, features: int = 30, trials: int = 12) -> dict[str, str]:
    """Tags with the keys and sizes services/trainer/core.py `_tags` gives a version (12 trials,
    30 features, 16 parity rows), filled with random numbers."""
    return {
        "features": json.dumps([f"f{index}" for index in range(features)]),
        "target": "target",
        "task": "classification",
        "spec": json.dumps({"seed": 0, "trials": trials, "primary_metric": "accuracy", "cv_folds": 3}),
        "trials": json.dumps(
            [
                {
                    "number": number,
                    "estimator": "random_forest",
                    "params": {"n_estimators": "80", "max_depth": "7"},
                    "score": float(rng.random()),
                    "folds_scored": 3,
                    "state": "COMPLETE",
                    "seconds": float(rng.random()),
                }
                for number in range(trials)
            ]
        ),
        "feature_importance": json.dumps({f"f{i}": round(float(rng.random()), 6) for i in range(features)}),
        "durations": json.dumps({"search": 1.2, "refit": 0.1, "export_and_parity": 0.2, "importance": 1.5}),
        "library_versions": json.dumps({"scikit-learn": "1.7.2", "skl2onnx": "1.19.1", "numpy": "2.3.5"}),
        "parity_reference": json.dumps(
            {
                "rows": rng.random((16, features)).tolist(),
                "outputs": rng.random((16, 2)).tolist(),
                "labels": [[1.0]] * 16,
            }
        ),
    }


# -- the registry process --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Registry:
    process: subprocess.Popen[bytes]
    address: str
    data_dir: Path
    log_path: Path

    def artifact_path(self, sha256: str) -> Path:
        return self.data_dir / "artifacts" / sha256[:2] / sha256  # LocalArtifactStore's layout

    def pending_events(self) -> int:
        """Events waiting in the outbox, read beside the registry (WAL lets a reader in)."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "registry.sqlite3", timeout=30)) as db:
            (count,) = db.execute("SELECT count(*) FROM outbox WHERE NOT published").fetchone()
            return int(count)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_registry(work: Path, max_artifact_bytes: int, kafka_bootstrap: str) -> Iterator[Registry]:
    data_dir = work / "registry-data"
    port = free_port()
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "CASCADE_"))},
        "PYTHONPATH": str(REPO),
        "CASCADE_REGISTRY_DATA_DIR": str(data_dir),
        "CASCADE_REGISTRY_GRPC_PORT": str(port),
        "CASCADE_REGISTRY_MAX_ARTIFACT_BYTES": str(max_artifact_bytes),
        "CASCADE_REGISTRY_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CASCADE_REGISTRY_TOPIC_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
        "CASCADE_REGISTRY_LOG_FORMAT": "text",
        # Tracing as `cascade up` sets it up: spans exported as OTLP-JSON lines to a file.
        "OTEL_TRACES_EXPORTER": "otlp_json_file",
        "CASCADE_TRACES_FILE": str(work / "registry-traces.jsonl"),
    }
    log_path = work / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cascade.services.registry"],
            env=environment,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    registry = Registry(process, f"127.0.0.1:{port}", data_dir, log_path)
    try:
        wait_until_answering(registry, timeout=60)
        yield registry
        if process.poll() is not None:
            raise RuntimeError(f"the registry died during the run:\n{registry.log_tail()}")
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_answering(registry: Registry, timeout: float) -> None:
    """Until a registry call succeeds. Not health: without Kafka it says NOT_SERVING, yet serves."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(registry.address) as channel:
        while True:
            if registry.process.poll() is not None:
                raise RuntimeError(f"the registry exited:\n{registry.log_tail()}")
            try:
                Stub(channel).ListModels(pb.ListModelsRequest(), timeout=2)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the registry never answered:\n{registry.log_tail()}") from None
                time.sleep(0.1)


@contextlib.contextmanager
def private_kafka() -> Iterator[str]:
    """A single-node broker of our own on free ports (never a colleague's); its bootstrap."""
    from cascade.stack import KAFKA_POM, kafka_broker

    config = kafka_broker.BrokerConfig(home=KAFKA_HOME, port=free_port(), controller_port=free_port())
    kafka_broker.start(config, pom=KAFKA_POM, timeout=120)
    try:
        yield config.bootstrap
    finally:
        kafka_broker.stop(config)


# -- transfers -------------------------------------------------------------------------------------
def upload_requests(
    model: str, artifact: bytes, tags: dict[str, str] | None = None
) -> list[pb.CreateModelVersionRequest]:
    """Built before the clock starts, so the client's own copying is not timed."""
    header = pb.VersionHeader(model=model, dataset="bench", dataset_version="v1", tags=tags or {})
    return [
        pb.CreateModelVersionRequest(header=header),
        *(
            pb.CreateModelVersionRequest(chunk=artifact[start : start + CHUNK])
            for start in range(0, len(artifact), CHUNK)
        ),
    ]


def timed_upload(stub: Stub, requests: list[pb.CreateModelVersionRequest]) -> tuple[float, pb.ModelVersion]:
    start = time.perf_counter()
    version = stub.CreateModelVersion(iter(requests), timeout=300)
    return time.perf_counter() - start, version


def baseline_write(artifact: bytes, directory: Path) -> float:
    """The registry's disk work alone: write in 1 MiB pieces, fsync, rename atomically."""
    start = time.perf_counter()
    fd, spooled = tempfile.mkstemp(dir=directory, prefix=".upload-")
    with os.fdopen(fd, "wb") as out:
        for offset in range(0, len(artifact), CHUNK):
            out.write(artifact[offset : offset + CHUNK])
        out.flush()
        os.fsync(out.fileno())
    os.replace(spooled, directory / "artifact.onnx")
    return time.perf_counter() - start


def timed_download(stub: Stub, model: str, version: int) -> float:
    """The whole download as a careful client does it: every chunk hashed, the sha256 checked."""
    start = time.perf_counter()
    digest = hashlib.sha256()
    received = 0
    expected_sha256, expected_size = "", -1
    for chunk in stub.DownloadArtifact(pb.DownloadArtifactRequest(model=model, version=version), timeout=300):
        digest.update(chunk.data)
        received += len(chunk.data)
        expected_sha256, expected_size = chunk.sha256, chunk.total_size
    if digest.hexdigest() != expected_sha256 or received != expected_size:
        raise RuntimeError("the downloaded artifact does not match its sha256 or size")
    return time.perf_counter() - start


def baseline_read(path: Path, with_sha256: bool) -> float:
    start = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(CHUNK):
            if with_sha256:
                digest.update(block)
    return time.perf_counter() - start


def in_process_costs(artifact: bytes, path: Path) -> tuple[float, float]:
    """(sha256 of the bytes, onnx.load of the file) in seconds: CPU the registry adds to an upload."""
    start = time.perf_counter()
    hashlib.sha256(artifact).hexdigest()
    hashed = time.perf_counter()
    onnx.load(str(path), load_external_data=False)
    return hashed - start, time.perf_counter() - hashed


@dataclass
class Transfers:
    size: int
    upload: list[float]
    write: list[float]
    download: list[float]
    read: list[float]
    read_sha256: list[float]
    sha256_in_process: float
    onnx_load_in_process: float


def measure_transfers(
    stub: Stub, artifact: bytes, repeats: int, baseline_dir: Path, registry: Registry
) -> Transfers:
    upload = upload_requests(BIG_MODEL, artifact)
    # The first upload and download are warm-ups (connection, first use of each code path).
    _, first = timed_upload(stub, upload)
    upload_seconds, write_seconds = [], []
    for _ in range(repeats):
        write_seconds.append(baseline_write(artifact, baseline_dir))
        upload_seconds.append(timed_upload(stub, upload)[0])
    stored = registry.artifact_path(first.artifact_sha256)
    timed_download(stub, BIG_MODEL, first.version)
    download_seconds, read_seconds, read_sha256_seconds = [], [], []
    for _ in range(repeats):
        read_seconds.append(baseline_read(stored, with_sha256=False))
        read_sha256_seconds.append(baseline_read(stored, with_sha256=True))
        download_seconds.append(timed_download(stub, BIG_MODEL, first.version))
    return Transfers(
        len(artifact),
        upload_seconds,
        write_seconds,
        download_seconds,
        read_seconds,
        read_sha256_seconds,
        *in_process_costs(artifact, stored),
    )


# -- calls -----------------------------------------------------------------------------------------
class Poller:
    """A second client calling GetModelVersion without pause, each call's latency recorded."""

    def __init__(self, address: str, request: pb.GetModelVersionRequest) -> None:
        self.channel = grpc.insecure_channel(address)
        self.request = request
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        stub = Stub(self.channel)
        while not self._stop.is_set():
            start = time.perf_counter()
            stub.GetModelVersion(self.request, timeout=60)
            self.latencies.append(time.perf_counter() - start)

    def __enter__(self) -> Poller:
        self._thread.start()
        time.sleep(0.2)  # the poller's connection is up and warm before the transfer begins
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.channel.close()


def latencies(call: Callable[[], object], count: int, warm_up: int = 50) -> list[float]:
    for _ in range(warm_up):
        call()
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def move_champion(address: str, model: str, moves: int, first: int = 0) -> list[float]:
    """`moves` SetAlias calls from one client of its own, champion alternating between v1 and v2."""
    with grpc.insecure_channel(address) as channel:
        stub = Stub(channel)
        seconds = []
        for index in range(first, first + moves):
            request = pb.SetAliasRequest(model=model, alias="champion", version=1 + index % 2, actor="bench")
            start = time.perf_counter()
            stub.SetAlias(request, timeout=60)
            seconds.append(time.perf_counter() - start)
        return seconds


def concurrently(clients: int, work: Callable[[int], object]) -> float:
    """Wall time for `clients` threads to each run work(index)."""
    threads = [threading.Thread(target=work, args=(index,)) for index in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def create_sqlite_baseline(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE aliases (model TEXT, alias TEXT, version INTEGER, PRIMARY KEY (model, alias))"
        )
        db.execute(
            "CREATE TABLE alias_history (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT, alias TEXT,"
            " from_version INTEGER, to_version INTEGER, actor TEXT, reason TEXT, at TEXT)"
        )
        db.execute("INSERT INTO aliases VALUES ('m', 'champion', 1)")


def sqlite_moves(path: Path, moves: int) -> None:
    """The registry's durability with none of its work: one UPDATE + one INSERT per transaction."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=30)) as db:
        db.execute("PRAGMA synchronous=FULL")
        for index in range(moves):
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "UPDATE aliases SET version = ? WHERE model = 'm' AND alias = 'champion'", (index % 2,)
            )
            db.execute(
                "INSERT INTO alias_history (model, alias, from_version, to_version, actor, reason, at)"
                " VALUES ('m', 'champion', ?, ?, 'bench', '', datetime('now'))",
                (1 - index % 2, index % 2),
            )
            db.execute("COMMIT")


@dataclass
class AliasMoves:
    sequential: int
    concurrent: int
    registry_sequential: float
    sqlite_sequential: float
    registry_concurrent: float
    sqlite_concurrent: float
    sequential_latencies: list[float]
    pending_events: tuple[int, int, int]  # before, after the sequential moves, at the end


def measure_alias_moves(registry: Registry, moves: int, warm_up: int, sqlite_path: Path) -> AliasMoves:
    create_sqlite_baseline(sqlite_path)
    per_client = moves // CONCURRENT_CLIENTS
    move_champion(registry.address, ALIAS_MODEL, warm_up)
    pending_before = registry.pending_events()
    start = time.perf_counter()
    sqlite_moves(sqlite_path, moves)
    sqlite_sequential = time.perf_counter() - start
    start = time.perf_counter()
    sequential_latencies = move_champion(registry.address, ALIAS_MODEL, moves)
    registry_sequential = time.perf_counter() - start
    pending_middle = registry.pending_events()
    sqlite_concurrent = concurrently(CONCURRENT_CLIENTS, lambda _: sqlite_moves(sqlite_path, per_client))
    registry_concurrent = concurrently(
        CONCURRENT_CLIENTS, lambda index: move_champion(registry.address, ALIAS_MODEL, per_client, index)
    )
    return AliasMoves(
        moves,
        per_client * CONCURRENT_CLIENTS,
        registry_sequential,
        sqlite_sequential,
        registry_concurrent,
        sqlite_concurrent,
        sequential_latencies,
        (pending_before, pending_middle, registry.pending_events()),
    )


def grow_model(stub: Stub, versions: int) -> int:
    """GROWN_MODEL with `versions` small versions, each carrying trainer-shaped tags; bytes of tags."""
    rng = np.random.default_rng(0)
    artifact = matmul_model(4, 2, seed=3)
    tag_bytes = 0
    for _ in range(versions):
        tags = trainer_shaped_tags(rng)
        tag_bytes += sum(len(key) + len(value) for key, value in tags.items())
        stub.CreateModelVersion(iter(upload_requests(GROWN_MODEL, artifact, tags)), timeout=60)
    return tag_bytes


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(seconds, [50, 99])
    return float(p50) * 1000, float(p99) * 1000


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class Results:
    transfers: Transfers
    quiet_get: list[float]
    during_upload: list[float]
    during_download: list[float]
    latency: dict[str, list[float]]
    moves: AliasMoves
    grown_tag_bytes: int
    grown: dict[str, tuple[list[float], list[float]]]  # (on the grown model, on the 2-version one)


def run(args: argparse.Namespace, work: Path, bootstrap: str) -> Results:
    artifact = big_artifact(args.artifact_mib)
    baseline_dir = work / "baseline"
    baseline_dir.mkdir()
    print(f"artifact: {len(artifact):,} bytes of ONNX ({len(artifact) / MiB:.1f} MiB); work dir {work}")
    with (
        running_registry(work, 2 * len(artifact), bootstrap) as registry,
        grpc.insecure_channel(registry.address) as channel,
    ):
        print(f"registry at {registry.address}, Kafka {'at ' + bootstrap if args.kafka else 'absent'}")
        stub = Stub(channel)
        transfers = measure_transfers(stub, artifact, args.repeats, baseline_dir, registry)

        get_big = pb.GetModelVersionRequest(model=BIG_MODEL, version=1)
        quiet_get = latencies(lambda: stub.GetModelVersion(get_big, timeout=10), 200)
        with Poller(registry.address, get_big) as during_upload:
            timed_upload(stub, upload_requests(BIG_MODEL, artifact))
        with Poller(registry.address, get_big) as during_download:
            timed_download(stub, BIG_MODEL, 1)

        for seed in (1, 2):  # the alias model's two versions; ListModels now lists two models
            timed_upload(stub, upload_requests(ALIAS_MODEL, matmul_model(4, 2, seed)))
        health = health_pb2_grpc.HealthStub(channel)
        check = health_pb2.HealthCheckRequest(service="")
        get_small = pb.GetModelVersionRequest(model=ALIAS_MODEL, version=1)
        list_models = pb.ListModelsRequest()
        latency = {
            "grpc.health Check (baseline)": latencies(lambda: health.Check(check, timeout=10), args.calls),
            "GetModelVersion": latencies(lambda: stub.GetModelVersion(get_small, timeout=10), args.calls),
            "ListModels": latencies(lambda: stub.ListModels(list_models, timeout=10), args.calls),
        }

        # A broker's JVM needs many more calls than the registry to warm up.
        warm_up_moves = 200 if args.kafka else 20
        moves = measure_alias_moves(registry, args.moves, warm_up_moves, baseline_dir / "aliases.sqlite3")

        calls = GROWN_CALLS
        tag_bytes = grow_model(stub, args.grown_versions)
        get_grown = pb.GetModelVersionRequest(model=GROWN_MODEL, version=1)
        grown = {
            "GetModelVersion": (
                latencies(lambda: stub.GetModelVersion(get_grown, timeout=30), calls, 10),
                latencies(lambda: stub.GetModelVersion(get_small, timeout=30), calls, 10),
            ),
            "ListModels": (
                latencies(lambda: stub.ListModels(list_models, timeout=30), calls, 10),
                latency["ListModels"],
            ),
            "SetAlias": (
                move_champion(registry.address, GROWN_MODEL, calls),
                move_champion(registry.address, ALIAS_MODEL, calls),
            ),
        }
    return Results(
        transfers,
        quiet_get,
        during_upload.latencies,
        during_download.latencies,
        latency,
        moves,
        tag_bytes,
        grown,
    )


def mb_per_s(size: int, seconds: float) -> float:
    return size / 1e6 / seconds


def report_transfers(transfers: Transfers, repeats: int) -> None:
    size = transfers.size
    print(f"\ntransfers of {size / 1e6:.1f} MB, median of {repeats} (every run in MB/s):")
    print(f"{'':<46} {'MB/s':>7} {'ratio':>7}   runs")

    def row(name: str, runs: list[float], baseline: list[float] | None = None) -> None:
        median = statistics.median(runs)
        ratio = f"{statistics.median(baseline) / median:.2f}x" if baseline else ""
        every = ", ".join(f"{mb_per_s(size, seconds):.0f}" for seconds in runs)
        print(f"{name:<46} {mb_per_s(size, median):>7.0f} {ratio:>7}   {every}")

    row("upload: CreateModelVersion", transfers.upload, transfers.write)
    row("  baseline: write + fsync + rename", transfers.write)
    row("download: DownloadArtifact + client sha256", transfers.download, transfers.read)
    row("  baseline: read the stored file", transfers.read)
    row("  the same download, against read + sha256", transfers.download, transfers.read_sha256)
    row("  baseline: read + sha256", transfers.read_sha256)
    print(
        f"in-process, on the same bytes: sha256 {transfers.sha256_in_process * 1000:.0f} ms, onnx.load "
        f"{transfers.onnx_load_in_process * 1000:.0f} ms; an upload takes "
        f"{statistics.median(transfers.upload) * 1000:.0f} ms, the baseline "
        f"{statistics.median(transfers.write) * 1000:.0f} ms"
    )


def report_calls(results: Results, calls: int) -> None:
    quiet_p50 = statistics.median(results.quiet_get) * 1000
    print(f"\nslowest GetModelVersion of a second client (quiet: p50 {quiet_p50:.2f} ms):")
    for name, seconds in (("an upload", results.during_upload), ("a download", results.during_download)):
        p50 = statistics.median(seconds) * 1000
        print(f"  during {name}: {len(seconds)} calls, p50 {p50:.2f} ms, max {max(seconds) * 1000:.1f} ms")

    print(f"\nlatency, {calls:,} sequential calls from one client (ms):")
    print(f"{'':<30} {'p50':>6} {'p99':>6} {'calls/s':>8} {'p50 ratio':>10}")
    floor_ms = statistics.median(results.latency["grpc.health Check (baseline)"]) * 1000
    for name, seconds in results.latency.items():
        p50, p99 = percentiles_ms(seconds)
        rate = len(seconds) / sum(seconds)
        print(f"{name:<30} {p50:>6.2f} {p99:>6.2f} {rate:>8.0f} {p50 / floor_ms:>9.1f}x")


def report_moves(moves: AliasMoves, kafka: bool) -> None:
    print(f"\nalias moves (SetAlias champion, v1 <-> v2), Kafka {'up' if kafka else 'absent'}:")
    print(f"{'':<24} {'moves':>6} {'moves/s':>8} {'sqlite3 /s':>11} {'ratio':>7}")
    rows = (
        ("sequential, 1 client", moves.sequential, moves.registry_sequential, moves.sqlite_sequential),
        (
            f"{CONCURRENT_CLIENTS} concurrent clients",
            moves.concurrent,
            moves.registry_concurrent,
            moves.sqlite_concurrent,
        ),
    )
    for name, count, registry_seconds, sqlite_seconds in rows:
        ours, theirs = count / registry_seconds, count / sqlite_seconds
        print(f"{name:<24} {count:>6} {ours:>8.0f} {theirs:>11.0f} {ours / theirs:>6.2f}x")
    tenth = max(1, len(moves.sequential_latencies) // 10)
    p50, p99 = percentiles_ms(moves.sequential_latencies)
    first_mean = statistics.mean(moves.sequential_latencies[:tenth]) * 1000
    last_mean = statistics.mean(moves.sequential_latencies[-tenth:]) * 1000
    before, middle, end = moves.pending_events
    print(f"sequential: p50 {p50:.2f} ms, p99 {p99:.2f} ms; mean of the first {tenth} moves {first_mean:.2f}")
    print(
        f"  ms, of the last {tenth} {last_mean:.2f} ms; events pending in the outbox: {before} before,"
        f" {middle} after the sequential moves, {end} at the end"
    )


def report_growth(results: Results, versions: int) -> None:
    per_version_kb = results.grown_tag_bytes / versions / 1000
    print(
        f"\na model of {versions} versions with trainer-shaped tags ({per_version_kb:.1f} kB a version)"
        f" against the 2-version model, p50 / p99 ms over {GROWN_CALLS} calls"
        " (ListModels: 3 models against the 2 of the latency table):"
    )
    for name, (on_grown, on_small) in results.grown.items():
        grown_p50, grown_p99 = percentiles_ms(on_grown)
        small_p50, small_p99 = percentiles_ms(on_small)
        ratio = grown_p50 / small_p50
        grown_text, small_text = f"{grown_p50:.2f} / {grown_p99:.2f}", f"{small_p50:.2f} / {small_p99:.2f}"
        print(f"  {name:<16} {grown_text:>15} against {small_text:>13} {ratio:>6.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact-mib", type=int, default=64, help="size of the uploaded model")
    parser.add_argument("--repeats", type=int, default=3, help="uploads and downloads measured (medians)")
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per latency figure")
    parser.add_argument("--moves", type=int, default=400, help="alias moves, sequential and concurrent each")
    parser.add_argument("--grown-versions", type=int, default=300, help="versions of the grown model")
    parser.add_argument("--kafka", action="store_true", help="start a private Kafka broker for the registry")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cascade-bench-registry-"))
    # Without a broker, the registry is pointed at a port where nothing listens.
    kafka = private_kafka() if args.kafka else contextlib.nullcontext(f"127.0.0.1:{free_port()}")
    try:
        with kafka as bootstrap:
            results = run(args, work, bootstrap)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report_transfers(results.transfers, args.repeats)
    report_calls(results, args.calls)
    report_moves(results.moves, args.kafka)
    report_growth(results, args.grown_versions)


if __name__ == "__main__":
    main()
