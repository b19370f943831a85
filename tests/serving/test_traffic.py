"""Following a model's traffic split (transport-free): routing by a stable hash of the routing key,
stickiness, explicit versions, loading the canary and shadow before the route that needs them is
installed, refusals, stale revisions, and route swaps under load. Real ONNX models throughout."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from prometheus_client import REGISTRY

from cascade.errors import FailedPrecondition
from cascade.events import ModelPromoted, ModelTrafficChanged, Topics
from cascade.services.serving import kafka_api
from cascade.services.serving.registry_client import RegistryModelSource
from cascade.services.serving.repository import LoadFailure, ModelRepository
from cascade.services.serving.traffic import Route, TrafficSplit, share_of

from .support import MODEL, Dataset, RunningRegistry, TrainedModel
from .traffic_support import SplitSource, TrafficRegistry, narrow_model, running_traffic_registry

NARROW = 3  # loads, but cannot score the champion's 30-feature rows
NOT_ONNX = 4


@pytest.fixture(scope="module")
def narrow(dataset: Dataset) -> bytes:
    return narrow_model(dataset)


@pytest.fixture
def source(models: dict[int, TrainedModel], narrow: bytes) -> SplitSource:
    return SplitSource({1: models[1].onnx, 2: models[2].onnx, NARROW: narrow, NOT_ONNX: b"no"})


@pytest.fixture
async def repository(source: SplitSource) -> ModelRepository:
    repository = ModelRepository(source, keep_versions=1)
    await repository.sync_all()
    return repository


def installed(repository: ModelRepository) -> Route:
    route = repository.route(MODEL)
    assert route is not None
    return route


def within_binomial(hits: int, trials: int, percent: float) -> bool:
    """Whether `hits` of `trials` is a plausible draw at `percent` (within 4.5 standard deviations)."""
    p = percent / 100
    return abs(hits / trials - p) <= 4.5 * math.sqrt(p * (1 - p) / trials)


async def test_a_model_without_a_split_is_answered_by_its_champion(repository: ModelRepository) -> None:
    route = installed(repository)
    assert (route.champion.version, route.canary, route.shadow, route.revision) == (1, None, None, 1)
    assert not route.has_challenger
    routed = repository.routed(MODEL, "", "user-1")
    assert (routed.model.version, routed.role, routed.explicit) == (1, "champion", False)


@pytest.mark.parametrize("percent", [10.0, 37.5])
async def test_the_canary_answers_its_share_of_routing_keys(
    repository: ModelRepository, source: SplitSource, percent: float
) -> None:
    source.set_split(canary_version=2, canary_percent=percent)
    assert await repository.sync_traffic(MODEL)
    trials = 20_000
    by_key = [repository.routed(MODEL, "", f"user-{i}") for i in range(trials)]
    canary = sum(routed.role == "canary" for routed in by_key)
    assert within_binomial(canary, trials, percent), canary
    assert all((r.model.version == 2) == (r.role == "canary") for r in by_key)
    # Requests with neither a routing key nor an id are split at random, in the same proportion.
    at_random = sum(repository.routed(MODEL).role == "canary" for _ in range(trials))
    assert within_binomial(at_random, trials, percent), at_random


async def test_a_routing_key_sticks_to_its_side_and_a_larger_share_only_adds_keys(
    repository: ModelRepository, source: SplitSource
) -> None:
    source.set_split(canary_version=2, canary_percent=10)
    await repository.sync_traffic(MODEL)
    keys = [f"session-{i}" for i in range(2000)]
    first = {key: repository.routed(MODEL, "", key).model.version for key in keys}
    assert all(repository.routed(MODEL, "", key).model.version == first[key] for key in keys)
    # The hash is the same in every process: share_of is a pure function of model and key.
    assert all((share_of(MODEL, key) < 10) == (first[key] == 2) for key in keys)
    source.set_split(canary_percent=50)
    await repository.sync_traffic(MODEL)
    wider = {key: repository.routed(MODEL, "", key).model.version for key in keys}
    assert all(wider[key] == 2 for key in keys if first[key] == 2)
    assert sum(v == 2 for v in wider.values()) > sum(v == 2 for v in first.values())


async def test_an_explicit_version_bypasses_the_split(
    repository: ModelRepository, source: SplitSource
) -> None:
    source.set_split(canary_version=2, canary_percent=100)
    await repository.sync_traffic(MODEL)
    assert repository.routed(MODEL, "", "anyone").model.version == 2
    pinned = repository.routed(MODEL, "1", "anyone")
    assert (pinned.model.version, pinned.role, pinned.explicit) == (1, "champion", True)
    named_canary = repository.routed(MODEL, "2")
    assert (named_canary.model.version, named_canary.role, named_canary.explicit) == (2, "canary", True)


async def test_the_canary_and_shadow_load_before_their_route_and_stay_loaded(
    repository: ModelRepository,
    source: SplitSource,
    models: dict[int, TrainedModel],
    dataset: Dataset,
) -> None:
    source.set_split(canary_version=2, canary_percent=20, shadow_version=NARROW, shadow_percent=50)
    assert await repository.sync_traffic(MODEL)
    route = installed(repository)
    assert route.canary is not None and route.shadow is not None
    assert (route.canary.version, route.canary_percent, route.shadow.version, route.shadow_percent) == (
        2,
        20,
        NARROW,
        50,
    )
    assert route.revision == source.split.revision and route.has_challenger
    gauge = REGISTRY.get_sample_value
    assert gauge("cascade_serving_traffic_revision", {"model": MODEL}) == route.revision
    assert gauge("cascade_serving_traffic_percent", {"model": MODEL, "role": "canary"}) == 20
    assert gauge("cascade_serving_traffic_percent", {"model": MODEL, "role": "shadow"}) == 50
    # keep_versions is 1, yet all three stay loaded while the route needs them.
    assert repository.versions(MODEL) == [1, 2, NARROW]
    labels, _ = route.canary.predict({"input": dataset.rows[:4]})
    np.testing.assert_array_equal(labels, models[2].labels(dataset.rows[:4]))
    # The same split again changes nothing and downloads nothing.
    downloads = list(source.downloads)
    assert not await repository.sync_traffic(MODEL)
    assert source.downloads == downloads
    # Clearing the split frees the challengers (beyond keep_versions).
    source.set_split(canary_version=0, canary_percent=0, shadow_version=0, shadow_percent=0)
    assert await repository.sync_traffic(MODEL)
    assert not installed(repository).has_challenger
    assert repository.versions(MODEL) == [1]


async def test_a_canary_that_cannot_load_is_refused_and_the_old_route_stays(
    models: dict[int, TrainedModel], source: SplitSource
) -> None:
    refused: list[LoadFailure] = []

    async def on_load_failed(failure: LoadFailure) -> None:
        refused.append(failure)

    repository = ModelRepository(source, on_load_failed=on_load_failed)
    await repository.sync_all()
    source.set_split(canary_version=2, canary_percent=10)
    await repository.sync_traffic(MODEL)
    before = installed(repository)
    source.set_split(canary_version=NOT_ONNX, canary_percent=30, shadow_version=2, shadow_percent=100)
    with pytest.raises(FailedPrecondition, match=f"version {NOT_ONNX} cannot be served"):
        await repository.sync_traffic(MODEL)
    assert installed(repository) is before  # nothing half-installed: not even the good shadow
    (failure,) = refused
    assert (failure.version, failure.reason, failure.serving_version) == (NOT_ONNX, "invalid_model", 1)
    assert repository.failures[MODEL] == failure
    # A later split whose versions load replaces it, and the refusal no longer stands.
    source.set_split(canary_version=2, canary_percent=30, shadow_version=0, shadow_percent=0)
    assert await repository.sync_traffic(MODEL)
    assert installed(repository).canary_percent == 30


async def test_a_canary_the_registry_no_longer_has_is_refused(
    repository: ModelRepository, source: SplitSource
) -> None:
    source.set_split(canary_version=99, canary_percent=10)
    with pytest.raises(FailedPrecondition, match="version 99 cannot be served"):
        await repository.sync_traffic(MODEL)
    assert repository.failures[MODEL].reason == "download_refused"
    assert not installed(repository).has_challenger


async def test_an_older_revision_is_ignored(repository: ModelRepository, source: SplitSource) -> None:
    source.set_split(canary_version=2, canary_percent=25, revision=7)
    assert await repository.sync_traffic(MODEL)
    source.set_split(canary_version=0, canary_percent=0, revision=6)  # a stale read, say
    assert not await repository.sync_traffic(MODEL)
    route = installed(repository)
    assert (route.revision, route.canary_percent) == (7, 25)


async def test_promoting_the_canary_swaps_without_a_download_and_ends_its_role(
    repository: ModelRepository, source: SplitSource
) -> None:
    source.set_split(canary_version=2, canary_percent=50)
    await repository.sync_traffic(MODEL)
    downloads = len(source.downloads)
    source.set_split(champion_version=2, canary_version=0, canary_percent=0)  # the registry's promotion
    assert await repository.sync_champion(MODEL)
    route = installed(repository)
    assert (route.champion.version, route.canary) == (2, None)  # its canary role ended with the swap
    assert await repository.sync_traffic(MODEL)  # the new revision
    assert installed(repository).revision == source.split.revision
    assert len(source.downloads) == downloads
    assert repository.resolve(MODEL).version == 2


async def test_a_split_naming_a_new_champion_follows_the_champion_first(
    repository: ModelRepository, source: SplitSource
) -> None:
    source.set_split(champion_version=2, shadow_version=1, shadow_percent=100)
    assert await repository.sync_traffic(MODEL)
    route = installed(repository)
    assert route.champion.version == 2 and route.shadow is not None and route.shadow.version == 1


def artifact_of(version: int) -> int:
    return 1 if version % 2 else 2


async def test_route_swaps_under_load_fail_no_request(
    models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    """Closed-loop clients route and score while the split changes 24 times, two of the changes
    naming a version that cannot load: every request is answered by the version it was routed to,
    with that version's answer."""
    artifacts = {version: models[artifact_of(version)].onnx for version in range(1, 30)}
    artifacts[12] = b"corrupt"
    artifacts[17] = b"not onnx either"
    source = SplitSource(artifacts)
    repository = ModelRepository(source, keep_versions=2)
    await repository.sync_all()
    done = asyncio.Event()
    answers: list[tuple[int, int, np.ndarray]] = []
    failures: list[BaseException] = []

    async def keep_asking(client: int) -> None:
        start = client * 11
        while not done.is_set():
            rows = dataset.rows[start : start + 1 + len(answers) % 7]
            try:
                routed = repository.routed(MODEL, "", f"client-{client}-{len(answers)}")
                _, probabilities = routed.model.predict({"input": rows})
                answers.append((start, routed.model.version, probabilities))
            except Exception as exc:
                failures.append(exc)
            await asyncio.sleep(0)

    clients = [asyncio.create_task(keep_asking(client)) for client in range(4)]
    refused = 0
    for change, canary in enumerate(range(2, 26)):
        source.set_split(canary_version=canary, canary_percent=10 + (change * 7) % 90)
        try:
            await repository.sync_traffic(MODEL)
        except FailedPrecondition:
            refused += 1
        await asyncio.sleep(0.01)
    done.set()
    await asyncio.gather(*clients)

    assert failures == []
    assert refused == 2
    versions = {version for _, version, _ in answers}
    assert 12 not in versions and 17 not in versions
    assert len(versions) >= 10, sorted(versions)  # the load overlapped the swaps
    for start, version, probabilities in answers:
        rows = dataset.rows[start : start + len(probabilities)]
        np.testing.assert_allclose(probabilities, models[artifact_of(version)].probabilities(rows), atol=1e-5)


