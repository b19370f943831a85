"""The Models page's Traffic section, run by Streamlit's AppTest without a stack: the split, the
rollout's steps and the monitor's live comparison as the records come from the SDK, and the
controls' writes made through a recording registry (the browser test, tests/integration/
test_console_traffic.py, makes them against the real one)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from cascade.client.monitor import LiveComparison
from cascade.client.records import Model, Rollout, RolloutPlan, RolloutStep, RolloutThresholds, Traffic
from cascade.console.views import traffic as view
from cascade.errors import CascadeError, FailedPrecondition, NotFound
from tests.records import model_version

STARTED = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
STEP_STARTED = datetime(2026, 12, 1, 12, 5, 30, tzinfo=UTC)
PLAN = RolloutPlan(
    model="cancer",
    steps=(
        RolloutStep("shadow", 100.0, 200, 10.0),
        RolloutStep("canary", 10.0, 200, 10.0),
        RolloutStep("canary", 50.0, 200, 10.0),
    ),
    thresholds=RolloutThresholds(),
    is_default=True,
)
CANARY_STEP = Traffic(
    model="cancer",
    champion_version=2,
    canary_version=3,
    canary_percent=10.0,
    shadow_version=0,
    shadow_percent=0.0,
    revision=7,
    actor="registry",
    reason="v3 passed the shadow step",
    updated_at=STEP_STARTED,
    rollout=Rollout(3, "running", 1, STARTED, STEP_STARTED, "", PLAN),
)
COMPARISON = LiveComparison(
    model="cancer",
    champion_version=2,
    challenger_version=3,
    stage="canary",
    step=1,
    step_started_at=STEP_STARTED,
    challenger_requests=57,
    challenger_failures=0,
    challenger_error_rate=0.0,
    champion_p99_ms=1.8,
    challenger_p99_ms=2.4,
    compared_rows=57,
    agreement=0.9649,
    difference_ratio=math.nan,
    prediction_drift=0.031,
    champion_labelled_rows=0,
    challenger_labelled_rows=0,
    champion_metric=math.nan,
    challenger_metric=math.nan,
    verdict="holding",
    detail="57 of 200 requests",
    updated_at=STEP_STARTED,
    shadow_dropped=4,
)


class RecordingRegistry:
    """The registry's traffic methods as the SDK's AsyncClient has them, answering from a Traffic
    record; `refusal` is raised by the writes, as the registry would refuse them."""

    def __init__(self, traffic: Traffic, refusal: CascadeError | None = None) -> None:
        self.traffic = traffic
        self.refusal = refusal
        self.writes: list[tuple[str, dict[str, Any]]] = []

    async def get_traffic(self, model: str) -> Traffic:
        assert model == self.traffic.model
        return self.traffic

    async def set_traffic(self, model: str, **split: Any) -> Traffic:
        self.writes.append(("set_traffic", split))
        if self.refusal is not None:
            raise self.refusal
        fields = ("canary_version", "canary_percent", "shadow_version", "shadow_percent", "actor", "reason")
        self.traffic = dataclasses.replace(
            self.traffic, revision=self.traffic.revision + 1, **{name: split[name] for name in fields}
        )
        return self.traffic

    async def abort_rollout(self, model: str, version: int = 0, *, reason: str, actor: str = "") -> Traffic:
        self.writes.append(("abort_rollout", {"version": version, "reason": reason, "actor": actor}))
        if self.refusal is not None:
            raise self.refusal
        assert self.traffic.rollout is not None
        rollout = dataclasses.replace(self.traffic.rollout, state="rolled_back", cause=reason)
        self.traffic = dataclasses.replace(
            self.traffic,
            canary_version=0,
            canary_percent=0.0,
            revision=self.traffic.revision + 1,
            rollout=rollout,
        )
        return self.traffic


class Monitor:
    def __init__(self, comparison: LiveComparison | CascadeError) -> None:
        self.comparison = comparison

    async def get_live_comparison(self, model: str) -> LiveComparison:
        if isinstance(self.comparison, CascadeError):
            raise self.comparison
        return self.comparison


@dataclasses.dataclass
class FakeClient:
    registry: RecordingRegistry
    monitor: Monitor


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClient]:
    """The client the section's reads and writes go to (the page's `run`, replaced)."""
    fake = FakeClient(RecordingRegistry(CANARY_STEP), Monitor(COMPARISON))

    def run(calls: Callable[[Any], Awaitable[Any]]) -> Any:
        return asyncio.run(calls(fake))  # type: ignore[arg-type]

    monkeypatch.setattr(view, "run", run)
    st.cache_resource.clear()
    yield fake


def _section() -> None:
    from cascade.console.views import traffic
    from tests.console.test_traffic_view import MODEL, VERSIONS

    traffic.render_model(MODEL, VERSIONS, lambda: None)


def _app() -> AppTest:
    app = AppTest.from_function(_section, default_timeout=30)
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    return app


def _tables(app: AppTest) -> list[Any]:
    return [table.value for table in app.table]


def _said(app: AppTest) -> str:
    return " ".join(str(e.value) for e in [*app.success, *app.info, *app.warning, *app.error, *app.caption])


def test_the_split_the_rollout_and_the_live_comparison_are_shown(client: FakeClient) -> None:
    app = _app()
    assert [s.value for s in app.subheader] == ["Traffic"]
    split, steps, figures = _tables(app)
    assert split[["ROLE", "VERSION", "SHARE"]].values.tolist() == [
        ["champion", "v2", "90%"],
        ["canary", "v3", "10%"],
        ["shadow", "—", "—"],
    ]
    said = _said(app)
    assert (
        "Split revision 7; last change 2026-12-01 12:05:30 UTC by registry: v3 passed the shadow step" in said
    )
    assert "Rolling out v3: step 2 of 3 (canary 10%) since 2026-12-01 12:05:30 UTC" in said
    assert steps[["STEP", "STAGE", "PERCENT", "STATUS"]].values.tolist() == [
        [1, "shadow", "100%", "passed"],
        [2, "canary", "10%", "current"],
        [3, "canary", "50%", "to come"],
    ]
    assert "agreement ≥ 0.9" in said and "the registry's default plan" in said
    assert "Verdict: holding: 57 of 200 requests" in [i.value for i in app.info]
    by_figure = dict(zip(figures["FIGURE"], figures["VALUE"], strict=True))
    assert by_figure["requests"] == "57"
    assert by_figure["agreement"] == r"0\.9649"  # cells are Markdown: the point is escaped, shown as is
    assert by_figure["difference ratio"] == "—"  # NaN: a classifier has no difference ratio
    assert by_figure["p99 ms"] == r"2\.4 vs 1\.8"
    assert by_figure["shadow dropped"] == "4"


def test_a_rolled_back_rollout_shows_its_cause_and_a_missing_comparison_says_why(client: FakeClient) -> None:
    assert CANARY_STEP.rollout is not None
    rolled_back = dataclasses.replace(
        CANARY_STEP.rollout, state="rolled_back", cause="error rate 0.031 > max_error_rate 0.01"
    )
    client.registry.traffic = dataclasses.replace(
        CANARY_STEP, canary_version=0, canary_percent=0.0, rollout=rolled_back
    )
    client.monitor.comparison = NotFound("monitor: no live comparison for cancer")
    app = _app()
    split, steps = _tables(app)
    assert split["SHARE"].tolist() == ["100%", "—", "—"]
    assert [e.value for e in app.error] == [
        "The rollout of v3 was rolled back at step 2: error rate 0.031 > max_error_rate 0.01"
    ]
    assert steps["STATUS"].tolist() == ["passed", "rolled back here", "—"]
    assert "The monitor has no live comparison for this model yet." in _said(app)


def test_the_monitor_down_still_shows_the_split(client: FakeClient) -> None:
    client.monitor.comparison = CascadeError("monitor (127.0.0.1:1) unavailable: failed to connect")
    app = _app()
    assert _tables(app)[0]["VERSION"].tolist() == ["v2", "v3", "—"]
    assert "Reading the live comparison: monitor (127.0.0.1:1) unavailable" in _said(app)


def _fill(app: AppTest, form: str, reason: str, confirm: bool, **numbers: float) -> None:
    for label, value in numbers.items():
        next(n for n in app.number_input if n.label == label).set_value(value)
    next(t for t in app.text_input if t.label == f"Reason for the {form}").input(reason)
    if confirm:
        next(c for c in app.checkbox if c.label == f"I confirm the {form}").check()


def _submit(app: AppTest, label: str) -> AppTest:
    next(b for b in app.button if b.label == label).click()
    app.run()
    assert not app.exception, [e.message for e in app.exception]
    return app


def test_a_canary_is_set_for_a_version_keeping_the_shadow(client: FakeClient) -> None:
    client.registry.traffic = dataclasses.replace(
        CANARY_STEP, canary_version=0, canary_percent=0.0, shadow_version=3, shadow_percent=50.0, rollout=None
    )
    app = _app()
    _fill(app, "canary", "", True, **{"Canary version": 1, "Percent of requests": 25})
    _submit(app, "Set canary")
    assert "Give a reason: the registry keeps it in the alias history." in [e.value for e in app.error]
    assert client.registry.writes == []

    _fill(app, "canary", "try v1 on a quarter", True, **{"Canary version": 1, "Percent of requests": 25})
    _submit(app, "Set canary")
    assert client.registry.writes == [
        (
            "set_traffic",
            {
                "canary_version": 1,
                "canary_percent": 25.0,
                "shadow_version": 3,
                "shadow_percent": 50.0,
                "actor": "console",
                "reason": "try v1 on a quarter",
            },
        )
    ]
    assert [s.value for s in app.success] == [
        "cancer: champion v2, canary v1 at 25%, shadow v3 at 50% (revision 8)"
    ]
    assert _tables(app)[0]["SHARE"].tolist() == ["75%", "25%", "50%"]


def test_the_registrys_refusal_is_shown_as_it_is(client: FakeClient) -> None:
    client.registry.refusal = FailedPrecondition(
        "registry: a rollout of cancer v3 is running: abort it first"
    )
    app = _app()
    _fill(app, "canary", "more canary", True, **{"Canary version": 3, "Percent of requests": 50})
    _submit(app, "Set canary")
    assert [e.value for e in app.error] == [
        "Setting v3 as canary at 50% refused: registry: a rollout of cancer v3 is running: abort it first"
    ]
    assert _tables(app)[0]["SHARE"].tolist() == ["90%", "10%", "—"]  # nothing moved


def test_a_rollout_is_aborted_with_its_reason(client: FakeClient) -> None:
    app = _app()
    _fill(app, "abort", "p99 looks wrong on the dashboard", False)
    _submit(app, "Abort rollout")
    assert "Tick the confirmation box first." in [e.value for e in app.error]
    _fill(app, "abort", "p99 looks wrong on the dashboard", True)
    _submit(app, "Abort rollout")
    assert client.registry.writes == [
        ("abort_rollout", {"version": 0, "reason": "p99 looks wrong on the dashboard", "actor": "console"})
    ]
    assert [s.value for s in app.success] == ["cancer: rollout aborted; champion v2 (revision 8)"]
    assert "The rollout of v3 was rolled back at step 2: p99 looks wrong on the dashboard" in _said(app)


# The page's records for `_section` (AppTest runs the function's source, which imports them).
MODEL = Model(
    name="cancer",
    latest_version=3,
    aliases={"champion": 2},
    description="",
    tags={},
    promotion_policy="progressive",
    inputs=(),
    outputs=(),
    created_at=None,
)
VERSIONS = [model_version(version=number, aliases=()) for number in (1, 2, 3)]
