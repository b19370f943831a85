"""The validator core against fake clients, with no broker and no gRPC: real ONNX forests, judged on
real rows; the verdicts go to the registry's real core (SQLite, local artifacts), which promotes or
not as the model's policy says, so each test shows what the validator's verdict does to the aliases.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification

from cascade.client.records import DatasetVersion, ModelVersion
from cascade.errors import FailedPrecondition, NotFound, Unavailable, classify
from cascade.events import Event, ModelTrained, ModelValidated
from cascade.grpc_io import ReceivedFile
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import NewVersion, RegistryCore
from cascade.services.registry.grpc_api import version_message
from cascade.services.registry.store import RegistryStore, sqlite_url
from cascade.services.validator.core import ValidatorCore
from cascade.services.validator.settings import ValidatorSettings
from tests.validator.loop_rig import random_forest_version

MODEL, DATASET, DATASET_VERSION = "churn", "customers", "v1"
FEATURES = [f"f{i}" for i in range(8)]
# Generous: the latency gate measures this machine, and these tests are about the other gates.
SETTINGS = ValidatorSettings(latency_budget_ms=1000.0)


class InMemoryDatasets:
    """Ingest as the validator sees it: dataset versions by name, as frames."""

    def __init__(self, frames: dict[tuple[str, str], pd.DataFrame]) -> None:
        self.frames = frames

    async def download_dataset(self, dataset: str, version: str = "") -> tuple[DatasetVersion, pd.DataFrame]:
        if (dataset, version) not in self.frames:
            raise NotFound(f"ingest: dataset {dataset}@{version} not found")
        frame = self.frames[dataset, version]
        features = tuple(c for c in frame.columns if c != "target")
        info = DatasetVersion(
            dataset, version, "", (), len(frame), "target", features, "classification", (), None, 0, ()
        )
        return info, frame.copy()


class InProcessRegistry:
    """The registry client's two reads, answered by the registry's real core in this process: the
    records its gRPC API would send, and the artifact bytes after the store's own verification."""

    def __init__(self, core: RegistryCore) -> None:
        self.core = core

    async def get_version(
        self, model: str, version: int | None = None, *, alias: str | None = None
    ) -> ModelVersion:
        return ModelVersion.of(version_message(self.core.resolve(model, version or 0, alias or "")))

    async def download_artifact(self, model: str, version: int) -> bytes:
        record = self.core.resolve(model, version)
        return self.core.artifacts.verify(record.artifact_sha256).read_bytes()


class UnreachableRegistry:
    """A registry the client cannot reach: every call fails as cascade.client.calls reports it."""

    async def get_version(
        self, model: str, version: int | None = None, *, alias: str | None = None
    ) -> ModelVersion:
        raise Unavailable("registry at 127.0.0.1:50054: reading a version: failed to connect")

    async def download_artifact(self, model: str, version: int) -> bytes:
        raise Unavailable("registry at 127.0.0.1:50054: downloading an artifact: failed to connect")


@dataclass
class Rig:
    registry: RegistryCore
    validator: ValidatorCore
    verdicts: list[ModelValidated]
    rows: np.ndarray
    labels: np.ndarray
    scratch: Path
    _uploads = itertools.count()

    async def add_version(self, labels: np.ndarray, seed: int, tags: dict[str, str] | None = None) -> int:
        """A forest trained on the rows with `labels`, registered with the trainer's tags (or `tags`)."""
        artifact, trainer_tags = random_forest_version(self.rows, labels, FEATURES, trees=10, seed=seed)
        spooled = self.scratch / f"upload-{next(self._uploads)}"
        spooled.write_bytes(artifact)
        sha256 = hashlib.sha256(artifact).hexdigest()
        record = await self.registry.create_version(
            NewVersion(MODEL, DATASET, DATASET_VERSION, run={}, tags=trainer_tags if tags is None else tags),
            ReceivedFile(spooled, len(artifact), sha256),
        )
        return record.version

    async def weak_champion_and_strong_candidate(self) -> tuple[int, int]:
        """A champion trained on shuffled labels, and a candidate trained on the true ones."""
        weak = await self.add_version(_shuffled(self.labels), seed=1)
        await self.registry.set_alias(MODEL, "champion", weak, "test", "a weak champion to beat")
        return weak, await self.add_version(self.labels, seed=2)

    async def validate(self, version: int) -> ModelValidated:
        await self.validator.on_model_trained(_trained(version))
        return self.verdicts[-1]

    def champion(self) -> int | None:
        return self.registry.store.alias_target(MODEL, "champion")

    def alias(self, name: str) -> int | None:
        return self.registry.store.alias_target(MODEL, name)


async def _rig(tmp_path: Path, policy: str) -> AsyncIterator[Rig]:
    rows, labels = make_classification(
        n_samples=600, n_features=len(FEATURES), n_informative=5, class_sep=1.5, random_state=0
    )
    rows = rows.astype(np.float32)
    frame = pd.DataFrame(rows, columns=FEATURES).assign(target=labels)

    async def no_events(event: Event) -> None:
        pass

    registry = RegistryCore(
        RegistryStore(sqlite_url(tmp_path / "registry.sqlite3")),
        LocalArtifactStore(tmp_path / "artifacts"),
        no_events,
        policy,
    )
    verdicts: list[ModelValidated] = []

    async def record_and_deliver(verdict: ModelValidated) -> None:
        # What Kafka does between the two services: the verdict reaches the registry's handler.
        verdicts.append(verdict)
        await registry.on_validated(verdict)

    validator = ValidatorCore(
        SETTINGS,
        InMemoryDatasets({(DATASET, DATASET_VERSION): frame}),
        InProcessRegistry(registry),
        record_and_deliver,
    )
    try:
        yield Rig(registry, validator, verdicts, rows, labels, tmp_path)
    finally:
        registry.store.close()


