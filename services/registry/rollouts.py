"""Progressive delivery's records: a model's traffic split, its rollout plan (steps and thresholds)
and its rollouts, with the checks a plan and a split must pass. The moves themselves are the core's
(RegistryCore.set_traffic, start_rollout, advance_rollout, abort_rollout)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from cascade.client.records import RolloutThresholds  # one record of the thresholds, the monitor's too
from cascade.errors import InvalidArgument

__all__ = [
    "DEFAULT_STEPS",
    "MAX_STEPS",
    "ROLLOUT_STATES",
    "STAGES",
    "RolloutPlan",
    "RolloutRecord",
    "RolloutState",
    "RolloutStep",
    "RolloutThresholds",
    "Stage",
    "TrafficRecord",
    "check_percent",
]

Stage = Literal["shadow", "canary"]
STAGES: tuple[Stage, ...] = ("shadow", "canary")
RolloutState = Literal["running", "promoted", "rolled_back"]
ROLLOUT_STATES: tuple[RolloutState, ...] = ("running", "promoted", "rolled_back")
# A plan longer than this is a mistake, not a rollout.
MAX_STEPS = 20


def check_percent(what: str, percent: float) -> float:
    if not math.isfinite(percent) or not 0 <= percent <= 100:
        raise InvalidArgument(f"{what} must be within 0..100, not {percent}")
    return float(percent)


@dataclass(frozen=True)
class RolloutStep:
    stage: Stage
    # Canary: the share of requests the challenger answers; shadow: the share it also scores.
    percent: float
    min_requests: int = 0
    min_seconds: float = 0.0


# The plan of a model that set none, unless the registry's settings name another.
DEFAULT_STEPS: tuple[RolloutStep, ...] = (
    RolloutStep("shadow", 100.0, 200, 10.0),
    RolloutStep("canary", 10.0, 200, 10.0),
    RolloutStep("canary", 50.0, 200, 10.0),
)


@dataclass(frozen=True)
class RolloutPlan:
    steps: tuple[RolloutStep, ...] = DEFAULT_STEPS
    thresholds: RolloutThresholds = field(default_factory=RolloutThresholds)
    # True for the registry's default (the model set none).
    is_default: bool = True
    actor: str = ""
    updated_at: datetime | None = None

    def checked(self) -> RolloutPlan:
        """The plan, or InvalidArgument naming its first flaw."""
        if not self.steps:
            raise InvalidArgument("a rollout plan needs at least one step")
        if len(self.steps) > MAX_STEPS:
            raise InvalidArgument(f"a rollout plan has at most {MAX_STEPS} steps, not {len(self.steps)}")
        for index, step in enumerate(self.steps):
            where = f"step {index}"
            if step.stage not in STAGES:
                raise InvalidArgument(f"{where}: the stage must be shadow or canary")
            check_percent(f"{where}: the percent", step.percent)
            if step.percent <= 0:
                raise InvalidArgument(f"{where}: the percent must be above 0")
            if step.min_requests < 0:
                raise InvalidArgument(f"{where}: min_requests must not be negative")
            if not math.isfinite(step.min_seconds) or step.min_seconds < 0:
                raise InvalidArgument(f"{where}: min_seconds must be a number of seconds, 0 or more")
        for name, value in asdict(self.thresholds).items():
            if not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"threshold {name} must be a number, 0 or more, not {value}")
        for name in ("max_error_rate", "min_agreement", "max_metric_drop"):
            if getattr(self.thresholds, name) > 1:
                raise InvalidArgument(f"threshold {name} is a share: within 0..1")
        return self

    def to_json(self) -> str:
        """Steps and thresholds (who set it and when are the row's)."""
        return json.dumps(
            {"steps": [asdict(step) for step in self.steps], "thresholds": asdict(self.thresholds)},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, **details: Any) -> RolloutPlan:
        data = json.loads(text)
        return cls(
            steps=tuple(RolloutStep(**step) for step in data["steps"]),
            thresholds=RolloutThresholds(**data["thresholds"]),
            **details,
        )

    def for_model(self, *, actor: str, updated_at: datetime) -> RolloutPlan:
        return replace(self, is_default=False, actor=actor, updated_at=updated_at)


@dataclass(frozen=True)
class RolloutRecord:
    model: str
    version: int
    state: RolloutState
    # Index into plan.steps of the current (or last) step.
    step: int
    started_at: datetime
    step_started_at: datetime
    # Why it ended (the breach, the abort's reason or the promotion); empty while it runs.
    cause: str
    # Fixed when it started.
    plan: RolloutPlan

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def current_step(self) -> RolloutStep:
        return self.plan.steps[self.step]


@dataclass(frozen=True)
class TrafficRecord:
    """Which versions of a model take its requests: the champion answers, a canary answers a share,
    a shadow scores a share beside the champion without answering."""

    model: str
    champion_version: int | None
    canary_version: int | None
    canary_percent: float
    shadow_version: int | None
    shadow_percent: float
    # Grows by one with every change of the split or the rollout; 0 before the first.
    revision: int
    actor: str
    reason: str
    updated_at: datetime | None
    rollout: RolloutRecord | None