async def test_the_registry_source_reads_the_split_over_grpc(
    models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    async with running_traffic_registry(models, dataset) as registry:
        assert isinstance(registry.fake, TrafficRegistry)
        revision = registry.fake.set_traffic(MODEL, canary=2, canary_percent=12.5, shadow=1, shadow_percent=0)
        source = RegistryModelSource(registry.address, timeout_seconds=5)
        try:
            assert await source.traffic(MODEL) == TrafficSplit(MODEL, 1, 2, 12.5, 1, 0.0, revision)
            repository = ModelRepository(source)
            await repository.sync_all()
            route = installed(repository)
            assert route.canary is not None and route.canary.version == 2 and route.shadow is None
            assert (await source.version(MODEL, 2)).version == 2
        finally:
            await source.close()


async def test_a_registry_without_splits_serves_the_champion_alone(registry: RunningRegistry) -> None:
    source = RegistryModelSource(registry.address, timeout_seconds=5)  # its fake has no GetTraffic
    try:
        assert await source.traffic(MODEL) == TrafficSplit(MODEL)
        repository = ModelRepository(source)
        await repository.sync_all()
        assert installed(repository).champion.version == 1 and not installed(repository).has_challenger
    finally:
        await source.close()


def traffic_changed(revision: int) -> ModelTrafficChanged:
    return ModelTrafficChanged(
        source="tests", subject=MODEL, model=MODEL, revision=revision, action="set", actor="tests"
    )


async def test_traffic_events_make_the_replica_reread_and_install_the_split(
    repository: ModelRepository, source: SplitSource
) -> None:
    topics = Topics("test-traffic")
    broker = KafkaBroker()
    kafka_api.register(broker, repository, topics, "replica-a")
    changed = topics.for_event(ModelTrafficChanged)
    async with TestKafkaBroker(broker) as test_broker:
        split = source.set_split(canary_version=2, canary_percent=30)
        await test_broker.publish(traffic_changed(split.revision), topic=changed)
        assert installed(repository).canary_percent == 30
        # A version that cannot load is reported, not redelivered: the old split keeps routing.
        split = source.set_split(canary_version=NOT_ONNX, canary_percent=60)
        await test_broker.publish(traffic_changed(split.revision), topic=changed)
        assert installed(repository).canary_percent == 30
        assert repository.failures[MODEL].version == NOT_ONNX
        # A promotion ends the rollout: the champion and the split are both re-read.
        source.set_split(champion_version=2, canary_version=0, canary_percent=0)
        promoted = ModelPromoted(source="tests", subject=MODEL, model=MODEL, model_version=2, actor="tests")
        await test_broker.publish(promoted, topic=topics.for_event(ModelPromoted))
        route = installed(repository)
        assert (route.champion.version, route.canary, route.revision) == (2, None, source.split.revision)
