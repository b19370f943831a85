"""How the monitor reads a model's traffic from the registry's client record (`rollout_of`): a
running rollout with its plan and thresholds, a split set by hand as a "manual" one, an ended
rollout, nothing before any."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from cascade.client.records import RolloutThresholds, Traffic
from cascade.services.monitor.loop_clients import rollout_of
from cascade.services.monitor.rollout import Step, Thresholds
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb

STEP_STARTED = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
CHANGED = datetime(2026, 12, 1, 12, 45, tzinfo=UTC)


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _rollout(state: int) -> pb.Rollout:
    return pb.Rollout(
        version=5,
        state=state,
        step=1,
        step_started_at=_stamp(STEP_STARTED),
        cause="agreement 0.5 < 0.9" if state == pb.ROLLOUT_STATE_ROLLED_BACK else "",
        plan=pb.RolloutPlan(
            model="churn",
            steps=[
                pb.RolloutStep(stage=pb.ROLLOUT_STAGE_SHADOW, percent=100, min_requests=200, min_seconds=10),
                pb.RolloutStep(stage=pb.ROLLOUT_STAGE_CANARY, percent=10, min_requests=300, min_seconds=20),
            ],
            thresholds=RolloutThresholds(min_agreement=0.95).proto,
        ),
    )


def test_a_running_rollout_is_read_with_its_plan_and_thresholds() -> None:
    traffic = pb.Traffic(
        model="churn",
        champion_version=4,
        canary_version=5,
        canary_percent=10,
        revision=7,
        updated_at=_stamp(CHANGED),
    )
    traffic.rollout.CopyFrom(_rollout(pb.ROLLOUT_STATE_RUNNING))

    rollout = rollout_of(Traffic.of(traffic))

    assert rollout is not None
    assert (rollout.model, rollout.champion_version, rollout.challenger_version) == ("churn", 4, 5)
    assert (rollout.state, rollout.step, rollout.step_started_at, rollout.revision) == (
        "running",
        1,
        STEP_STARTED,
        7,
    )
    assert rollout.steps == (Step("shadow", 100, 200, 10), Step("canary", 10, 300, 20))
    assert rollout.thresholds == Thresholds(min_agreement=0.95)
    assert rollout.current == Step("canary", 10, 300, 20)


def test_a_split_set_by_hand_is_a_manual_rollout_of_its_canary() -> None:
    traffic = pb.Traffic(
        model="churn",
        champion_version=4,
        canary_version=6,
        canary_percent=25,
        revision=9,
        updated_at=_stamp(CHANGED),
        reason="trying v6",
    )
    traffic.rollout.CopyFrom(_rollout(pb.ROLLOUT_STATE_ROLLED_BACK))  # an older rollout, over

    rollout = rollout_of(Traffic.of(traffic))

    assert rollout is not None
    assert (rollout.state, rollout.challenger_version, rollout.step_started_at) == ("manual", 6, CHANGED)
    assert rollout.steps == (Step("canary", 25, 0, 0.0),)


def test_an_ended_rollout_is_read_with_its_cause_and_no_rollout_is_none() -> None:
    traffic = pb.Traffic(model="churn", champion_version=4, revision=8)
    traffic.rollout.CopyFrom(_rollout(pb.ROLLOUT_STATE_ROLLED_BACK))

    ended = rollout_of(Traffic.of(traffic))

    assert ended is not None and (ended.state, ended.cause) == ("rolled_back", "agreement 0.5 < 0.9")
    assert rollout_of(Traffic.of(pb.Traffic(model="churn", champion_version=4, revision=1))) is None
