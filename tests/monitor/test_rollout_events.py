"""The rollout policy follows the registry and counts serving's evidence once, in its step: a
restart resumes the step's evidence from the store; reports of an older split, comparisons from
before the step or of the other role, and redelivered events are not counted; a rollout moved by
someone else meanwhile is read again rather than moved twice."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from cascade.errors import NotFound, Unavailable
from cascade.events import LabelsArrived, ModelTrafficChanged
from cascade.services.monitor.rollout import RolloutPolicy, Step
from cascade.services.monitor.store import MonitorStore

from .rollout_support import MODEL, Clock, FakeRegistry, compared, live_traffic, logged


async def classification(model: str, version: int) -> str:
    return "classification"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MonitorStore]:
    store = MonitorStore(tmp_path)
    yield store
    store.close()


def traffic_changed(registry: FakeRegistry, action: str = "rollout_started") -> ModelTrafficChanged:
    rollout = registry.rollouts[MODEL]
    return ModelTrafficChanged(
        source="cascade/registry",
        subject=MODEL,
        model=MODEL,
        revision=rollout.revision,
        champion_version=rollout.champion_version,
        action=action,
        rollout_version=rollout.challenger_version,
        rollout_step=rollout.step,
        actor="test",
    )


async def feed_a_good_interval(
    policy: RolloutPolicy, registry: FakeRegistry, clock: Clock, first: int
) -> None:
    """60 requests both versions scored alike, reported by two replicas."""
    rollout = registry.rollouts[MODEL]
    ids = [f"r{first + i}" for i in range(60)]
    outputs = [float(i % 2) for i in range(60)]
    for replica in range(2):
        await policy.on_live_traffic(
            live_traffic(rollout, clock(), [3.0] * 30, [3.0] * 30, instance=f"serving-{replica}")
        )
    await policy.on_compared(compared(rollout, clock(), ids, outputs, outputs))


async def test_a_restart_resumes_the_steps_evidence_and_a_new_step_starts_afresh(tmp_path: Path) -> None:
    clock = Clock()
    registry = FakeRegistry(clock)
    registry.start()
    store = MonitorStore(tmp_path)
    policy = RolloutPolicy(store, registry, classification, clock=clock)
    await policy.on_traffic_changed(traffic_changed(registry))
    await feed_a_good_interval(policy, registry, clock, 0)
    clock.advance(2)
    await policy.tick()
    before = policy.comparison(MODEL)
    store.close()

    reopened = MonitorStore(tmp_path)
    try:
        resumed = RolloutPolicy(reopened, registry, classification, clock=clock)
        await resumed.resume()
        after = resumed.comparison(MODEL)
        assert after.figures == before.figures
        assert (after.figures.challenger_requests, after.figures.compared_rows) == (60, 60)
        assert after.verdict == "holding" and "60 of 200 requests" in after.detail

        for interval in range(1, 5):  # 240 requests in all, 10 s later: the step passes
            await feed_a_good_interval(resumed, registry, clock, 60 * interval)
            clock.advance(2)
        await resumed.tick()

        assert registry.rollouts[MODEL].step == 1
        assert registry.calls[-1][0] == "advance"
        assert registry.calls[-1][3].startswith(
            "step 1 of 3 (shadow 100%) passed in 10 s: 300 requests, 0 failed"
        )
        moved = resumed.comparison(MODEL)
        assert moved.rollout.step == 1
        assert (moved.figures.challenger_requests, moved.figures.compared_rows) == (0, 0)
    finally:
        reopened.close()


async def test_evidence_of_another_split_step_or_role_and_redeliveries_count_nothing(
    store: MonitorStore,
) -> None:
    clock = Clock()
    registry = FakeRegistry(clock)
    registry.start()
    policy = RolloutPolicy(store, registry, classification, clock=clock)
    await policy.refresh(MODEL)
    rollout = registry.rollouts[MODEL]
    report = live_traffic(rollout, clock(), [3.0] * 10, [3.0] * 10)
    rows = compared(rollout, clock(), ["a", "b"], [1.0, 0.0], [1.0, 1.0])

    await policy.on_live_traffic(report)
    await policy.on_live_traffic(report)  # redelivered
    await policy.on_live_traffic(report.model_copy(update={"id": "older", "traffic_revision": 0}))
    await policy.on_compared(rows)
    await policy.on_compared(rows)  # redelivered
    await policy.on_compared(rows.model_copy(update={"id": "early", "time": clock() - timedelta(seconds=1)}))
    await policy.on_compared(rows.model_copy(update={"id": "canary", "challenger_role": "canary"}))

    figures = policy.comparison(MODEL).figures
    assert (figures.challenger_requests, figures.champion_requests) == (10, 10)
    assert (figures.compared_rows, figures.agreement) == (2, 0.5)


async def test_labels_join_what_each_version_answered_the_request(store: MonitorStore) -> None:
    clock = Clock()
    registry = FakeRegistry(clock)
    registry.start(steps=(Step("canary", 10.0, 200, 10.0),))
    policy = RolloutPolicy(store, registry, classification, clock=clock)
    await policy.refresh(MODEL)
    rollout = registry.rollouts[MODEL]
    # the canary answered r1 (right) and r2 (wrong); the champion r3 (right); r2 was mirrored too
    await policy.on_prediction_logged(logged(rollout, clock(), "r1", 2, [0.5], 1.0))
    await policy.on_prediction_logged(logged(rollout, clock(), "r2", 2, [0.5], 0.0))
    await policy.on_prediction_logged(logged(rollout, clock(), "r3", 1, [0.5], 1.0))
    await policy.on_compared(compared(rollout, clock(), ["r2"], [1.0], [0.0]))
    for request_id in ("r1", "r2", "r3", "unknown"):
        labels = LabelsArrived(model=MODEL, request_id=request_id, label=1.0)
        await policy.on_labels(labels.model, labels.request_id, labels.values)

    figures = policy.comparison(MODEL).figures
    assert (figures.challenger_labelled_rows, figures.challenger_metric) == (2, 0.5)
    assert (figures.champion_labelled_rows, figures.champion_metric) == (2, 1.0)  # r2 mirrored, r3


async def test_a_rollout_moved_meanwhile_is_read_again_not_moved_twice(store: MonitorStore) -> None:
    clock = Clock()
    registry = FakeRegistry(clock)
    registry.start()
    policy = RolloutPolicy(store, registry, classification, clock=clock)
    await policy.refresh(MODEL)
    for interval in range(5):
        await feed_a_good_interval(policy, registry, clock, 60 * interval)
        clock.advance(2)
    await registry.advance(MODEL, 2, 0, "a person moved it")  # before the monitor's tick

    await policy.tick()

    assert [call[0] for call in registry.calls] == [
        "advance",
        "advance",
    ]  # the person's, then the refused one
    assert registry.rollouts[MODEL].step == 1
    assert policy.comparison(MODEL).rollout.step == 1


async def test_a_registry_out_of_reach_keeps_the_step_and_decides_at_a_later_tick(
    store: MonitorStore,
) -> None:
    clock = Clock()
    registry = FakeRegistry(clock)
    registry.start()
    policy = RolloutPolicy(store, registry, classification, clock=clock)
    await policy.refresh(MODEL)
    rollout = registry.rollouts[MODEL]
    champion = [float(i % 2) for i in range(200)]
    await policy.on_live_traffic(live_traffic(rollout, clock(), [3.0] * 200, [3.0] * 200))
    await policy.on_compared(compared(rollout, clock(), [f"r{i}" for i in range(200)], champion, [1.0] * 200))
    working_abort = registry.abort

    async def unreachable(model: str, version: int, reason: str) -> None:
        raise Unavailable("registry unreachable")

    registry.abort = unreachable  # type: ignore[method-assign]
    await policy.tick()
    assert registry.rollouts[MODEL].state == "running"

    registry.abort = working_abort  # type: ignore[method-assign]
    await policy.tick()
    assert registry.rollouts[MODEL].state == "rolled_back"
    assert registry.rollouts[MODEL].cause.startswith("agreement 0.50 < 0.90 over 200 compared rows")
    comparison = policy.comparison(MODEL)
    assert comparison.verdict == "rolled_back" and comparison.detail == registry.rollouts[MODEL].cause


async def test_a_model_without_rollout_is_not_found(store: MonitorStore) -> None:
    policy = RolloutPolicy(store, FakeRegistry(Clock()), classification)
    with pytest.raises(NotFound, match="no challenger on live traffic and no rollout on record"):
        policy.comparison("nobody")


async def test_evidence_of_a_step_not_heard_of_yet_reads_the_rollout_and_counts(store: MonitorStore) -> None:
    clock = Clock()
    registry = FakeRegistry(clock)
    registry.start()
    policy = RolloutPolicy(store, registry, classification, clock=clock)
    await policy.refresh(MODEL)
    clock.advance(1)
    moved = await registry.advance(MODEL, 2, 0, "moved")  # its traffic-changed event is still on the way

    await policy.on_live_traffic(live_traffic(moved, clock(), [3.0] * 20, [3.0] * 20))
    await policy.on_compared(compared(moved, clock(), ["a", "b"], [1.0, 0.0], [1.0, 0.0]))

    comparison = policy.comparison(MODEL)
    assert (comparison.rollout.step, comparison.rollout.current.stage) == (1, "canary")
    assert (comparison.figures.challenger_requests, comparison.figures.compared_rows) == (20, 2)


async def test_a_split_set_by_hand_is_compared_and_never_decided(store: MonitorStore) -> None:
    clock = Clock()
    registry = FakeRegistry(clock)
    manual = replace(registry.start(), state="manual", steps=(Step("canary", 20.0, 0, 0.0),))
    registry.rollouts[MODEL] = manual
    policy = RolloutPolicy(store, registry, classification, clock=clock)
    await policy.refresh(MODEL)
    champion = [float(i % 2) for i in range(200)]
    await policy.on_live_traffic(live_traffic(manual, clock(), [3.0] * 200, [3.0] * 200, 50))
    await policy.on_compared(compared(manual, clock(), [f"r{i}" for i in range(200)], champion, [1.0] * 200))
    clock.advance(60)

    await policy.tick()

    assert registry.calls == []  # far past every threshold, and still nobody is called
    comparison = policy.comparison(MODEL)
    assert (comparison.figures.challenger_failures, comparison.figures.agreement) == (50, 0.5)
    assert comparison.verdict == "holding"
    assert comparison.detail == "a split set by hand: the monitor compares, a person decides"

    del registry.rollouts[MODEL]  # the split is taken off
    await policy.refresh(MODEL)
    with pytest.raises(NotFound):
        policy.comparison(MODEL)
