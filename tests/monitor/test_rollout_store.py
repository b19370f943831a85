"""The monitor store keeps a model's rollout step and its evidence across a reopening."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cascade.services.monitor.store import MonitorStore, RolloutStepRecord

STARTED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_rollout_step_survives_reopening_and_a_new_step_replaces_it(tmp_path: Path) -> None:
    store = MonitorStore(tmp_path)
    first = RolloutStepRecord("churn", 4, 0, STARTED, '{"requests": 12}', STARTED + timedelta(seconds=3))
    store.save_rollout_step(first)
    store.save_rollout_step(RolloutStepRecord("price", 2, 1, STARTED, "{}", STARTED))
    store.close()

    reopened = MonitorStore(tmp_path)
    try:
        assert reopened.rollout_step("churn") == first
        assert reopened.rollout_step("absent") is None
        second = RolloutStepRecord("churn", 4, 1, STARTED + timedelta(seconds=20), "{}", STARTED)
        reopened.save_rollout_step(second)
        assert reopened.rollout_step("churn") == second
        assert [record.model for record in reopened.rollout_steps()] == ["churn", "price"]
    finally:
        reopened.close()
