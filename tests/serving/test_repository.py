"""The transport-free model repository: load, hot swap, resolve, failed loads, syncing champions."""

from __future__ import annotations

import asyncio
import hashlib

import numpy as np
import pytest
from prometheus_client import REGISTRY
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from cascade.errors import FailedPrecondition, NotFound, Unavailable
from cascade.services.serving.repository import LoadedModel, LoadFailure, ModelRef, ModelRepository
from cascade.services.serving.traffic import TrafficSplit

from .support import MODEL, Dataset, TrainedModel


class FakeSource:
    """An in-memory `ModelSource`; `down` makes it unreachable for that many calls."""

    def __init__(self, artifacts: dict[int, bytes], champion: int) -> None:
        self.artifacts = artifacts
        self.champion_version = champion
        self.down = 0
        self.refuses_listing = False
        self.downloads = 0

    def _reach(self) -> None:
        if self.down:
            self.down -= 1
            raise Unavailable("registry down")

    async def models_with_champion(self) -> list[str]:
        self._reach()
        if self.refuses_listing:
            raise FailedPrecondition("UNIMPLEMENTED")
        return [MODEL]

    async def champion(self, model: str) -> ModelRef:
        self._reach()
        if model != MODEL:
            raise NotFound(f"no model {model}")
        data = self.artifacts[self.champion_version]
        return ModelRef(model, self.champion_version, hashlib.sha256(data).hexdigest(), ("a", "b"))

    async def traffic(self, model: str) -> TrafficSplit:
        return TrafficSplit(model)  # no split: the champion alias alone decides

    async def artifact(self, ref: ModelRef) -> bytes:
        self._reach()
        self.downloads += 1
        await asyncio.sleep(0)
        return self.artifacts[ref.version]


@pytest.fixture
def source(models: dict[int, TrainedModel]) -> FakeSource:
    return FakeSource({1: models[1].onnx, 2: models[2].onnx, 3: models[1].onnx, 4: b"not onnx"}, champion=1)


@pytest.fixture
def repository(source: FakeSource) -> ModelRepository:
    return ModelRepository(source, keep_versions=2)


