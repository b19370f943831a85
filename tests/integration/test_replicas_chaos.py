"""Two replicas of every service at once, on shared state only: one 3-broker KRaft cluster, one
PostgreSQL server (ingest's, the registry's and the monitor's metadata), one S3 server (moto's:
segments and artifacts); each replica has a data dir of its own. Batches of three datasets cascade
concurrently while one replica of each service in turn is SIGKILLed and restarted, and a steady
inference load runs on both serving replicas. The ledger (printed, also when the test fails) must show
every acknowledged batch as exactly one dataset version and one model version, each alias move
exactly once, and no failed inference request. Its own stack (home, ports 269xx, topic prefix).

"One model version" per batch: a version trains once, and the trainer coalesces a batch whose
version was superseded before its run began into the run of the newer version, which holds its rows
(services/trainer/core.py, on_data_arrived). On a loaded machine two batches of one dataset often
arrive within one run, so the batch's model version is the first one trained on its dataset
version or a descendant of it; the dataset's newest version must have trained."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton
from sklearn.datasets import load_breast_cancer

from cascade.stack import SERVICES, Stack, StackConfig
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.stubs.cascade.registry.v1 import registry_pb2, registry_pb2_grpc
from tests.databases import new_postgres_database
from tests.integration.support import wait_for
from tests.s3_server import SECRET_ACCESS_KEY, S3Server, s3_server_fixture  # noqa: F401  (a fixture)

# Starting fifteen processes (three brokers, twelve services) on a small machine takes a share of
# the suite's default 300 s per test; the whole test stays well under this one.
pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

PREFIX = "replicas"
# Replica 2 of each listens 10 above (cascade.stack.launcher.REPLICA_PORT_STEP): 26961..., 26911.
PORTS = {
    "ingest": 26951,
    "trainer": 26952,
    "validator": 26953,
    "registry": 26954,
    "monitor": 26955,
    "serving": 26901,  # REST one below
}
METRICS_PORTS = {name: 26920 + number for number, name in enumerate(SERVICES, start=1)}  # 2nd: 2693x
DATASETS = ("replicas_a", "replicas_b", "replicas_c")
BATCHES_PER_DATASET = 2
CASCADE_TIMEOUT = 240.0
DOWNTIME_SECONDS = 3.0
# A client of several replicas retries a call a dying replica could not answer, within a budget.
UPLOAD_ATTEMPTS = 5


@pytest.fixture(scope="module")
def replica_stack(
    request: pytest.FixtureRequest, postgres_server: str, s3_server: S3Server
) -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="cascade-replicas-"))
    secret_file = home / "s3-secret"
    secret_file.write_text(SECRET_ACCESS_KEY)
    s3 = s3_server.settings()
    bucket = s3_server.new_bucket()
    shared_state: dict[str, str] = {
        "CASCADE_REGISTRY_ARTIFACT_URL": f"s3://{bucket}/artifacts",
        "CASCADE_INGEST_SEGMENT_URL": f"s3://{bucket}/segments",
    }
    for service in ("ingest", "registry", "monitor"):
        url = new_postgres_database(postgres_server, f"replicas_{service}")
        shared_state[f"CASCADE_{service.upper()}_DATABASE_URL"] = url
    for service in ("REGISTRY", "INGEST"):
        shared_state |= {
            f"CASCADE_{service}_S3_ENDPOINT_URL": s3.s3_endpoint_url,
            f"CASCADE_{service}_S3_REGION": s3.s3_region,
            f"CASCADE_{service}_S3_ACCESS_KEY_ID": s3.s3_access_key_id,
            f"CASCADE_{service}_S3_SECRET_ACCESS_KEY_FILE": str(secret_file),
        }
    config = StackConfig(
        home=home,
        kafka_port=26990,  # nodes on 26990, 26992, 26994; controllers on 26991, 26993, 26995
        controller_port=26991,
        kafka_brokers=3,
        topic_prefix=PREFIX,
        ports=PORTS,
        metrics_ports=METRICS_PORTS,
        traces=False,
        replicas=dict.fromkeys(SERVICES, 2),
        extra_env={
            **shared_state,
            # The versions here must come from the batches alone, not from retraining on drift.
            "CASCADE_MONITOR_RETRAIN_MODELS": "no-model-retrains-on-drift-here",
            # A small search: the chaos, not the models, is under test.
            "CASCADE_TRAINER_CV_FOLDS": "2",
            # The inference load keeps both cores busy on purpose, so the validator's one-row p99
            # (budget 20 ms) measures the machine, not the model: it once failed a good version.
            "CASCADE_VALIDATOR_LATENCY_BUDGET_MS": "1000",
        },
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AWS_"))}
    stack = Stack(config, environ=environ)
    failed_before = request.session.testsfailed
    try:
        stack.start(SERVICES, timeout=300)
        yield stack
    finally:
        stack.stop()
    if request.session.testsfailed > failed_before or os.environ.get("CASCADE_KEEP_TEST_STACK"):
        print(f"\nreplica chaos stack kept in {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)


def _target(stack: Stack, service: str) -> str:
    """Every replica of a service as one gRPC target, as the services themselves are given them."""
    return stack.service_address(service)


# ---------------------------------------------------------------------- inference, closed loop


def _serving_channel_args(model: str) -> list[tuple[str, object]]:
    """Round robin over both serving replicas, each used only while its grpc.health.v1 status for
    the model (set when serving loaded it) is SERVING, so a restarted replica gets requests once it
    can answer them; a request a killed replica dropped is retried on the other (inference is
    idempotent), at most 5 times."""
    service_config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": model},
        "methodConfig": [
            {
                "name": [{"service": "inference.GRPCInferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
    return [
        ("grpc.service_config", json.dumps(service_config)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]


@dataclass
class InferenceLoad:
    """One client asking the serving replicas for the model's champion again and again until
    stopped, eight rows at a time; every failure is counted, whatever its kind."""

    target: str
    model: str
    rows: np.ndarray
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=60)

    def _run(self) -> None:
        client = triton.InferenceServerClient(url=self.target, channel_args=_serving_channel_args(self.model))
        outputs = [triton.InferRequestedOutput("label")]
        chunks = [self.rows[i : i + 8] for i in range(0, len(self.rows) - 7, 8)]
        try:
            while not self._stop.is_set():
                rows = chunks[(self.ok + self.failed) % len(chunks)]
                request = triton.InferInput("input", list(rows.shape), "FP32")
                request.set_data_from_numpy(rows)
                try:
                    result = client.infer(self.model, [request], outputs=outputs, client_timeout=30)
                    labels = result.as_numpy("label")
                    assert labels is not None and len(labels) == len(rows)
                    self.ok += 1
                except Exception as error:
                    self.failed += 1
                    self.errors[f"{type(error).__name__}: {str(error)[:200]}"] += 1
        finally:
            client.close()


def _ready_on_every_replica(stack: Stack, model: str) -> bool:
    for replica in stack.replicas("serving"):
        client = triton.InferenceServerClient(url=stack.address(replica))
        try:
            if not client.is_model_ready(model):
                return False
        except Exception:
            return False
        finally:
            client.close()
    return True


def _inferences_per_replica(stack: Stack, model: str) -> dict[str, int]:
    """Rows each serving replica inferred for the model since it last started (inference_count)."""
    counts: dict[str, int] = {}
    for replica in stack.replicas("serving"):
        client = triton.InferenceServerClient(url=stack.address(replica))
        try:
            statistics = client.get_inference_statistics(model)
            counts[replica] = sum(int(stats.inference_count) for stats in statistics.model_stats)
        finally:
            client.close()
    return counts


# ---------------------------------------------------------------------- batches


@dataclass
class Uploads:
    """Batches sent to ingest over every replica, retried on UNAVAILABLE (ingest answers a batch it
    already stored with its version, so a retry never makes a second one)."""

    target: str
    acknowledged: dict[str, str] = field(default_factory=dict)  # batch -> its dataset version
    refused: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, batch: str, dataset: str, frame: pd.DataFrame) -> None:
        data = frame.to_csv(index=False).encode()
        header = ingest_pb2.BatchHeader(dataset=dataset, format=ingest_pb2.FILE_FORMAT_CSV, target="target")
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            requests = [
                ingest_pb2.UploadBatchRequest(header=header),
                *(
                    ingest_pb2.UploadBatchRequest(chunk=data[i : i + 65536])
                    for i in range(0, len(data), 65536)
                ),
            ]
            try:
                with grpc.insecure_channel(self.target) as channel:
                    response = ingest_pb2_grpc.IngestServiceStub(channel).UploadBatch(
                        iter(requests), timeout=60, wait_for_ready=True
                    )
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt < UPLOAD_ATTEMPTS:
                    with self._lock:
                        self.retries += 1
                    time.sleep(0.5 * attempt)
                    continue
                with self._lock:
                    self.refused[batch] = f"{error.code().name}: {error.details()}"
                return
            with self._lock:
                self.acknowledged[batch] = response.dataset_version
            return

    def send_all(self, dataset: str, batches: list[pd.DataFrame], first_number: int = 1) -> None:
        for number, frame in enumerate(batches, start=first_number):
            self.send(f"{dataset}#{number}", dataset, frame)


# ---------------------------------------------------------------------- the ledger


def _dataset_versions(stack: Stack, dataset: str) -> list[ingest_pb2.DatasetVersion]:
    with grpc.insecure_channel(_target(stack, "ingest")) as channel:
        response = ingest_pb2_grpc.IngestServiceStub(channel).ListDatasetVersions(
            ingest_pb2.ListDatasetVersionsRequest(dataset=dataset), timeout=10
        )
    return list(response.versions)


def _model_versions(stack: Stack, model: str) -> list[registry_pb2.ModelVersion]:
    with grpc.insecure_channel(_target(stack, "registry")) as channel:
        try:
            response = registry_pb2_grpc.RegistryServiceStub(channel).ListModelVersions(
                registry_pb2.ListModelVersionsRequest(model=model), timeout=10
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise
    return list(response.versions)


def _alias_moves(stack: Stack, model: str) -> list[registry_pb2.AliasMove]:
    with grpc.insecure_channel(_target(stack, "registry")) as channel:
        history = registry_pb2_grpc.RegistryServiceStub(channel).GetAliasHistory(
            registry_pb2.GetAliasHistoryRequest(model=model), timeout=10
        )
    return list(history.moves)


def _all_judged(stack: Stack, datasets: set[str]) -> bool:
    """Each dataset's newest version (which holds every acknowledged batch's rows) has a model
    version, and every model version has its verdict."""
    for dataset in datasets:
        newest = _chain(_dataset_versions(stack, dataset))[-1:]
        versions = _model_versions(stack, dataset)
        if not any(v.dataset_version in newest for v in versions):
            return False
        if any(v.status == registry_pb2.VERSION_STATUS_PENDING for v in versions):
            return False
    return True


def _chain(versions: list[ingest_pb2.DatasetVersion]) -> list[str]:
    """A dataset's versions oldest first, by their parent links (each version extends its parent)."""
    child = {version.parent: version.version for version in versions}
    chain: list[str] = []
    current = child.get("")
    while current is not None and current not in chain:
        chain.append(current)
        current = child.get(current)
    return chain


