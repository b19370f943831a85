"""The validator's domain: judge a freshly trained candidate against the serving champion."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from prometheus_client import Counter

from cascade.client.records import DatasetVersion, ModelVersion
from cascade.errors import FailedPrecondition, NotFound
from cascade.events import GateResult, ModelTrained, ModelValidated
from cascade.services.validator.gates import (
    Signature,
    Thresholds,
    judge,
    latency_gate,
    parity_gate,
    schema_gate,
    score,
    size_gate,
)
from cascade.services.validator.settings import ValidatorSettings
from cascade.splits import holdout_mask

log = logging.getLogger(__name__)

SOURCE = "cascade/validator"
VERDICTS = Counter("cascade_validator_verdicts_total", "Verdicts, by outcome.", ["model", "outcome"])
GATES_FAILED = Counter("cascade_validator_gates_failed_total", "Failed gates.", ["model", "gate"])

Emit = Callable[[ModelValidated], Awaitable[None]]


class Registry(Protocol):
    """What the validator reads from the registry (cascade.client.registry.RegistryClient)."""

    async def get_version(
        self, model: str, version: int | None = None, *, alias: str | None = None
    ) -> ModelVersion: ...

    async def download_artifact(self, model: str, version: int) -> bytes: ...


class Datasets(Protocol):
    """What the validator reads from ingest (cascade.client.ingest.IngestClient)."""

    async def download_dataset(
        self, dataset: str, version: str = ""
    ) -> tuple[DatasetVersion, pd.DataFrame]: ...


class ValidatorCore:
    def __init__(self, settings: ValidatorSettings, ingest: Datasets, registry: Registry, emit: Emit) -> None:
        self.settings = settings
        self.ingest = ingest
        self.registry = registry
        self.emit = emit
        defaults = Thresholds(
            settings.min_rows,
            settings.min_accuracy,
            settings.min_r2,
            settings.max_regression,
            settings.latency_budget_ms,
            settings.max_artifact_bytes,
        )
        self.thresholds = defaults
        # Checked at start-up: a typo in a model's thresholds fails fast, not at its first verdict.
        self.model_thresholds = {
            model: defaults.overridden(values) for model, values in settings.model_thresholds.items()
        }

    async def on_model_trained(self, event: ModelTrained) -> None:
        """Deterministic, so a redelivered event yields the same verdict again (and the registry
        records only the first)."""
        candidate = await self.registry.get_version(event.model, event.model_version)
        champion = await self._champion(event.model)
        features = json.loads(_required_tag(candidate, "features"))
        target, task = _required_tag(candidate, "target"), _required_tag(candidate, "task")

        _, frame = await self.ingest.download_dataset(event.dataset, event.dataset_version)
        limits = self.model_thresholds.get(event.model, self.thresholds)
        candidate_onnx = await self.registry.download_artifact(event.model, event.model_version)
        champion_onnx = None
        if champion is not None and champion.version != candidate.version:
            champion_onnx = await self.registry.download_artifact(event.model, champion.version)
        # Three or four ONNX sessions, a parity check and 200 timed runs take seconds of CPU: in a
        # worker thread, so health checks and Kafka heartbeats are answered meanwhile.
        measured = await asyncio.to_thread(
            _measure,
            _Candidacy(
                frame=frame,
                features=features,
                target=target,
                task=task,
                holdout_fraction=self.settings.holdout_fraction,
                candidate_onnx=candidate_onnx,
                champion_onnx=champion_onnx,
                parity_reference_json=candidate.tags.get("parity_reference", "null"),
                limits=limits,
            ),
        )
        candidate_score, champion_score = measured.candidate_score, measured.champion_score
        gates = [
            *measured.quality,
            schema_gate(
                _signature(candidate),
                _signature(champion) if champion is not None else None,
                declared_change=candidate.tags.get("schema_change") == "declared",
            ),
            measured.parity,
            measured.latency,
            size_gate(len(candidate_onnx), limits.max_artifact_bytes),
        ]
        passed = all(g.passed for g in gates)
        VERDICTS.labels(event.model, "passed" if passed else "failed").inc()
        for gate in gates:
            if not gate.passed:
                GATES_FAILED.labels(event.model, gate.name).inc()
        failed = "; ".join(_described(gate) for gate in gates if not gate.passed)
        log.info(
            "%s v%d %s: candidate %.4f vs champion %s on %d fresh rows%s",
            event.model,
            event.model_version,
            "PASSED" if passed else "FAILED",
            candidate_score,
            "none" if champion_score is None else f"{champion_score:.4f}",
            measured.rows,
            f"; failed {failed}" if failed else "",
        )
        metrics = {"candidate": candidate_score}
        if champion_score is not None:
            metrics["champion"] = champion_score
        await self.emit(
            ModelValidated(
                id=str(
                    uuid.uuid5(uuid.NAMESPACE_URL, f"cascade:validated:{event.model}:{event.model_version}")
                ),
                source=SOURCE,
                subject=event.model,
                model=event.model,
                model_version=event.model_version,
                champion_version=champion.version if champion is not None else None,
                passed=passed,
                gates=gates,
                metrics=metrics,
                dataset_version=event.dataset_version,
                training_run=event.training_run,
                cause=event.cause,
            )
        )

    async def _champion(self, model: str) -> ModelVersion | None:
        """The version the champion alias points at; None before the model has one."""
        try:
            return await self.registry.get_version(model, alias="champion")
        except NotFound:
            return None


@dataclass(frozen=True)
class _Candidacy:
    """Everything a verdict is measured from, fetched beforehand."""

    frame: pd.DataFrame
    features: list[str]
    target: str
    task: str
    holdout_fraction: float
    candidate_onnx: bytes
    champion_onnx: bytes | None
    parity_reference_json: str
    limits: Thresholds


@dataclass(frozen=True)
class _Measured:
    rows: int
    candidate_score: float
    champion_score: float | None
    quality: list[GateResult]
    parity: GateResult
    latency: GateResult


def _measure(candidacy: _Candidacy) -> _Measured:
    """Score candidate and champion on the fresh rows, recheck parity, time inference. Blocking and
    CPU-bound: run it in a worker thread (onnxruntime releases the GIL while it computes)."""
    c = candidacy
    fresh = c.frame[holdout_mask(c.frame[[*c.features, c.target]], c.holdout_fraction)]
    rows = fresh[c.features].to_numpy(dtype=np.float32)
    truth = fresh[c.target].to_numpy()
    candidate_score = score(c.candidate_onnx, rows, truth, c.task)
    champion_score = None if c.champion_onnx is None else score(c.champion_onnx, rows, truth, c.task)
    return _Measured(
        rows=len(rows),
        candidate_score=candidate_score,
        champion_score=champion_score,
        quality=judge(c.task, len(rows), candidate_score, champion_score, c.limits),
        parity=parity_gate(c.candidate_onnx, json.loads(c.parity_reference_json), c.task),
        latency=latency_gate(c.candidate_onnx, rows, c.limits.latency_budget_ms),
    )


def _required_tag(version: ModelVersion, name: str) -> str:
    """A tag the trainer gives every version; without it there is nothing to judge, on any retry."""
    if name not in version.tags:
        raise FailedPrecondition(
            f"{version.model} v{version.version} has no {name!r} tag: the trainer sets it"
        )
    return version.tags[name]


def _signature(version: ModelVersion) -> Signature:
    """Names, datatypes and shapes of a version's inputs and outputs, as the registry read them."""
    return {
        "inputs": [(t.name, t.datatype, tuple(t.shape)) for t in version.inputs],
        "outputs": [(t.name, t.datatype, tuple(t.shape)) for t in version.outputs],
    }


def _described(gate: GateResult) -> str:
    """A failed gate for the log: its name, what it measured and against what."""
    measured = "" if gate.value is None else f" {gate.value:g}"
    against = "" if gate.threshold is None else f" (threshold {gate.threshold:g})"
    return f"{gate.name}{measured}{against}: {gate.detail}"
