"""The trainer's domain: one *data arrived* becomes one registered, ONNX-verified model version."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from prometheus_client import Counter, Histogram

from services.trainer.settings import TrainerSettings
from services.trainer.training import TrainingResult, train
from shared.clients import fetch_dataset, unavailable_as_retryable
from shared.events import DataArrived, ModelTrained
from shared.grpc_io import CHUNK_SIZE
from shared.stubs.cascade.registry.v1 import registry_pb2 as registry_pb
from shared.stubs.cascade.registry.v1 import registry_pb2_grpc

log = logging.getLogger(__name__)

SOURCE = "cascade/trainer"
RUNS = Counter("cascade_trainer_runs_total", "Training runs, by outcome.", ["model", "outcome"])
TRIALS = Counter("cascade_trainer_trials_total", "Hyperparameter trials run.", ["model"])
TRAIN_SECONDS = Histogram("cascade_trainer_train_seconds", "Wall time of one training run.")

Emit = Callable[[ModelTrained], Awaitable[None]]


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
        model = event.dataset
        key = f"{event.dataset_version}:{self.spec_digest}"
        existing = await self._registered(model, key)
        if existing is None:
            existing = await self._train_and_register(event, model, key)
        else:
            log.info("%s@%s already trained as v%d", model, event.dataset_version[:12], existing.version)
        await self.emit(
            ModelTrained(
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"cascade:model-trained:{model}:{existing.version}")),
                source=SOURCE,
                subject=model,
                model=model,
                model_version=existing.version,
                dataset=event.dataset,
                dataset_version=event.dataset_version,
                training_run=existing.run.run_id,
                metrics=dict(existing.run.metrics),
                train_seconds=existing.run.train_seconds,
            )
        )

    async def _registered(self, model: str, key: str) -> registry_pb.ModelVersion | None:
        try:
            return await self.registry.GetModelVersion(
                registry_pb.GetModelVersionRequest(model=model, idempotency_key=key)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise unavailable_as_retryable(exc, "registry: looking up a previous run") from exc

    async def _train_and_register(self, event: DataArrived, model: str, key: str) -> registry_pb.ModelVersion:
        info, frame = await fetch_dataset(self.ingest, event.dataset, event.dataset_version)
        features, target = list(info.features), info.target
        log.info("training %s on %s@%s (%d rows)", model, event.dataset, info.version[:12], len(frame))
        try:
            with TRAIN_SECONDS.time():
                result = await asyncio.to_thread(
                    train,
                    frame,
                    features,
                    target,
                    event.task,
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
        version = await self._upload(model, key, run_id, event, features, target, result)
        log.info(
            "registered %s v%d: %s in %.2fs", model, version.version, result.metrics, result.train_seconds
        )
        return version

    async def _upload(
        self,
        model: str,
        key: str,
        run_id: str,
        event: DataArrived,
        features: list[str],
        target: str,
        result: TrainingResult,
    ) -> registry_pb.ModelVersion:
        header = registry_pb.VersionHeader(
            model=model,
            dataset=event.dataset,
            dataset_version=event.dataset_version,
            idempotency_key=key,
            run=registry_pb.TrainingRun(
                run_id=run_id,
                params=result.params,
                metrics=result.metrics,
                seed=self.settings.seed,
                train_seconds=result.train_seconds,
            ),
            tags={"features": json.dumps(features), "target": target, "task": event.task},
            description=f"trained on {event.dataset}@{event.dataset_version[:12]}",
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
