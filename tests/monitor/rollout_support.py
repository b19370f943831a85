"""Helpers of the rollout policy tests: an in-memory registry that moves rollouts through a plan
as the real one does (the monitor's `RolloutControl`), a settable clock, and builders of the events
serving emits."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from cascade.errors import FailedPrecondition, NotFound
from cascade.events import (
    LATENCY_BOUNDS_MS,
    LiveTrafficReported,
    PredictionLogged,
    PredictionsCompared,
    VersionLiveStats,
)
from cascade.services.monitor.rollout import Rollout, Step, Thresholds

MODEL = "rollout-model"
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SOURCE = "cascade/serving"
# The registry's default plan (issue 19).
DEFAULT_STEPS = (
    Step("shadow", 100.0, 200, 10.0),
    Step("canary", 10.0, 200, 10.0),
    Step("canary", 50.0, 200, 10.0),
)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeRegistry:
    """The registry's rollout moves, in memory: advance from the step it is at, promotion after the
    last step, abort with a cause; every move bumps the revision and restarts the step's clock."""

    clock: Clock
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    calls: list[tuple[str, str, int, str]] = field(default_factory=list)  # (action, model, version, reason)

    def start(
        self,
        model: str = MODEL,
        champion: int = 1,
        challenger: int = 2,
        steps: Sequence[Step] = DEFAULT_STEPS,
        thresholds: Thresholds | None = None,
    ) -> Rollout:
        previous = self.rollouts.get(model)
        rollout = Rollout(
            model=model,
            champion_version=champion,
            challenger_version=challenger,
            state="running",
            step=0,
            step_started_at=self.clock(),
            steps=tuple(steps),
            thresholds=thresholds or Thresholds(),
            revision=(previous.revision + 1) if previous else 1,
        )
        self.rollouts[model] = rollout
        return rollout

    async def rollout(self, model: str) -> Rollout | None:
        return self.rollouts.get(model)

    async def advance(self, model: str, version: int, from_step: int, reason: str) -> Rollout | None:
        self.calls.append(("advance", model, version, reason))
        rollout = self._running(model, version)
        if rollout.step != from_step:
            raise FailedPrecondition(f"{model}: the rollout is at step {rollout.step}, not {from_step}")
        if from_step + 1 == len(rollout.steps):
            moved = replace(rollout, state="promoted", revision=rollout.revision + 1, cause=reason)
        else:
            moved = replace(
                rollout, step=from_step + 1, step_started_at=self.clock(), revision=rollout.revision + 1
            )
        self.rollouts[model] = moved
        return moved

    async def abort(self, model: str, version: int, reason: str) -> Rollout | None:
        self.calls.append(("abort", model, version, reason))
        rollout = self._running(model, version)
        moved = replace(rollout, state="rolled_back", revision=rollout.revision + 1, cause=reason)
        self.rollouts[model] = moved
        return moved

    def _running(self, model: str, version: int) -> Rollout:
        rollout = self.rollouts.get(model)
        if rollout is None or rollout.challenger_version != version:
            raise NotFound(f"{model} v{version} has no rollout")
        if rollout.state != "running":
            raise FailedPrecondition(f"{model}: the rollout is {rollout.state}")
        return rollout


def histogram(latencies_ms: Sequence[float]) -> list[int]:
    """Counts per LATENCY_BOUNDS_MS bucket, as serving counts them (a value on a bound is in its bucket)."""
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for latency in latencies_ms:
        counts[bisect.bisect_left(LATENCY_BOUNDS_MS, latency)] += 1
    return counts


def live_traffic(
    rollout: Rollout,
    at: datetime,
    champion_latencies: Sequence[float],
    challenger_latencies: Sequence[float],
    challenger_failures: int = 0,
    champion_failures: int = 0,
    instance: str = "serving-0",
    shadow_dropped: int = 0,
) -> LiveTrafficReported:
    return LiveTrafficReported(
        source=SOURCE,
        subject=rollout.model,
        time=at,
        model=rollout.model,
        instance=instance,
        traffic_revision=rollout.revision,
        interval_seconds=2.0,
        versions=[
            VersionLiveStats(
                version=rollout.champion_version,
                role="champion",
                requests=len(champion_latencies) + champion_failures,
                failures=champion_failures,
                latency_buckets=histogram(champion_latencies),
            ),
            VersionLiveStats(
                version=rollout.challenger_version,
                role=rollout.current.stage,
                requests=len(challenger_latencies) + challenger_failures,
                failures=challenger_failures,
                latency_buckets=histogram(challenger_latencies),
            ),
        ],
        shadow_dropped=shadow_dropped,
    )


def compared(
    rollout: Rollout,
    at: datetime,
    request_ids: Sequence[str],
    champion_outputs: Sequence[float],
    challenger_outputs: Sequence[float],
) -> PredictionsCompared:
    return PredictionsCompared(
        source=SOURCE,
        subject=rollout.model,
        time=at,
        model=rollout.model,
        instance="serving-0",
        champion_version=rollout.champion_version,
        challenger_version=rollout.challenger_version,
        challenger_role=rollout.current.stage,
        request_ids=list(request_ids),
        champion_outputs=[float(value) for value in champion_outputs],
        challenger_outputs=[float(value) for value in challenger_outputs],
    )


def logged(
    rollout: Rollout, at: datetime, request_id: str, version: int, inputs: Sequence[float], output: float
) -> PredictionLogged:
    return PredictionLogged(
        source=SOURCE,
        subject=rollout.model,
        time=at,
        model=rollout.model,
        model_version=version,
        request_id=request_id,
        features=[f"f{i}" for i in range(len(inputs))],
        inputs=[list(inputs)],
        outputs=[float(output)],
        role="canary" if version == rollout.challenger_version else "champion",
    )