@dataclass
class Ledger:
    dataset_versions: dict[str, list[str]]  # oldest first, along the parent links
    listed_versions: dict[str, int]  # how many ingest lists, on the chain or not
    model_versions: dict[str, list[registry_pb2.ModelVersion]]
    alias_moves: dict[str, list[registry_pb2.AliasMove]]

    @classmethod
    def read(cls, stack: Stack) -> Ledger:
        listed = {dataset: _dataset_versions(stack, dataset) for dataset in DATASETS}
        return cls(
            dataset_versions={dataset: _chain(versions) for dataset, versions in listed.items()},
            listed_versions={dataset: len(versions) for dataset, versions in listed.items()},
            model_versions={dataset: _model_versions(stack, dataset) for dataset in DATASETS},
            alias_moves={dataset: _alias_moves(stack, dataset) for dataset in DATASETS},
        )

    def trained_on(self, dataset: str, dataset_version: str) -> list[int]:
        return [v.version for v in self.model_versions[dataset] if v.dataset_version == dataset_version]

    def model_versions_of(self, dataset: str, dataset_version: str) -> tuple[list[int], str]:
        """The model version(s) first trained on the batch's version or a later one that holds its
        rows, and the version they were trained on ("" when none)."""
        chain = self.dataset_versions[dataset]
        if dataset_version not in chain:
            return [], ""
        for version in chain[chain.index(dataset_version) :]:
            if trained := self.trained_on(dataset, version):
                return trained, version
        return [], ""

    def lines(self, uploads: Uploads, load: InferenceLoad, killed: list[str], seconds: float) -> list[str]:
        lines = [
            "--- replica chaos ledger ---",
            f"SIGKILLed and restarted, in order: {killed}; cascade phase {seconds:.0f} s",
            f"batches: {len(uploads.acknowledged)} acknowledged, {len(uploads.refused)} refused "
            f"{uploads.refused}, {uploads.retries} upload retries",
        ]
        for batch, version in sorted(uploads.acknowledged.items()):
            dataset = batch.split("#")[0]
            models, trained_on = self.model_versions_of(dataset, version)
            how = "" if trained_on in ("", version) else f" (coalesced into the run on {trained_on[:12]})"
            lines.append(f"  {batch}: dataset version {version[:12]} -> model versions {models}{how}")
        for dataset in DATASETS:
            statuses = {
                v.version: registry_pb2.VersionStatus.Name(v.status) for v in self.model_versions[dataset]
            }
            moves = [f"{m.alias} {m.from_version}->{m.to_version}" for m in self.alias_moves[dataset]]
            chain = [version[:12] for version in self.dataset_versions[dataset]]
            lines.append(f"  {dataset}: dataset versions {chain}, models {statuses}")
            lines.append(f"  {dataset}: alias moves {moves}")
        lines.append(
            f"inference over both serving replicas: {load.ok} ok, {load.failed} failed {dict(load.errors)}"
        )
        return lines


