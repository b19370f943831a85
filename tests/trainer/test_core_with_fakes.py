"""The trainer core against in-memory fakes of its Datasets and Registry interfaces: no broker, no
gRPC. What it trains, skips and re-announces, and which failures it lets through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from cascade.client.records import (
    DatasetVersion,
    ModelVersion,
    StoredTrainingSpec,
    TrainingRun,
    VersionStatus,
)
from cascade.errors import NotFound, Unavailable
from cascade.events import DataArrived, DriftDetected, ModelTrained, TrainingProgress
from cascade.services.trainer.core import TrainerCore
from cascade.services.trainer.settings import TrainerSettings
from cascade.training_spec import TrainingSpec

DATASET = "bc"


def _dataset_version(version: str, frame: pd.DataFrame) -> DatasetVersion:
    return DatasetVersion(
        dataset=DATASET,
        version=version,
        parent="",
        batch_ids=(),
        rows=len(frame),
        target="target",
        features=tuple(c for c in frame.columns if c != "target"),
        task="classification",
        profile=(),
        created_at=None,
        size_bytes=0,
        segments=(),
    )


def _model_version(
    version: int, key: str = "", dataset_version: str = "v1", sha256: str = ""
) -> ModelVersion:
    return ModelVersion(
        model=DATASET,
        version=version,
        status=VersionStatus.ready,
        artifact_sha256=sha256,
        artifact_size=0,
        dataset=DATASET,
        dataset_version=dataset_version,
        run=TrainingRun(f"run-{version}", {}, {"cv_accuracy": 0.9}, 0, 1.0, ""),
        aliases=(),
        tags={},
        inputs=(),
        outputs=(),
        created_at=None,
        idempotency_key=key,
        description="",
        validation_passed=None,
        validation_report_json="",
    )


@dataclass
class FakeDatasets:
    latest: str = "v2"
    frame: pd.DataFrame = field(default_factory=lambda: load_breast_cancer(as_frame=True).frame)
    failure: Exception | None = None
    downloads: list[tuple[str, str, int]] = field(default_factory=list)

    async def get_dataset_version(self, dataset: str, version: str = "") -> DatasetVersion:
        if self.failure:
            raise self.failure
        return _dataset_version(version or self.latest, self.frame)

    async def download_dataset(
        self, dataset: str, version: str = "", *, row_start: int = 0, row_end: int = 0, last_batches: int = 0
    ) -> tuple[DatasetVersion, pd.DataFrame]:
        self.downloads.append((dataset, version, last_batches))
        return await self.get_dataset_version(dataset, version), self.frame


@dataclass
class FakeRegistry:
    versions: list[ModelVersion] = field(default_factory=list)
    spec: TrainingSpec | None = None
    spec_failure: Exception | None = None
    champion: int = 0
    asked: list[tuple[str, Any]] = field(default_factory=list)
    created: list[dict[str, Any]] = field(default_factory=list)

    async def get_training_spec(self, model: str, version: int = 0) -> StoredTrainingSpec:
        if self.spec_failure:
            raise self.spec_failure
        if self.spec is None:
            raise NotFound(f"registry: {model} has no training spec")
        return StoredTrainingSpec(model, 1, self.spec.model_dump_json(), "someone", None)

    async def get_version(
        self,
        model: str,
        version: int | None = None,
        *,
        alias: str | None = None,
        idempotency_key: str | None = None,
    ) -> ModelVersion:
        self.asked.append(
            ("version", version) if version else ("alias", alias) if alias else ("key", idempotency_key)
        )
        for candidate in self.versions:
            if (
                candidate.version == version
                or (idempotency_key and candidate.idempotency_key == idempotency_key)
                or (alias == "champion" and candidate.version == self.champion)
            ):
                return candidate
        raise NotFound(f"registry: no such version of {model}")

    async def list_versions(self, model: str, dataset_version: str = "") -> list[ModelVersion]:
        return list(self.versions)

    async def update_version(
        self,
        model: str,
        version: int,
        *,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        delete_tags: Sequence[str] = (),
    ) -> ModelVersion:
        raise AssertionError("not expected in these tests")

    async def create_version(
        self,
        model: str,
        artifact: bytes,
        *,
        dataset: str = "",
        dataset_version: str = "",
        run: TrainingRun | None = None,
        idempotency_key: str = "",
        tags: Mapping[str, str] | None = None,
        description: str = "",
    ) -> ModelVersion:
        self.created.append(
            {"key": idempotency_key, "run": run, "tags": dict(tags or {}), "size": len(artifact)}
        )
        version = replace(
            _model_version(len(self.versions) + 1, idempotency_key, dataset_version),
            run=run or TrainingRun("", {}, {}, 0, 0.0, ""),
        )
        self.versions.append(version)
        return version


@dataclass
class Rig:
    core: TrainerCore
    datasets: FakeDatasets
    registry: FakeRegistry
    trained: list[ModelTrained]
    progress: list[TrainingProgress]


@pytest.fixture
def rig() -> Rig:
    datasets, registry = FakeDatasets(), FakeRegistry()
    trained: list[ModelTrained] = []
    progress: list[TrainingProgress] = []

    async def emit(event: ModelTrained) -> None:
        trained.append(event)

    async def report(event: TrainingProgress) -> None:
        progress.append(event)

    core = TrainerCore(TrainerSettings(), datasets, registry, emit, report)
    return Rig(core, datasets, registry, trained, progress)


def arrived(version: str) -> DataArrived:
    return DataArrived(
        source="test",
        subject=DATASET,
        dataset=DATASET,
        dataset_version=version,
        batch_id="b",
        rows=569,
        target="target",
        task="classification",
    )


def _defaults() -> TrainingSpec:
    settings = TrainerSettings()
    return TrainingSpec(
        seed=settings.seed, cv_folds=settings.cv_folds, holdout_fraction=settings.holdout_fraction
    )


async def test_data_for_a_superseded_version_is_skipped(rig: Rig) -> None:
    await rig.core.on_data_arrived(arrived("v1"))  # v2 is the latest
    assert rig.trained == []
    assert rig.registry.asked == []
    assert rig.datasets.downloads == []


async def test_a_redelivered_event_finds_its_version_by_key_and_only_announces_it(rig: Rig) -> None:
    rig.registry.versions = [_model_version(4, key=f"v2:{_defaults().digest()}", dataset_version="v2")]
    await rig.core.on_data_arrived(arrived("v2"))
    assert [(e.model_version, e.dataset_version, e.training_run) for e in rig.trained] == [(4, "v2", "run-4")]
    assert rig.datasets.downloads == []
    assert rig.registry.created == []


async def test_a_stored_spec_is_the_one_that_trains(rig: Rig) -> None:
    spec = TrainingSpec(seed=11, cv_folds=3, window_batches=2)
    rig.registry.spec = spec
    rig.registry.versions = [_model_version(2, key=f"v2:{spec.digest()}", dataset_version="v2")]
    await rig.core.on_data_arrived(arrived("v2"))
    assert rig.registry.asked == [("key", f"v2:{spec.digest()}")]
    assert [e.model_version for e in rig.trained] == [2]


async def test_the_spec_lookup_failing_is_not_taken_for_no_spec(rig: Rig) -> None:
    rig.registry.spec_failure = Unavailable(
        "registry at r: reading the training spec of bc: connection refused"
    )
    with pytest.raises(Unavailable):
        await rig.core.on_data_arrived(arrived("v2"))
    assert rig.trained == []
    assert rig.registry.asked == []  # no run key was made from default settings


async def test_ingest_unavailable_propagates_as_unavailable(rig: Rig) -> None:
    rig.datasets.failure = Unavailable("ingest at i: describing bc@latest: connection refused")
    with pytest.raises(Unavailable, match="ingest"):
        await rig.core.on_data_arrived(arrived("v2"))
    assert rig.trained == []


def drift(action: str = "retrain") -> DriftDetected:
    return DriftDetected(
        source="test",
        subject=DATASET,
        model=DATASET,
        model_version=1,
        kind="drift",
        summary="mean radius drifted",
        report={},
        action=action,
    )


async def test_drift_with_no_newer_data_than_the_champions_trains_nothing(rig: Rig) -> None:
    rig.registry.versions = [_model_version(1, dataset_version="v2")]
    await rig.core.on_drift_detected(drift())
    assert rig.trained == []
    assert rig.registry.asked == [("version", 1)]
    assert rig.datasets.downloads == []


async def test_drift_whose_action_is_not_retrain_asks_nothing(rig: Rig) -> None:
    await rig.core.on_drift_detected(drift(action="feedback"))
    assert rig.trained == []
    assert rig.registry.asked == []


@pytest.mark.slow
async def test_new_data_trains_registers_and_announces_one_version(rig: Rig) -> None:
    await rig.core.on_data_arrived(arrived("v2"))
    key = f"v2:{_defaults().digest()}"
    assert rig.datasets.downloads == [(DATASET, "v2", 0)]  # no window: every row
    [created] = rig.registry.created
    assert created["key"] == key
    assert created["size"] > 0
    assert created["tags"]["target"] == "target"
    assert "cv_accuracy" in created["run"].metrics
    assert [(e.model_version, e.dataset_version) for e in rig.trained] == [(1, "v2")]
    assert rig.progress[0].stage == "started"
    assert rig.progress[-1].stage == "finished"
    # Redelivered: found by its key, announced again, not trained again.
    await rig.core.on_data_arrived(arrived("v2"))
    assert len(rig.registry.created) == 1
    assert [e.model_version for e in rig.trained] == [1, 1]