async def test_load_reads_the_metadata_from_the_session(
    repository: ModelRepository, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    model = await repository.load(MODEL, 1, models[1].onnx, features=dataset.features)
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [("input", "FP32", (-1, 30))]
    assert [(s.name, s.datatype, s.shape) for s in model.outputs] == [
        ("label", "INT64", (-1,)),
        ("probabilities", "FP32", (-1, 2)),
    ]
    assert model.features == tuple(dataset.features)
    labels, probabilities = model.predict({"input": dataset.rows[:5]})
    np.testing.assert_array_equal(labels, models[1].labels(dataset.rows[:5]))
    np.testing.assert_allclose(probabilities, models[1].probabilities(dataset.rows[:5]), atol=1e-5)


async def test_resolve(repository: ModelRepository, models: dict[int, TrainedModel]) -> None:
    await repository.load(MODEL, 1, models[1].onnx)
    await repository.load(MODEL, 2, models[2].onnx)
    assert repository.resolve(MODEL).version == 2
    assert repository.resolve(MODEL, "1").version == 1
    assert repository.resolve(MODEL, "2").version == 2
    with pytest.raises(NotFound, match=r"no loaded version '3'; loaded versions: \[1, 2\]"):
        repository.resolve(MODEL, "3")
    with pytest.raises(NotFound, match="no loaded version 'champion'"):
        repository.resolve(MODEL, "champion")
    with pytest.raises(NotFound, match=r"model 'other' is not loaded; loaded models: \['cancer'\]"):
        repository.resolve("other")


async def test_swap_leaves_in_flight_requests_on_the_old_session(
    repository: ModelRepository, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    old = await repository.load(MODEL, 1, models[1].onnx)
    in_flight = repository.resolve(MODEL)  # a request resolved before the swap...
    await repository.load(MODEL, 2, models[2].onnx)
    assert repository.resolve(MODEL).version == 2
    assert in_flight is old  # ...keeps its own model, whose session still answers
    _, probabilities = in_flight.predict({"input": dataset.rows[:3]})
    np.testing.assert_allclose(probabilities, models[1].probabilities(dataset.rows[:3]), atol=1e-5)


async def test_failed_load_keeps_the_old_version(
    repository: ModelRepository, models: dict[int, TrainedModel]
) -> None:
    await repository.load(MODEL, 1, models[1].onnx)
    with pytest.raises(FailedPrecondition, match="model cancer version 2 cannot be served"):
        await repository.load(MODEL, 2, b"\x08\x07garbage")
    assert repository.resolve(MODEL).version == 1
    assert repository.versions(MODEL) == [1]


async def test_only_the_latest_versions_stay_loaded(
    repository: ModelRepository, models: dict[int, TrainedModel]
) -> None:
    for version in (1, 2, 3):
        await repository.load(MODEL, version, models[1 + (version % 2 == 0)].onnx)
    assert repository.versions(MODEL) == [2, 3]
    assert repository.resolve(MODEL).version == 3


async def test_sync_champion_is_idempotent(repository: ModelRepository, source: FakeSource) -> None:
    assert await repository.sync_champion(MODEL)
    assert not await repository.sync_champion(MODEL)
    assert source.downloads == 1
    assert repository.resolve(MODEL).features == ("a", "b")


async def test_concurrent_syncs_load_once(repository: ModelRepository, source: FakeSource) -> None:
    changed = await asyncio.gather(*(repository.sync_champion(MODEL) for _ in range(5)))
    assert sorted(changed) == [False] * 4 + [True]
    assert source.downloads == 1


async def test_rollback_to_a_loaded_version_downloads_nothing(
    repository: ModelRepository, source: FakeSource
) -> None:
    await repository.sync_champion(MODEL)
    source.champion_version = 2
    await repository.sync_champion(MODEL)
    source.champion_version = 1
    assert await repository.sync_champion(MODEL)
    assert repository.resolve(MODEL).version == 1
    assert source.downloads == 2


async def test_sync_keeps_the_old_champion_when_the_new_one_fails(
    repository: ModelRepository, source: FakeSource
) -> None:
    await repository.sync_champion(MODEL)
    source.champion_version = 4  # not an ONNX file
    with pytest.raises(FailedPrecondition):
        await repository.sync_champion(MODEL)
    assert repository.resolve(MODEL).version == 1


async def test_sync_raises_unavailable_while_the_registry_is_down(
    repository: ModelRepository, source: FakeSource
) -> None:
    source.down = 1
    with pytest.raises(Unavailable):
        await repository.sync_champion(MODEL)
    assert not repository.is_ready(MODEL)


async def test_sync_all_until_done_waits_out_the_registry(
    repository: ModelRepository, source: FakeSource
) -> None:
    source.down = 3
    await asyncio.wait_for(repository.sync_all_until_done(first_delay=0.01, max_delay=0.02), 5)
    assert repository.resolve(MODEL).version == 1
    assert source.down == 0


async def test_sync_all_until_done_gives_up_on_a_permanent_error(
    repository: ModelRepository, source: FakeSource
) -> None:
    source.refuses_listing = True
    await asyncio.wait_for(repository.sync_all_until_done(first_delay=0.01), 5)  # returns, no raise
    assert repository.models() == []


def failed_loads(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "cascade_serving_failed_loads_total", {"model": MODEL, "reason": reason}
    )
    return value or 0.0


class CorruptingSource(FakeSource):
    """Refuses the download of one version as the registry client does on a digest mismatch."""

    corrupt: int = 0

    async def artifact(self, ref: ModelRef) -> bytes:
        if ref.version == self.corrupt:
            raise FailedPrecondition(f"artifact of {ref.model} version {ref.version} has sha256 ...; refused")
        return await super().artifact(ref)


def zipmap_model(dataset: Dataset) -> bytes:
    """A valid ONNX whose probabilities are a sequence of maps, which serving cannot answer with."""
    labels = (dataset.rows[:, 0] > np.median(dataset.rows[:, 0])).astype(int)
    estimator = LogisticRegression(max_iter=1000).fit(dataset.rows, labels)
    onnx = convert_sklearn(estimator, initial_types=[("input", FloatTensorType([None, 30]))])
    return bytes(onnx.SerializeToString())


@pytest.mark.parametrize("reason", ["digest_mismatch", "invalid_model", "incompatible"])
async def test_refused_versions_are_counted_reported_and_leave_the_champion(
    models: dict[int, TrainedModel], dataset: Dataset, reason: str
) -> None:
    source = CorruptingSource({1: models[1].onnx, 2: b"not onnx", 3: zipmap_model(dataset)}, champion=1)
    source.corrupt = 1 if reason == "digest_mismatch" else 0
    reported: list[LoadFailure] = []
    loaded: list[int] = []

    async def on_load_failed(failure: LoadFailure) -> None:
        reported.append(failure)

    async def on_loaded(model: LoadedModel) -> None:
        loaded.append(model.version)

    repository = ModelRepository(source, on_loaded=on_loaded, on_load_failed=on_load_failed)
    await repository.load(MODEL, 9, models[2].onnx)  # the champion that must keep serving
    source.champion_version = {"digest_mismatch": 1, "invalid_model": 2, "incompatible": 3}[reason]
    before = failed_loads(reason)
    with pytest.raises(FailedPrecondition):
        await repository.sync_champion(MODEL)

    assert repository.resolve(MODEL).version == 9
    assert failed_loads(reason) == before + 1
    (failure,) = reported
    assert (failure.model, failure.version, failure.reason, failure.serving_version) == (
        MODEL,
        source.champion_version,
        reason,
        9,
    )
    assert repository.failures[MODEL] == failure
    assert loaded == [9]
    # A later good version loads, and the failure is cleared.
    source.champion_version, source.corrupt = 1, 0
    source.artifacts[1] = models[1].onnx
    await repository.sync_champion(MODEL)
    assert loaded == [9, 1] and MODEL not in repository.failures


async def test_a_failing_report_does_not_break_the_load(models: dict[int, TrainedModel]) -> None:
    async def broken(failure: LoadFailure) -> None:
        raise ConnectionError("kafka down")

    repository = ModelRepository(FakeSource({1: b"garbage"}, champion=1), on_load_failed=broken)
    with pytest.raises(FailedPrecondition):  # the refusal itself, not the reporter's error
        await repository.sync_champion(MODEL)
    assert repository.failures[MODEL].reason == "invalid_model"
