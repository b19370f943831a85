"""A rig that validates a real candidate while a health client keeps asking, and records how long
each check waited: the validator's event loop must stay free while it builds ONNX sessions and times
inference. Used by tests/validator/test_event_loop.py and bench/validator/run.py.

The validator core runs on the caller's event loop with a real gRPC health server beside it, as in
the service. Its registry (the real RegistryServicer over SQLite and local files) and a small ingest
that serves one Parquet dataset run on their own loop in a background thread, as they would run in
processes of their own, so nothing but the validator's work shares the measured loop. The health
client is a plain blocking stub in another thread: it measures from outside, like a kubelet's probe.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pandas as pd
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from sklearn.datasets import make_classification

from cascade.client.ingest import IngestClient
from cascade.client.registry import RegistryClient
from cascade.events import Event, ModelTrained, ModelValidated
from cascade.grpc_io import ServicerContext
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import Lineage, RegistryCore
from cascade.services.registry.grpc_api import RegistryServicer
from cascade.services.registry.store import RegistryStore, sqlite_url
from cascade.services.trainer.training import build_pipeline, export_onnx
from cascade.services.validator.core import ValidatorCore
from cascade.services.validator.settings import ValidatorSettings
from cascade.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.grpc_server import serving

MODEL, DATASET, DATASET_VERSION = "loop_rf", "loop_data", "v1"


@dataclass(frozen=True)
class LoopWaits:
    """What the health client saw while one validation ran."""

    validation_seconds: float
    answered: int  # checks answered SERVING while the validation ran
    worst_wait: float  # the longest a check waited for its answer, in seconds
    median_wait: float
    verdict: ModelValidated


class _OneDataset(ingest_pb2_grpc.IngestServiceServicer):
    """Just enough of ingest for the validator: one dataset version, served as Parquet."""

    def __init__(self, frame: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        self.data = buffer.getvalue()

    async def GetDatasetVersion(
        self, request: ingest_pb2.GetDatasetVersionRequest, context: ServicerContext
    ) -> ingest_pb2.DatasetVersion:
        return ingest_pb2.DatasetVersion(dataset=DATASET, version=DATASET_VERSION)

    async def DownloadDatasetVersion(
        self, request: ingest_pb2.DownloadDatasetVersionRequest, context: ServicerContext
    ) -> AsyncIterator[ingest_pb2.DataChunk]:
        digest = hashlib.sha256(self.data).hexdigest()
        for offset in range(0, len(self.data), 1 << 20):
            chunk = self.data[offset : offset + (1 << 20)]
            yield ingest_pb2.DataChunk(data=chunk, offset=offset, total_size=len(self.data), sha256=digest)


def random_forest_version(
    x: np.ndarray, y: np.ndarray, features: list[str], trees: int, seed: int
) -> tuple[bytes, dict[str, str]]:
    """A random forest exported the trainer's way, with the tags the trainer gives its versions."""
    pipeline = build_pipeline("random_forest", "classification", {"n_estimators": trees}, seed=seed)
    pipeline.fit(x, y)
    reference_rows = x[:16]
    tags = {
        "features": json.dumps(features),
        "target": "target",
        "task": "classification",
        "parity_reference": json.dumps(
            {
                "rows": reference_rows.tolist(),
                "outputs": pipeline.predict_proba(reference_rows).tolist(),
                "labels": [[float(v)] for v in pipeline.predict(reference_rows)],
            }
        ),
    }
    artifact = onnx.load_from_string(export_onnx(pipeline, len(features), "classification"))
    artifact.doc_string = f"seed {seed}"  # its own digest
    return artifact.SerializeToString(), tags


@contextmanager
def _background_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="registry-and-ingest", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _on(loop: asyncio.AbstractEventLoop, work: Awaitable[object]) -> Future[object]:
    async def wrapped() -> object:
        return await work

    return asyncio.run_coroutine_threadsafe(wrapped(), loop)