# ---------------------------------------------------------------------- the test


def _batches(frame: pd.DataFrame, seed: int) -> list[pd.DataFrame]:
    shuffled = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    size = -(-len(shuffled) // BATCHES_PER_DATASET)
    return [
        shuffled.iloc[start : start + size].reset_index(drop=True) for start in range(0, len(shuffled), size)
    ]


def _assert_every_batch_once(ledger: Ledger, uploads: Uploads) -> None:
    assert not uploads.refused
    assert len(uploads.acknowledged) == len(DATASETS) * BATCHES_PER_DATASET
    for batch, version in uploads.acknowledged.items():
        dataset = batch.split("#")[0]
        assert ledger.dataset_versions[dataset].count(version) == 1, batch
        models, _ = ledger.model_versions_of(dataset, version)
        assert len(models) == 1, f"{batch} is in model versions {models}"
    for dataset in DATASETS:
        # One version per batch, in one line of descent (a fork would leave a version off the chain).
        assert len(ledger.dataset_versions[dataset]) == BATCHES_PER_DATASET, dataset
        assert ledger.listed_versions[dataset] == BATCHES_PER_DATASET, dataset
        # No version trained twice; the newest trained (the older may have coalesced into it).
        trained = Counter(v.dataset_version for v in ledger.model_versions[dataset])
        assert set(trained.values()) == {1}, f"a version of {dataset} trained twice: {trained}"
        assert trained[ledger.dataset_versions[dataset][-1]] == 1, dataset
        assert set(trained) <= set(ledger.dataset_versions[dataset]), dataset
        moves = Counter((m.alias, m.from_version, m.to_version) for m in ledger.alias_moves[dataset])
        assert set(moves.values()) == {1}, f"an alias of {dataset} moved twice: {moves}"
        # The champion only ever moved to versions that passed, and is one of them now.
        passed = {
            v.version for v in ledger.model_versions[dataset] if v.status == registry_pb2.VERSION_STATUS_READY
        }
        champion_moves = [to for alias, _, to in moves if alias == "champion"]
        assert champion_moves and set(champion_moves) <= passed, dataset


def test_killing_one_replica_of_each_service_in_turn_loses_nothing_and_fails_no_request(
    replica_stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = replica_stack
    frame = load_breast_cancer(as_frame=True).frame
    batches = {dataset: _batches(frame, seed) for seed, dataset in enumerate(DATASETS)}
    uploads = Uploads(_target(stack, "ingest"))

    first = DATASETS[0]
    uploads.send(f"{first}#1", first, batches[first][0])
    wait_for(
        lambda: _ready_on_every_replica(stack, first), CASCADE_TIMEOUT, "the first model on both replicas"
    )
    load = InferenceLoad(_target(stack, "serving"), first, frame.drop(columns="target").to_numpy(np.float32))
    load.start()
    started = time.monotonic()
    killed: list[str] = []
    try:
        already_sent = dict.fromkeys(DATASETS, 0) | {first: 1}
        senders = [
            threading.Thread(
                target=uploads.send_all,
                args=(dataset, batches[dataset][already_sent[dataset] :], already_sent[dataset] + 1),
            )
            for dataset in DATASETS
        ]
        for sender in senders:
            sender.start()
        # One replica of each service in turn, the first or the second alternately, while the
        # batches cascade: killed without warning, restarted after a while, back before the next.
        for number, service in enumerate(SERVICES):
            replica = stack.replicas(service)[number % 2]
            assert stack.kill_service(replica, signal.SIGKILL), f"{replica} was not running"
            killed.append(replica)
            time.sleep(DOWNTIME_SECONDS)
            stack.start_service(replica, timeout=120)
        for sender in senders:
            sender.join(timeout=CASCADE_TIMEOUT)
        datasets = {batch.split("#")[0] for batch in uploads.acknowledged}
        wait_for(
            lambda: _all_judged(stack, datasets), CASCADE_TIMEOUT, "a verdict on every batch's model", 1.0
        )
        for dataset in DATASETS:
            wait_for(
                functools.partial(_ready_on_every_replica, stack, dataset),
                CASCADE_TIMEOUT,
                f"{dataset} served",
            )
    finally:
        load.stop()
        # The ledger is printed whatever happened: a failed run is read from it.
        seconds = time.monotonic() - started
        ledger = Ledger.read(stack)
        per_replica = _inferences_per_replica(stack, first)
        with capsys.disabled():
            print("\n" + "\n".join(ledger.lines(uploads, load, killed, seconds)))
            print(f"rows inferred per serving replica since its last start: {per_replica}")

    _assert_every_batch_once(ledger, uploads)
    assert load.ok > 0
    assert all(count > 0 for count in per_replica.values()), per_replica  # both replicas took the load
    assert load.failed == 0, load.errors
    assert all(row.health == "SERVING" for row in stack.status())
