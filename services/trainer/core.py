"""The trainer's domain: one *data arrived* becomes one registered, ONNX-verified model version."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import grpc
from prometheus_client import Counter, Histogram

from services.trainer.settings import TrainerSettings
from services.trainer.training import TrainingResult, train
from shared.clients import fetch_dataset, unavailable_as_retryable
from shared.events import DataArrived, DriftDetected, ModelTrained, RetrainCause
from shared.grpc_io import CHUNK_SIZE
from shared.stubs.cascade.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from shared.stubs.cascade.registry.v1 import registry_pb2 as registry_pb
from shared.stubs.cascade.registry.v1 import registry_pb2_grpc

log = logging.getLogger(__name__)

SOURCE = "cascade/trainer"
RUNS = Counter("cascade_trainer_runs_total", "Training runs, by outcome.", ["model", "outcome"])
TRIALS = Counter("cascade_trainer_trials_total", "Hyperparameter trials run.", ["model"])
TRAIN_SECONDS = Histogram("cascade_trainer_train_seconds", "Wall time of one training run.")

Emit = Callable[[ModelTrained], Awaitable[None]]


@dataclass(frozen=True)
class _Job:
    """What one training run is about: a dataset version, and why (None: new data arrived)."""

    dataset: str
    dataset_version: str
    task: Literal["classification", "regression"]
    cause: RetrainCause | None = None


class TrainerCore:
    def __init__(
        self, settings: TrainerSettings, ingest: grpc.aio.Channel, registry: grpc.aio.Channel, emit: Emit
    ) -> None:
        self.settings = settings
        self.ingest = ingest
        self.registry = registry_pb2_grpc.RegistryServiceStub(registry)
        self.emit = emit
        # What makes two runs equivalent: same data version and same training settings.
        spec = {
            "seed": settings.seed,
            "folds": settings.cv_folds,
            "holdout": settings.holdout_fraction,
            "v": 1,
        }
        self.spec_digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    async def on_data_arrived(self, event: DataArrived) -> None:
        """Train on the announced version, once: a redelivered event finds its version already
        registered (by idempotency key) and only announces it again."""
        job = _Job(event.dataset, event.dataset_version, event.task)
        await self._run(event.dataset, job, f"{event.dataset_version}:{self.spec_digest}")

    async def on_drift_detected(self, event: DriftDetected) -> None:
        """Retrain the drifting model on its dataset's newest version. The drift event's id is part
        of the idempotency key, so a retrain happens even when no data arrived since the champion was
        trained, and a redelivered event does not train twice. Storms are the monitor's to stop
        (its cooldown and hysteresis decide when to emit)."""
        champion = await self._version(event.model, event.model_version)
        latest = await self._latest_dataset_version(champion.dataset)
        cause = RetrainCause(kind=event.kind, event_id=event.id, summary=event.summary, report=event.report)
        task: Literal["classification", "regression"] = (
            "regression" if champion.tags.get("task") == "regression" else "classification"
        )
        job = _Job(champion.dataset, latest, task, cause)
        log.info(
            "%s: %s detected on v%d (%s); retraining on %s@%s",
            event.model,
            event.kind,
            event.model_version,
            event.summary,
            champion.dataset,
            latest[:12],
        )
        await self._run(event.model, job, f"{latest}:{self.spec_digest}:{event.kind}:{event.id}")

    async def _run(self, model: str, job: _Job, key: str) -> None:
        existing = await self._registered(model, key)
        if existing is None:
            existing = await self._train_and_register(job, model, key)
        else:
            log.info("%s@%s already trained as v%d", model, job.dataset_version[:12], existing.version)
        await self.emit(
            ModelTrained(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"cascade:model-trained:{model}:{existing.version}")),
                source=SOURCE,
                subject=model,
                model=model,
                model_version=existing.version,
                dataset=job.dataset,
                dataset_version=job.dataset_version,
                training_run=existing.run.run_id,
                metrics=dict(existing.run.metrics),
                train_seconds=existing.run.train_seconds,
                cause=job.cause,
            )
        )

    async def _version(self, model: str, version: int) -> registry_pb.ModelVersion:
        try:
            return await self.registry.GetModelVersion(
                registry_pb.GetModelVersionRequest(model=model, version=version)
            )
        except grpc.aio.AioRpcError as exc:
            raise unavailable_as_retryable(exc, f"registry: reading {model} v{version}") from exc

    async def _latest_dataset_version(self, dataset: str) -> str:
        stub = ingest_pb2_grpc.IngestServiceStub(self.ingest)
        try:
            info = await stub.GetDatasetVersion(
                ingest_pb2.GetDatasetVersionRequest(dataset=dataset, version="")
            )
        except grpc.aio.AioRpcError as exc:
            raise unavailable_as_retryable(exc, f"ingest: the latest version of {dataset}") from exc
        return str(info.version)

    async def _registered(self, model: str, key: str) -> registry_pb.ModelVersion | None:
        try:
            return await self.registry.GetModelVersion(
                registry_pb.GetModelVersionRequest(model=model, idempotency_key=key)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise unavailable_as_retryable(exc, "registry: looking up a previous run") from exc

    async def _train_and_register(self, job: _Job, model: str, key: str) -> registry_pb.ModelVersion:
        info, frame = await fetch_dataset(self.ingest, job.dataset, job.dataset_version)
        features, target = list(info.features), info.target
        log.info("training %s on %s@%s (%d rows)", model, job.dataset, info.version[:12], len(frame))
        try:
            with TRAIN_SECONDS.time():
                result = await asyncio.to_thread(
                    train,
                    frame,
                    features,
                    target,
                    job.task,
                    self.settings.seed,
                    self.settings.cv_folds,
                    self.settings.holdout_fraction,
                )
        except Exception:
            RUNS.labels(model, "failed").inc()
            raise
        RUNS.labels(model, "succeeded").inc()
        TRIALS.labels(model).inc(len(result.trials))
        run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cascade:run:{model}:{key}"))
        version = await self._upload(model, key, run_id, job, features, target, result)
        log.info(
            "registered %s v%d: %s in %.2fs", model, version.version, result.metrics, result.train_seconds
        )
        return version

    async def _upload(
        self,
        model: str,
        key: str,
        run_id: str,
        job: _Job,
        features: list[str],
        target: str,
        result: TrainingResult,
    ) -> registry_pb.ModelVersion:
        header = registry_pb.VersionHeader(
            model=model,
            dataset=job.dataset,
            dataset_version=job.dataset_version,
            idempotency_key=key,
            run=registry_pb.TrainingRun(
                run_id=run_id,
                params=result.params,
                metrics=result.metrics,
                seed=self.settings.seed,
                train_seconds=result.train_seconds,
            ),
            tags=_tags(features, target, job),
            description=f"trained on {job.dataset}@{job.dataset_version[:12]}"
            + (f" because {job.cause.kind} was detected: {job.cause.summary}" if job.cause else ""),
        )

        async def requests() -> AsyncIterator[registry_pb.CreateModelVersionRequest]:
            yield registry_pb.CreateModelVersionRequest(header=header)
            for start in range(0, len(result.onnx_bytes), CHUNK_SIZE):
                yield registry_pb.CreateModelVersionRequest(
                    chunk=result.onnx_bytes[start : start + CHUNK_SIZE]
                )

        try:
            return await self.registry.CreateModelVersion(requests())
        except grpc.aio.AioRpcError as exc:
            raise unavailable_as_retryable(exc, "registry: uploading the artifact") from exc


def _tags(features: list[str], target: str, job: _Job) -> dict[str, str]:
    tags = {"features": json.dumps(features), "target": target, "task": job.task}
    if job.cause is not None:  # the registry keeps why this version exists, with the report
        tags["cause"] = job.cause.model_dump_json()
    return tags