@pytest.fixture
async def automatic(tmp_path: Path) -> AsyncIterator[Rig]:
    async for rig in _rig(tmp_path, "automatic"):
        yield rig


@pytest.fixture
async def manual(tmp_path: Path) -> AsyncIterator[Rig]:
    async for rig in _rig(tmp_path, "manual"):
        yield rig


def _trained(version: int) -> ModelTrained:
    return ModelTrained(
        source="test",
        subject=MODEL,
        model=MODEL,
        model_version=version,
        dataset=DATASET,
        dataset_version=DATASET_VERSION,
        training_run=f"run-{version}",
    )


def _shuffled(labels: np.ndarray) -> np.ndarray:
    """Labels a model can learn nothing true from: it scores about a coin's accuracy."""
    return np.random.default_rng(7).permutation(labels)


def _gates(verdict: ModelValidated) -> dict[str, bool]:
    return {gate.name: gate.passed for gate in verdict.gates}


async def test_a_first_candidate_passes_on_its_own_merit_and_becomes_champion(automatic: Rig) -> None:
    first = await automatic.add_version(automatic.labels, seed=1)

    verdict = await automatic.validate(first)

    assert verdict.passed, verdict.gates
    assert verdict.champion_version is None and "champion" not in verdict.metrics
    assert {"min_accuracy", "no_regression", "schema", "onnx_parity", "latency_p99_ms"} <= set(
        _gates(verdict)
    )
    assert automatic.champion() == first


async def test_a_candidate_that_beats_the_champion_is_promoted_under_automatic_policy(automatic: Rig) -> None:
    weak, strong = await automatic.weak_champion_and_strong_candidate()

    verdict = await automatic.validate(strong)

    assert verdict.passed, verdict.gates
    assert verdict.champion_version == weak
    assert verdict.metrics["candidate"] > verdict.metrics["champion"] + 0.2
    assert automatic.champion() == strong
    assert automatic.registry.store.get(MODEL, strong).status == "READY"


async def test_a_candidate_that_loses_to_the_champion_is_not_promoted(
    automatic: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    strong = await automatic.add_version(automatic.labels, seed=1)
    await automatic.validate(strong)
    assert automatic.champion() == strong
    weak = await automatic.add_version(_shuffled(automatic.labels), seed=2)

    with caplog.at_level(logging.INFO, logger="cascade.services.validator.core"):
        verdict = await automatic.validate(weak)

    # The log says which gate failed, with what it measured against its threshold.
    (line,) = [r.getMessage() for r in caplog.records if "FAILED" in r.getMessage()]
    assert f"no_regression {verdict.metrics['candidate']:g} (threshold" in line

    assert not verdict.passed
    assert not _gates(verdict)["no_regression"]
    assert verdict.metrics["candidate"] < verdict.metrics["champion"]
    assert automatic.champion() == strong
    assert automatic.registry.store.get(MODEL, weak).status == "FAILED"


async def test_manual_policy_records_the_verdict_without_moving_the_champion(manual: Rig) -> None:
    weak, strong = await manual.weak_champion_and_strong_candidate()

    verdict = await manual.validate(strong)

    assert verdict.passed, verdict.gates
    recorded = manual.registry.store.get(MODEL, strong)
    assert recorded.status == "READY"
    assert recorded.validation is not None and recorded.validation["id"] == verdict.id
    assert manual.champion() == weak
    assert manual.alias("challenger") == strong


async def test_a_redelivered_event_yields_the_same_verdict(automatic: Rig) -> None:
    first = await automatic.add_version(automatic.labels, seed=1)

    once = await automatic.validate(first)
    again = await automatic.validate(first)

    assert again.id == once.id
    assert again.passed == once.passed
    assert again.metrics == once.metrics


@pytest.mark.parametrize("missing", ["features", "target", "task"])
async def test_a_version_without_the_trainers_tags_is_a_failed_precondition(
    automatic: Rig, missing: str
) -> None:
    _, tags = random_forest_version(automatic.rows, automatic.labels, FEATURES, trees=2, seed=1)
    del tags[missing]
    version = await automatic.add_version(automatic.labels, seed=1, tags=tags)

    with pytest.raises(FailedPrecondition, match=f"{MODEL} v{version} has no '{missing}' tag") as raised:
        await automatic.validate(version)

    assert classify(raised.value) == "permanent"  # dead-lettered, not retried
    assert automatic.verdicts == []
    assert automatic.registry.store.get(MODEL, version).validation is None


async def test_an_unreachable_registry_is_unavailable_so_the_event_is_retried(tmp_path: Path) -> None:
    verdicts: list[ModelValidated] = []

    async def record(verdict: ModelValidated) -> None:
        verdicts.append(verdict)

    validator = ValidatorCore(SETTINGS, InMemoryDatasets({}), UnreachableRegistry(), record)

    with pytest.raises(Unavailable, match=r"registry at 127\.0\.0\.1:50054") as raised:
        await validator.on_model_trained(_trained(1))

    assert classify(raised.value) == "transient"
    assert verdicts == []
