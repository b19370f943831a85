"""Shadow scoring, canary mirroring and live stats (transport-free): comparisons scored off the answer
path and batched as PredictionsCompared, drops counted when the queue is full, a broken shadow counted
as challenger failures, and the shapes of LiveTrafficReported. Real ONNX models throughout."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import threading
from collections.abc import Mapping

import numpy as np
import pytest
from prometheus_client import REGISTRY

from cascade.errors import InvalidArgument, NotFound, Unavailable
from cascade.events import LATENCY_BOUNDS_MS, LiveTrafficReported, PredictionsCompared
from cascade.services.serving.comparisons import MAX_ROWS_PER_EVENT, Comparisons
from cascade.services.serving.live_stats import LiveStats, LiveStatsReporter, fails_the_version
from cascade.services.serving.repository import Array, LoadedModel, ModelRejectedInput, ModelRepository
from cascade.services.serving.traffic import Role, Route, Routed

from .support import MODEL, Dataset, TrainedModel
from .traffic_support import SplitSource, narrow_model

NARROW = 3


@pytest.fixture(scope="module")
async def loaded(models: dict[int, TrainedModel], dataset: Dataset) -> dict[int, LoadedModel]:
    """Versions 1 and 2 (answers that differ), and 3, which cannot score 30-feature rows."""
    source = SplitSource({1: models[1].onnx, 2: models[2].onnx, NARROW: narrow_model(dataset)})
    repository = ModelRepository(source)
    source.set_split(shadow_version=NARROW, shadow_percent=100, canary_version=2, canary_percent=10)
    await repository.sync_all()
    route = repository.route(MODEL)
    assert route is not None and route.canary is not None and route.shadow is not None
    return {1: route.champion, 2: route.canary, NARROW: route.shadow}


class Published:
    def __init__(self) -> None:
        self.compared: list[PredictionsCompared] = []
        self.live: list[LiveTrafficReported] = []

    async def comparison(self, event: PredictionsCompared) -> None:
        event.encoded()  # within its size bound
        self.compared.append(event)

    async def live_stats(self, event: LiveTrafficReported) -> None:
        event.encoded()
        self.live.append(event)


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
async def comparisons(published: Published) -> Comparisons:
    comparisons = Comparisons(published.comparison, LiveStats(), "replica-a", queue_size=5000, max_rows=100)
    comparisons.start()
    yield comparisons
    await comparisons.stop()


def answer(
    model: LoadedModel, rows: np.ndarray, role: Role, route: Route, request_id: str
) -> tuple[Routed, str, dict[str, np.ndarray], np.ndarray]:
    """What the request path hands `offer`: the routed answer, its id, feeds and first output."""
    labels, _ = model.predict({"input": rows})
    return Routed(model, role, route), request_id, {"input": rows}, labels


def metric(name: str, role: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": MODEL, "role": role}) or 0.0


async def test_the_shadow_scores_champion_answers_and_both_outputs_are_compared(
    loaded: dict[int, LoadedModel],
    comparisons: Comparisons,
    published: Published,
    models: dict[int, TrainedModel],
    dataset: Dataset,
) -> None:
    route = Route(loaded[1], shadow=loaded[2], shadow_percent=100, revision=4)
    for request in range(10):
        rows = dataset.rows[request * 3 : request * 3 + 3]
        comparisons.offer(*answer(loaded[1], rows, "champion", route, f"r{request}"))
    await comparisons.drain()
    assert published.compared == []  # batched until the flush (or 500 rows)
    await comparisons.flush()

    (event,) = published.compared
    assert (event.model, event.instance, event.challenger_role) == (MODEL, "replica-a", "shadow")
    assert (event.champion_version, event.challenger_version, event.challenger_failures) == (1, 2, 0)
    assert event.request_ids == [f"r{request}" for request in range(10) for _ in range(3)]
    rows = dataset.rows[:30]
    assert event.champion_outputs == models[1].labels(rows).astype(float).tolist()
    assert event.challenger_outputs == models[2].labels(rows).astype(float).tolist()
    (shadow,) = comparisons.stats.drain("replica-a", 2.0)[0].versions
    assert (shadow.version, shadow.role, shadow.requests, shadow.failures) == (2, "shadow", 10, 0)


async def test_a_canary_answer_is_mirrored_by_the_champion(
    loaded: dict[int, LoadedModel],
    comparisons: Comparisons,
    published: Published,
    models: dict[int, TrainedModel],
    dataset: Dataset,
) -> None:
    route = Route(loaded[1], canary=loaded[2], canary_percent=50, revision=5)
    rows = dataset.rows[40:48]
    comparisons.offer(*answer(loaded[2], rows, "canary", route, "canary-answered"))
    comparisons.offer(*answer(loaded[1], rows, "champion", route, "champion-answered"))  # no shadow
    await comparisons.drain()
    await comparisons.flush()

    (event,) = published.compared
    assert (event.challenger_role, event.champion_version, event.challenger_version) == ("canary", 1, 2)
    assert event.request_ids == ["canary-answered"] * 8
    assert event.champion_outputs == models[1].labels(rows).astype(float).tolist()
    assert event.challenger_outputs == models[2].labels(rows).astype(float).tolist()
    assert comparisons.stats.drain("replica-a", 2.0) == []  # the mirror is no shadow request


async def test_a_broken_shadow_counts_challenger_failures(
    loaded: dict[int, LoadedModel], comparisons: Comparisons, published: Published, dataset: Dataset
) -> None:
    route = Route(loaded[1], shadow=loaded[NARROW], shadow_percent=100, revision=6)
    before = metric("cascade_serving_shadow_failures_total", "shadow")
    for request in range(4):
        comparisons.offer(*answer(loaded[1], dataset.rows[:5], "champion", route, f"r{request}"))
    await comparisons.drain()
    await comparisons.flush()

    (event,) = published.compared
    assert (event.challenger_version, event.challenger_failures, event.request_ids) == (NARROW, 4, [])
    assert metric("cascade_serving_shadow_failures_total", "shadow") == before + 4
    (report,) = comparisons.stats.drain("replica-a", 2.0)
    (shadow,) = report.versions
    assert (shadow.version, shadow.role, shadow.requests, shadow.failures) == (NARROW, "shadow", 4, 4)


async def test_comparisons_are_dropped_and_counted_when_the_queue_is_full(
    loaded: dict[int, LoadedModel], published: Published, dataset: Dataset
) -> None:
    stats = LiveStats()
    comparisons = Comparisons(published.comparison, stats, "replica-a", queue_size=2)  # not started
    route = Route(loaded[1], shadow=loaded[2], shadow_percent=100, revision=8)
    before = metric("cascade_serving_shadow_dropped_total", "shadow")
    for request in range(5):
        comparisons.offer(
            *answer(loaded[1], dataset.rows[:2], "champion", route, f"r{request}")
        )  # never blocks
    assert metric("cascade_serving_shadow_dropped_total", "shadow") == before + 3
    (report,) = stats.drain("replica-a", 2.0)
    assert (report.model, report.traffic_revision, report.shadow_dropped, report.versions) == (
        MODEL,
        8,
        3,
        [],
    )


async def test_large_batches_are_sampled_and_events_hold_at_most_500_rows(
    loaded: dict[int, LoadedModel], published: Published, dataset: Dataset
) -> None:
    comparisons = Comparisons(published.comparison, LiveStats(), "replica-a", queue_size=100, max_rows=90)
    comparisons.start()
    try:
        route = Route(loaded[1], shadow=loaded[2], shadow_percent=100, revision=9)
        for request in range(7):  # 7 requests of 200 rows, 90 of each compared: 630 rows
            comparisons.offer(*answer(loaded[1], dataset.rows[:200], "champion", route, f"big-{request}"))
        await comparisons.drain()
        assert [len(e.request_ids) for e in published.compared] == [MAX_ROWS_PER_EVENT]  # a full batch goes
        await comparisons.flush()
    finally:
        await comparisons.stop()
    assert [len(e.request_ids) for e in published.compared] == [500, 130]
    assert all(
        len(e.champion_outputs) == len(e.challenger_outputs) == len(e.request_ids) for e in published.compared
    )


async def test_shadow_percent_samples_champion_answers_and_explicit_requests_are_not_compared(
    loaded: dict[int, LoadedModel], comparisons: Comparisons, published: Published, dataset: Dataset
) -> None:
    route = Route(loaded[1], shadow=loaded[2], shadow_percent=25, revision=10)
    trials = 2000
    for request in range(trials):
        comparisons.offer(*answer(loaded[1], dataset.rows[:1], "champion", route, f"r{request}"))
    explicit = Routed(loaded[1], "champion", route, explicit=True)
    comparisons.offer(explicit, "pinned", {"input": dataset.rows[:1]}, np.zeros(1))
    await comparisons.drain()
    await comparisons.flush()
    compared = sum(len(event.request_ids) for event in published.compared)
    assert abs(compared / trials - 0.25) < 4.5 * (0.25 * 0.75 / trials) ** 0.5, compared
    assert all("pinned" not in event.request_ids for event in published.compared)


def test_live_stats_report_each_version_and_role_per_revision() -> None:
    stats = LiveStats()
    for seconds in (0.0001, 0.0003, 0.003, 0.003, 10.0):
        stats.observe(MODEL, 3, 1, "champion", seconds, failed=False)
    stats.observe(MODEL, 3, 2, "canary", 0.0015, failed=False)
    stats.observe(MODEL, 3, 2, "canary", 0.02, failed=True)
    stats.observe(MODEL, 4, 2, "canary", 0.001, failed=False)  # after the split changed
    stats.dropped(MODEL, 4)

    three, four = stats.drain("replica-a", 2.5)
    assert (three.model, three.instance, three.traffic_revision, three.interval_seconds) == (
        MODEL,
        "replica-a",
        3,
        2.5,
    )
    champion, canary = three.versions
    assert (champion.version, champion.role, champion.requests, champion.failures) == (1, "champion", 5, 0)
    assert len(champion.latency_buckets) == len(LATENCY_BOUNDS_MS) + 1
    expected = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for index in (0, 1, 4, 4, len(LATENCY_BOUNDS_MS)):  # <=0.25 ms, <=0.5, <=4, <=4, above 4096
        expected[index] += 1
    assert champion.latency_buckets == expected
    assert (canary.version, canary.role, canary.requests, canary.failures) == (2, "canary", 2, 1)
    assert sum(canary.latency_buckets) == 2
    assert (four.traffic_revision, four.shadow_dropped, [v.requests for v in four.versions]) == (4, 1, [1])
    assert stats.drain("replica-a", 2.0) == []  # drained


async def test_the_reporter_publishes_every_interval_then_flushes_the_comparisons(
    published: Published,
) -> None:
    stats = LiveStats()
    flushes: list[int] = []

    async def flush() -> None:
        flushes.append(len(published.live))

    reporter = LiveStatsReporter(stats, published.live_stats, "replica-a", 0.02, after_each=flush)
    stats.observe(MODEL, 1, 1, "champion", 0.001, failed=False)
    reporter.start()
    try:
        for _ in range(500):  # polling a background task: up to 5 s
            if published.live and flushes:
                break
            await asyncio.sleep(0.01)
    finally:
        await reporter.stop()
    (event,) = published.live
    assert event.versions[0].requests == 1 and event.interval_seconds > 0
    assert flushes[0] == 1  # after the stats of the same interval


async def test_only_failures_a_version_causes_count_against_it(
    loaded: dict[int, LoadedModel], dataset: Dataset
) -> None:
    with pytest.raises(ModelRejectedInput) as rejected:  # the 29-feature model, given 30 features
        loaded[NARROW].predict({"input": dataset.rows[:2]})
    assert fails_the_version(rejected.value)
    assert fails_the_version(RuntimeError("the session crashed"))
    assert fails_the_version(Unavailable("out of threads"))
    assert not fails_the_version(InvalidArgument("input 'input' has shape [2, 7]"))  # malformed
    assert not fails_the_version(NotFound("no output 'x'"))
    assert not fails_the_version(asyncio.CancelledError())  # the caller went away


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
async def test_comparisons_are_scored_at_a_lower_cpu_priority_than_the_answers(
    loaded: dict[int, LoadedModel], published: Published, dataset: Dataset
) -> None:
    """On saturated cores the kernel must run the answers first: the shadow's thread is niced."""
    niceness_seen: list[int] = []

    @dataclasses.dataclass(frozen=True)
    class RecordingShadow(LoadedModel):
        def predict(self, feeds: Mapping[str, Array]) -> list[Array]:
            niceness_seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super().predict(feeds)

    shadow = RecordingShadow(**{f.name: getattr(loaded[2], f.name) for f in dataclasses.fields(loaded[2])})
    answering = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    comparisons = Comparisons(published.comparison, LiveStats(), "replica-a", nice_increment=7)
    comparisons.start()
    try:
        route = Route(loaded[1], shadow=shadow, shadow_percent=100, revision=1)
        comparisons.offer(*answer(loaded[1], dataset.rows[:3], "champion", route, "r0"))
        await comparisons.drain()
    finally:
        await comparisons.stop()
    assert niceness_seen == [min(19, answering + 7)]
