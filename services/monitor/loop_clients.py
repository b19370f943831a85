"""The monitor's clients for closing the loop: it runs a champion's ONNX artifact on its
reference rows (the prediction's reference), asks ingest whether a dataset has a version newer than
the champion's, and sends labelled production rows to ingest as a feedback batch, through the same
UploadBatch (and so the same validation, versioning and lineage) as any other batch. For the rollout
policy it reads a model's rollout from the registry and advances or aborts it."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import onnxruntime as ort
import pandas as pd

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.client.ingest import IngestClient
from cascade.client.records import DatasetVersion, Traffic
from cascade.client.registry import RegistryClient
from cascade.services.monitor.core import Matrix
from cascade.services.monitor.rollout import ACTOR, Rollout, Step, Thresholds

__all__ = ["GrpcLoopClients", "first_output_per_row", "rollout_of"]

_EPOCH = datetime.fromtimestamp(0, UTC)


class GrpcLoopClients:
    """A `ChampionOutputs`, a `ChampionArtifacts` and a `RetrainData` over the registry and ingest
    clients. Their channels live between `open()` and `close()`, inside the service's event loop.
    The latest artifact read is kept (one): its outputs and its explanation download it once."""

    def __init__(
        self,
        registry_address: str,
        ingest_address: str,
        timeout_seconds: float,
        security: ClientSecurity = PLAINTEXT,
    ) -> None:
        self.registry_address = registry_address
        self.security = security
        self.ingest_address = ingest_address
        self.timeout_seconds = timeout_seconds
        self._registry: RegistryClient | None = None
        self._ingest: IngestClient | None = None
        self._last_artifact: tuple[str, int, bytes] | None = None

    async def open(self) -> None:
        timeout = self.timeout_seconds
        self._registry = RegistryClient.connect(self.registry_address, self.security, timeout=timeout)
        self._ingest = IngestClient.connect(self.ingest_address, self.security, timeout=timeout)

    async def close(self) -> None:
        for client in (self._registry, self._ingest):
            if client is not None:
                await client.close()
        self._registry = self._ingest = None

    async def outputs(self, model: str, model_version: int, rows: Matrix) -> Matrix:
        artifact = await self.artifact(model, model_version)
        return await asyncio.to_thread(first_output_per_row, artifact, rows)

    async def artifact(self, model: str, model_version: int) -> bytes:
        """The version's ONNX artifact, verified by the registry client's download."""
        if self._registry is None:
            raise RuntimeError("GrpcLoopClients.open() was not called")
        last = self._last_artifact
        if last is not None and last[:2] == (model, model_version):
            return last[2]
        artifact = await self._registry.download_artifact(model, model_version)
        self._last_artifact = (model, model_version, artifact)
        return artifact

    # -- the rollout policy's RolloutControl ---------------------------------------------------
    async def rollout(self, model: str) -> Rollout | None:
        return rollout_of(await self._registry_client().get_traffic(model))

    async def advance(self, model: str, version: int, from_step: int, reason: str) -> Rollout | None:
        traffic = await self._registry_client().advance_rollout(
            model, version, from_step, actor=ACTOR, reason=reason
        )
        return rollout_of(traffic)

    async def abort(self, model: str, version: int, reason: str) -> Rollout | None:
        return rollout_of(
            await self._registry_client().abort_rollout(model, version, reason=reason, actor=ACTOR)
        )

    async def task(self, model: str, model_version: int) -> str:
        """The model's task as its version's registry tags say ("" when they do not)."""
        version = await self._registry_client().get_version(model, model_version)
        return version.tags.get("task", "")

    def _registry_client(self) -> RegistryClient:
        if self._registry is None:
            raise RuntimeError("GrpcLoopClients.open() was not called")
        return self._registry

    async def newer_version(self, dataset: str, dataset_version: str) -> str | None:
        latest = await self._latest(dataset)
        return None if latest.version == dataset_version else latest.version

    async def send_feedback(
        self, dataset: str, features: Sequence[str], rows: Matrix, labels: Matrix, source: str
    ) -> str:
        latest = await self._latest(dataset)
        data = await asyncio.to_thread(_parquet, features, rows, labels, latest.target, latest.task)
        uploaded = await self._ingest_client().upload_batch(
            data, dataset, target=latest.target, file_format="parquet", source=source
        )
        # An identical batch sent before made no new version: the dataset's version already has it.
        return uploaded.dataset_version or latest.version

    async def _latest(self, dataset: str) -> DatasetVersion:
        return await self._ingest_client().get_dataset_version(dataset)

    def _ingest_client(self) -> IngestClient:
        if self._ingest is None:
            raise RuntimeError("GrpcLoopClients.open() was not called")
        return self._ingest


def first_output_per_row(artifact: bytes, rows: Matrix) -> Matrix:
    """The model's first output (a classifier's label, a regressor's value) on each row, fed as
    float32 like serving feeds it. Blocking: call it in a thread."""
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: rows.astype(np.float32)}
    first = np.asarray(session.run([session.get_outputs()[0].name], feed)[0], dtype=np.float64)
    outputs: Matrix = first.reshape(len(rows), -1)[:, 0].copy()
    return outputs


def rollout_of(traffic: Traffic) -> Rollout | None:
    """The policy's view of the model's traffic: its running rollout; else a split set by hand as a
    "manual" one (compared, never decided); else its latest, ended rollout; None before any."""
    rollout = traffic.rollout
    running = rollout is not None and rollout.state == "running"
    challenger = traffic.canary_version or traffic.shadow_version
    if not running and challenger:
        stage: Literal["shadow", "canary"] = "canary" if traffic.canary_version else "shadow"
        percent = traffic.canary_percent if traffic.canary_version else traffic.shadow_percent
        return Rollout(
            model=traffic.model,
            champion_version=traffic.champion_version,
            challenger_version=challenger,
            state="manual",
            step=0,
            step_started_at=traffic.updated_at or _EPOCH,
            steps=(Step(stage, percent, 0, 0.0),),
            thresholds=Thresholds(),
            revision=traffic.revision,
            cause=traffic.reason,
        )
    if rollout is None:
        return None
    plan = rollout.plan
    started = rollout.step_started_at or rollout.started_at or _EPOCH
    return Rollout(
        model=traffic.model,
        champion_version=traffic.champion_version,
        challenger_version=rollout.version,
        state=rollout.state,
        step=rollout.step,
        step_started_at=started,
        steps=tuple(
            Step(step.stage, step.percent, step.min_requests, step.min_seconds) for step in plan.steps
        )
        or (Step("shadow", 0.0, 0, 0.0),),
        thresholds=plan.thresholds,
        revision=traffic.revision,
        cause=rollout.cause,
    )


def _parquet(features: Sequence[str], rows: Matrix, labels: Matrix, target: str, task: str) -> bytes:
    frame = pd.DataFrame(rows, columns=list(features))
    frame[target or "target"] = labels.astype(np.int64) if task == "classification" else labels
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
