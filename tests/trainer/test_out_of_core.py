"""The trainer's out-of-core path (services/trainer/out_of_core.py): a version over
out_of_core_rows is spooled to a Parquet file and read segment by segment, never downloaded as a
frame; only the incremental families are fitted, the run says so, the export passes the parity
gate on held-out rows, and a spec of whole-frame families only is refused with the reason."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.datasets import make_classification, make_regression

from cascade.client.records import DatasetVersion
from cascade.errors import FailedPrecondition
from cascade.events import ModelTrained, TrainingProgress
from cascade.services.trainer.core import TrainerCore
from cascade.services.trainer.out_of_core import OUT_OF_CORE_TAG, train_out_of_core
from cascade.services.trainer.segments import split_segments
from cascade.services.trainer.settings import TrainerSettings
from cascade.splits import holdout_mask
from cascade.training_spec import TrainingSpec
from tests.trainer.test_core_with_fakes import FakeDatasets, FakeRegistry, arrived

FEATURES = [f"f{i}" for i in range(8)]
SEGMENT = 500  # rows a segment here: the files below are read in a dozen pieces or more


def _classification(rows: int = 6_000) -> pd.DataFrame:
    x, y = make_classification(n_samples=rows, n_features=len(FEATURES), n_informative=5, random_state=4)
    return pd.DataFrame(x, columns=FEATURES).assign(target=y)


def _parquet(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "version.parquet"
    frame.to_parquet(path, row_group_size=SEGMENT)
    return path


def _rows(path: Path, part: str) -> pd.DataFrame:
    pieces = [
        pd.DataFrame(x, columns=FEATURES).assign(target=y)
        for x, y in split_segments(path, FEATURES, "target", 0.2, part, SEGMENT)()  # type: ignore[arg-type]
    ]
    return pd.concat(pieces, ignore_index=True)


def test_the_parts_of_a_file_are_the_whole_frame_split(tmp_path: Path) -> None:
    frame = _classification()
    path = _parquet(tmp_path, frame)
    held_out = frame[holdout_mask(frame[[*FEATURES, "target"]], 0.2)]
    assert len(_rows(path, "holdout")) == len(held_out) > 0  # the rows the validator holds out
    train, fit, select = (_rows(path, part) for part in ("train", "fit", "select"))
    assert len(train) == len(frame) - len(held_out)
    assert len(fit) + len(select) == len(train) and len(select) > 0
    assert not set(map(tuple, select.to_numpy())) & set(map(tuple, fit.to_numpy()))


def test_a_classifier_is_fitted_segment_by_segment_and_passes_parity(tmp_path: Path) -> None:
    frame = _classification()
    path = _parquet(tmp_path, frame)
    spec = TrainingSpec(max_trials=2)  # the default families: only logistic regression learns this way
    trials: list[dict[str, object]] = []
    result = train_out_of_core(path, FEATURES, "target", "classification", spec, trials.append, None, SEGMENT)

    assert result.params["estimator"] == "logistic_regression"
    assert "logistic_regression fitted segment by segment" in result.out_of_core
    assert [t["estimator"] for t in result.trials] == ["logistic_regression"] * 2
    assert all(t["out_of_core"] for t in result.trials) and len(trials) == 2
    assert result.metrics["holdout_accuracy"] > 0.75
    # The artifact answers as the model did on the held-out reference rows it carries.
    session = ort.InferenceSession(result.onnx_bytes, providers=["CPUExecutionProvider"])
    reference = result.parity_reference
    labels, probabilities = session.run(None, {"input": np.asarray(reference["rows"], dtype=np.float32)})
    np.testing.assert_allclose(probabilities, reference["outputs"], atol=1e-4)
    assert labels.tolist() == [int(v[0]) for v in reference["labels"]]


def test_a_regression_chooses_among_its_incremental_families(tmp_path: Path) -> None:
    x, y = make_regression(n_samples=4_000, n_features=len(FEATURES), noise=3.0, random_state=2)
    path = _parquet(tmp_path, pd.DataFrame(x, columns=FEATURES).assign(target=y))
    spec = TrainingSpec(estimators=["ridge", "linear_regression", "random_forest"], max_trials=3)
    result = train_out_of_core(path, FEATURES, "target", "regression", spec, segment_rows=SEGMENT)
    # Interleaved: the first ridge point, linear regression's one, the second ridge point; no forest.
    assert [t["estimator"] for t in result.trials] == ["ridge", "linear_regression", "ridge"]
    assert result.metrics["holdout_r2"] > 0.95


def test_a_spec_of_whole_frame_families_only_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = _parquet(tmp_path, _classification(1_000))
    spec = TrainingSpec(estimators=["random_forest", "gradient_boosting"])
    with pytest.raises(FailedPrecondition, match=r"cannot be fitted segment by segment.*logistic_regression"):
        train_out_of_core(path, FEATURES, "target", "classification", spec, segment_rows=SEGMENT)


@dataclass
class SpoolingDatasets(FakeDatasets):
    """Ingest that serves the version as a Parquet file and refuses to hand it over as a frame."""

    spooled: list[Path] = field(default_factory=list)

    async def download_dataset(
        self, dataset: str, version: str = "", *, row_start: int = 0, row_end: int = 0, last_batches: int = 0
    ) -> tuple[DatasetVersion, pd.DataFrame]:
        raise AssertionError("an out-of-core run must not download the version as a frame")

    async def download_dataset_to_file(
        self, dataset: str, version: str, path: Path, *, last_batches: int = 0
    ) -> int:
        self.frame.to_parquet(path, row_group_size=SEGMENT)
        self.spooled.append(path)
        return await asyncio.to_thread(lambda: path.stat().st_size)


async def test_the_service_path_trains_a_large_version_out_of_core(tmp_path: Path) -> None:
    datasets = SpoolingDatasets(frame=_classification(3_000))
    registry = FakeRegistry(spec=TrainingSpec(max_trials=2))
    progress: list[TrainingProgress] = []
    trained: list[ModelTrained] = []

    async def report(event: TrainingProgress) -> None:
        progress.append(event)

    async def emit(event: ModelTrained) -> None:
        trained.append(event)

    settings = TrainerSettings(data_dir=tmp_path, out_of_core_rows=2_000, attribution_max_evaluations=1)
    await TrainerCore(settings, datasets, registry, emit, report).on_data_arrived(arrived("v2"))

    [created] = registry.created
    assert created["run"].params["estimator"] == "logistic_regression"
    assert "segment by segment" in created["tags"][OUT_OF_CORE_TAG]
    assert len(json.loads(created["tags"]["trials"])) == 2
    started = next(p for p in progress if p.stage == "started")
    assert "out of core" in (started.message or "") and "logistic_regression" in (started.message or "")
    assert [event.model_version for event in trained] == [1]
    [spool] = datasets.spooled
    assert spool.parent == tmp_path / "spool" and not spool.exists()  # the spool file is removed after


async def test_a_version_under_the_threshold_still_trains_in_memory(tmp_path: Path) -> None:
    datasets, registry = FakeDatasets(), FakeRegistry(spec=TrainingSpec(max_trials=2))

    async def ignore(event: object) -> None:
        return None

    settings = TrainerSettings(data_dir=tmp_path, attribution_max_evaluations=1)
    await TrainerCore(settings, datasets, registry, ignore, ignore).on_data_arrived(arrived("v2"))
    [created] = registry.created
    assert OUT_OF_CORE_TAG not in created["tags"] and len(datasets.downloads) == 1
