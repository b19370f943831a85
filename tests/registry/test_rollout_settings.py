"""The registry's default rollout plan comes from its settings: the design's plan when unset, or the
JSON of CASCADE_REGISTRY_DEFAULT_ROLLOUT_PLAN, refused at start-up when it is no plan."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cascade.services.registry.rollouts import RolloutPlan, RolloutStep, RolloutThresholds
from cascade.services.registry.settings import RegistrySettings


def test_unset_it_is_shadow_then_two_canaries_with_the_designs_thresholds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CASCADE_REGISTRY_DEFAULT_ROLLOUT_PLAN", raising=False)
    plan = RegistrySettings().default_rollout_plan.plan()
    assert plan == RolloutPlan()
    assert plan.steps == (
        RolloutStep("shadow", 100.0, 200, 10.0),
        RolloutStep("canary", 10.0, 200, 10.0),
        RolloutStep("canary", 50.0, 200, 10.0),
    )
    assert plan.thresholds == RolloutThresholds(0.01, 2.0, 5.0, 0.9, 0.5, 0.25, 0.05, 100)


def test_the_environment_gives_another_plan_and_a_broken_one_stops_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    chosen = {
        "steps": [{"stage": "canary", "percent": 5, "min_requests": 20}],
        "thresholds": {"min_agreement": 0.8},
    }
    monkeypatch.setenv("CASCADE_REGISTRY_DEFAULT_ROLLOUT_PLAN", json.dumps(chosen))
    plan = RegistrySettings().default_rollout_plan.plan()
    assert plan.steps == (RolloutStep("canary", 5.0, 20, 0.0),)
    assert plan.thresholds.min_agreement == 0.8 and plan.thresholds.max_error_rate == 0.01  # the rest default
    assert plan.is_default

    for broken in (
        {"steps": []},
        {"steps": [{"stage": "blue", "percent": 5}]},
        {"steps": [{"stage": "canary", "percent": 0}]},
    ):
        monkeypatch.setenv("CASCADE_REGISTRY_DEFAULT_ROLLOUT_PLAN", json.dumps(broken))
        with pytest.raises(ValidationError):
            RegistrySettings()