@asynccontextmanager
async def validation_rig(
    rows: int = 2000, trees: int = 100
) -> AsyncIterator[Callable[[], Awaitable[LoopWaits]]]:
    """Yields `validate`: one validation of candidate v2 against champion v1 (random forests on
    `rows` rows of 20 features), measured by a health client polling throughout."""
    x, y = make_classification(n_samples=rows, n_features=20, n_informative=10, random_state=0)
    x = x.astype(np.float32)
    features = [f"f{i}" for i in range(x.shape[1])]
    frame = pd.DataFrame(x, columns=features).assign(target=y)
    versions = [random_forest_version(x, y, features, trees, seed) for seed in (1, 2)]

    with tempfile.TemporaryDirectory(prefix="validator-loop-") as scratch, _background_loop() as remote:
        root = Path(scratch)
        stopped = asyncio.Event()
        address_of_both: Future[str] = Future()

        async def serve_registry_and_ingest() -> None:
            async def no_events(event: Event) -> None:
                pass

            core = RegistryCore(
                RegistryStore(sqlite_url(root / "registry.sqlite3")),
                LocalArtifactStore(root / "artifacts"),
                no_events,
                "manual",
            )
            no_lineage: Any = None  # the validator never asks for lineage
            servicer = RegistryServicer(core, Lineage(core, no_lineage), root / "spool", 1 << 30)

            def register(server: grpc.aio.Server) -> None:
                registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
                ingest_pb2_grpc.add_IngestServiceServicer_to_server(_OneDataset(frame), server)

            async with serving(register) as address:
                address_of_both.set_result(address)
                await stopped.wait()
            core.store.close()

        served = _on(remote, serve_registry_and_ingest())
        address = await asyncio.wrap_future(address_of_both)
        registry, ingest = RegistryClient.connect(address), IngestClient.connect(address)
        for version, (artifact, tags) in enumerate(versions, start=1):
            await registry.create_version(
                MODEL, artifact, dataset=DATASET, dataset_version=DATASET_VERSION, tags=tags
            )
            if version == 1:
                await registry.set_alias(MODEL, "champion", 1)

        verdicts: list[ModelValidated] = []

        async def collect(event: ModelValidated) -> None:
            verdicts.append(event)

        validator = ValidatorCore(ValidatorSettings(), ingest, registry, collect)
        trained = ModelTrained(
            source="test",
            subject=MODEL,
            model=MODEL,
            model_version=2,
            dataset=DATASET,
            dataset_version=DATASET_VERSION,
            training_run="run-2",
        )

        async def validate() -> LoopWaits:
            verdicts.clear()
            return await _measured(validator.on_model_trained(trained), verdicts)

        try:
            yield validate
        finally:
            await ingest.close()
            await registry.close()
            remote.call_soon_threadsafe(stopped.set)
            await asyncio.wrap_future(served)


async def _measured(validation: Awaitable[None], verdicts: list[ModelValidated]) -> LoopWaits:
    """Run `validation` on this loop beside a health server while a client thread keeps checking."""
    health = HealthServicer()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)

    def register(server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    async with serving(register) as address:
        waits: list[tuple[float, float]] = []  # (asked at, answered at), answered SERVING only
        probing = threading.Event()

        def probe() -> None:
            with grpc.insecure_channel(address) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                while probing.is_set():
                    asked = time.perf_counter()
                    answer = check(health_pb2.HealthCheckRequest(), timeout=60)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        waits.append((asked, time.perf_counter()))
                    time.sleep(0.002)

        probing.set()
        prober = threading.Thread(target=probe, name="health-probe")
        prober.start()
        try:
            await asyncio.sleep(0.2)  # the probe is under way before the validation starts
            started = time.perf_counter()
            await validation
            finished = time.perf_counter()
            await asyncio.sleep(0.1)
        finally:
            probing.clear()
            # Not asyncio.to_thread: the bench's baseline runs that inline on the loop.
            await asyncio.get_running_loop().run_in_executor(None, prober.join, 70)
    # A check counts if it overlapped the validation; its wait is how long it took to be answered.
    during = [answered - asked for asked, answered in waits if answered >= started and asked <= finished]
    (verdict,) = verdicts
    return LoopWaits(
        validation_seconds=finished - started,
        answered=len(during),
        worst_wait=max(during, default=float("inf")),
        median_wait=statistics.median(during) if during else float("inf"),
        verdict=verdict,
    )
