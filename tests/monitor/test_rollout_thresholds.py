"""Each threshold of the rollout policy on its own: breached with enough evidence (the cause names
it and the measured value), not judged without it, held while a miss is within chance, off at 0;
and a step advances only when its requests, its time and its compared rows are in."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from cascade.events import LATENCY_BOUNDS_MS
from cascade.services.monitor.rollout import (
    Evidence,
    Rollout,
    Step,
    Thresholds,
    judge,
    p99_ms,
    psi,
    psi_allowance,
)

from .rollout_support import START, histogram

ROLLOUT = Rollout(
    model="churn",
    champion_version=1,
    challenger_version=2,
    state="running",
    step=1,
    step_started_at=START,
    steps=(Step("shadow", 100, 200, 10), Step("canary", 10, 200, 10), Step("canary", 50, 200, 10)),
    thresholds=Thresholds(),
    revision=3,
)
LATER = START + timedelta(seconds=30)


def evidence(
    requests: int = 300,
    failures: int = 0,
    champion: list[float] | None = None,
    challenger: list[float] | None = None,
    champion_ms: float = 3.0,
    challenger_ms: float = 3.0,
) -> Evidence:
    """A step's evidence: `requests` answered each at the given latency, and compared rows."""
    champion = champion if champion is not None else [float(i % 2) for i in range(300)]
    challenger = challenger if challenger is not None else list(champion)
    found = Evidence(
        challenger_requests=requests,
        challenger_failures=failures,
        champion_requests=requests * 9,
        champion_latency=histogram([champion_ms] * requests * 9),
        challenger_latency=histogram([challenger_ms] * requests),
        compared_rows=len(champion),
        agreeing_rows=sum(a == b for a, b in zip(champion, challenger, strict=True)),
        champion_outputs=champion,
        challenger_outputs=challenger,
    )
    return found


def test_a_challenger_within_every_threshold_advances_with_the_figures() -> None:
    _, decision = judge(ROLLOUT, evidence(), classifier=True, now=LATER)

    assert decision.action == "advance"
    assert decision.reason.startswith("step 2 of 3 (canary 10%) passed in 30 s: 300 requests, 0 failed")
    assert "agreement 1.000, PSI 0.000 over 300 compared rows" in decision.reason


@pytest.mark.parametrize(
    ("found", "now", "short"),
    [
        (evidence(requests=150), LATER, "150 of 200 requests"),
        (evidence(), START + timedelta(seconds=4), "4 of 10 s"),
        (evidence(champion=[1.0] * 60), LATER, "60 of 100 compared rows"),
    ],
)
def test_a_step_holds_until_its_requests_time_and_compared_rows_are_in(
    found: Evidence, now: object, short: str
) -> None:
    _, decision = judge(ROLLOUT, found, classifier=True, now=now)  # type: ignore[arg-type]

    assert decision.action == "hold"
    assert short in decision.reason


def test_the_error_rate_rolls_back_beyond_chance_holds_within_it_and_waits_for_evidence() -> None:
    _, breach = judge(ROLLOUT, evidence(requests=300, failures=15), True, LATER)
    _, unclear = judge(ROLLOUT, evidence(requests=300, failures=5), True, LATER)
    _, early = judge(ROLLOUT, evidence(requests=40, failures=10), True, LATER)
    off = replace(ROLLOUT, thresholds=Thresholds(max_error_rate=0))
    _, unchecked = judge(off, evidence(requests=300, failures=15), True, LATER)

    assert breach.action == "abort"
    assert breach.reason.startswith("error rate 0.050 > 0.01 (15 of 300 requests failed) at step 2 of 3")
    assert unclear.action == "hold"  # 1.7% over 300 requests: a 1% rate gives that by chance
    assert "error rate 0.017 > 0.01" in unclear.reason and "not yet beyond chance" in unclear.reason
    assert early.action == "hold"  # 40 requests are fewer than min_compared_rows
    assert unchecked.action == "advance"


def test_a_slower_challenger_rolls_back_on_its_p99_but_not_under_the_floor() -> None:
    _, slow = judge(ROLLOUT, evidence(champion_ms=3.0, challenger_ms=15.0), True, LATER)
    # sub-floor latencies: 0.1 ms against 3 ms would be a ratio of 30 between noise
    _, fast_noise = judge(ROLLOUT, evidence(champion_ms=0.1, challenger_ms=3.0), True, LATER)

    assert slow.action == "abort"
    # 15 ms is counted in (8, 16] ms, 3 ms in (2, 4]: each p99 interpolated inside its bucket
    assert slow.reason.startswith(
        "p99 latency 15.9 ms = 4.00x the champion's 4.0 ms > 2x (at least 15.8 ms against at most 4.0 ms) "
        "at step 2 of 3"
    )
    assert fast_noise.action == "advance"


def test_a_p99_resting_on_a_few_slow_requests_holds_until_their_share_is_clear() -> None:
    few_slow = evidence(requests=150)
    few_slow.challenger_latency = histogram([3.0] * 147 + [30.0] * 3)  # 2% slow: p99 in (16, 32] ms
    many_slow = evidence(requests=1500)
    many_slow.challenger_latency = histogram([3.0] * 1440 + [30.0] * 60)  # 4% slow

    figures, unclear = judge(ROLLOUT, few_slow, True, LATER)
    _, clear = judge(ROLLOUT, many_slow, True, LATER)

    assert figures.challenger_p99_ms > 2 * figures.champion_p99_ms
    assert unclear.action == "hold"
    assert "p99 latency" in unclear.reason and "not yet beyond chance" in unclear.reason
    assert clear.action == "abort" and clear.reason.startswith("p99 latency")


def test_agreement_below_the_threshold_rolls_a_classifier_back_with_the_measured_value() -> None:
    rng = np.random.default_rng(0)
    champion = rng.integers(0, 2, 340).astype(float).tolist()
    challenger = [c if i < 211 else 1 - c for i, c in enumerate(champion)]  # 211 of 340 agree: 0.62

    figures, decision = judge(ROLLOUT, evidence(champion=champion, challenger=challenger), True, LATER)

    assert figures.agreement == pytest.approx(211 / 340)
    assert decision.action == "abort"
    assert decision.reason.startswith("agreement 0.62 < 0.90 over 340 compared rows")


def test_agreement_a_little_short_holds_until_the_evidence_is_clear() -> None:
    champion = [float(i % 3) for i in range(150)]
    challenger = [c if i < 132 else (c + 1) % 3 for i, c in enumerate(champion)]  # 0.88

    _, decision = judge(ROLLOUT, evidence(champion=champion, challenger=challenger), True, LATER)

    assert decision.action == "hold"
    assert "agreement 0.88 < 0.90 over 150 compared rows, not yet beyond chance" in decision.reason


def test_a_regressor_far_from_the_champion_rolls_back_on_the_difference_ratio() -> None:
    rng = np.random.default_rng(1)
    champion = rng.normal(100, 20, 400)
    close = champion + rng.normal(0, 2, 400)  # p90 |diff| ~ 3.3 = 0.16 std
    far = champion + rng.normal(0, 20, 400)  # ~ 1.6 std

    close_figures, close_decision = judge(
        ROLLOUT, evidence(champion=champion.tolist(), challenger=close.tolist()), False, LATER
    )
    far_figures, far_decision = judge(
        ROLLOUT, evidence(champion=champion.tolist(), challenger=far.tolist()), False, LATER
    )

    assert close_figures.difference_ratio < 0.25 and math.isnan(close_figures.agreement)
    assert close_decision.action == "advance"
    assert far_figures.difference_ratio > 1.0
    assert far_decision.action == "abort"
    assert far_decision.reason.startswith(
        f"difference ratio {far_figures.difference_ratio:.2f} > 0.5 over 400"
    )


def test_prediction_drift_rolls_back_beyond_what_chance_gives_at_that_many_rows() -> None:
    champion = [float(i % 2) for i in range(1000)]
    # the challenger calls class 1 on 80% of rows: agreement would catch it, so turn that one off
    challenger = [1.0 if i % 10 < 8 else 0.0 for i in range(1000)]
    only_drift = replace(ROLLOUT, thresholds=Thresholds(min_agreement=0))

    figures, decision = judge(only_drift, evidence(champion=champion, challenger=challenger), True, LATER)

    assert figures.prediction_drift == pytest.approx(psi(np.array(champion), np.array(challenger), True))
    assert figures.prediction_drift > 0.25 + psi_allowance(1000, 2)
    assert decision.action == "abort"
    assert decision.reason.startswith(f"prediction drift (PSI) {figures.prediction_drift:.3f} > 0.25 + ")


def test_the_live_metric_drop_rolls_back_with_labels_enough_and_not_before() -> None:
    labelled = Evidence(
        labelled={
            "champion": [[1.0, 1.0]] * 190 + [[0.0, 1.0]] * 10,  # accuracy 0.95
            "challenger": [[1.0, 1.0]] * 140 + [[0.0, 1.0]] * 60,  # 0.70
        }
    )
    few = Evidence(labelled={"champion": [[1.0, 1.0]] * 50, "challenger": [[0.0, 1.0]] * 50})
    base = evidence()
    only_labels = replace(ROLLOUT, thresholds=Thresholds(min_compared_rows=100))

    _, drop = judge(only_labels, replace(base, labelled=labelled.labelled), True, LATER)
    _, early = judge(only_labels, replace(base, labelled=few.labelled), True, LATER)

    assert drop.action == "abort"
    assert drop.reason.startswith(
        "live accuracy 0.700 vs the champion's 0.950: 0.250 lower > 0.05 (over 200 and 200 labelled rows)"
    )
    assert early.action == "advance"  # 50 labelled rows each: the metric is not judged yet


def test_p99_interpolates_in_its_bucket_and_psi_of_identical_outputs_is_zero() -> None:
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    counts[LATENCY_BOUNDS_MS.index(4)] = 100  # every request in (2, 4] ms

    assert p99_ms(counts) == pytest.approx(2 + 2 * 0.99)
    assert math.isnan(p99_ms([0] * len(counts)))
    assert p99_ms([0] * len(LATENCY_BOUNDS_MS) + [5]) == LATENCY_BOUNDS_MS[-1]
    outputs = np.random.default_rng(2).normal(size=500)
    assert psi(outputs, outputs, categorical=False) == 0.0
    assert psi_allowance(100, 10) == pytest.approx(0.433, abs=1e-3)


def test_labels_showing_the_challenger_no_worse_outrank_its_disagreement_with_the_champion() -> None:
    """After a shift a better challenger disagrees with the champion where the champion is wrong:
    with enough labels saying so, the disagreement is no breach; without them, or with labels
    saying it is worse, it still is."""
    rng = np.random.default_rng(3)
    champion = rng.integers(0, 2, 400).astype(float).tolist()
    challenger = [c if i < 300 else 1 - c for i, c in enumerate(champion)]  # agreement 0.75
    departing = evidence(champion=champion, challenger=challenger)
    right = {  # the challenger right on 190 of 200 labelled rows, the champion on 150
        "champion": [[1.0, 1.0]] * 150 + [[0.0, 1.0]] * 50,
        "challenger": [[1.0, 1.0]] * 190 + [[0.0, 1.0]] * 10,
    }
    wrong = {"champion": right["challenger"], "challenger": right["champion"]}

    _, unlabelled = judge(ROLLOUT, departing, True, LATER)
    figures, vouched = judge(ROLLOUT, replace(departing, labelled=right), True, LATER)
    _, worse = judge(ROLLOUT, replace(departing, labelled=wrong), True, LATER)

    assert unlabelled.action == "abort" and unlabelled.reason.startswith("agreement 0.75 < 0.90")
    assert figures.agreement == pytest.approx(0.75)
    assert figures.challenger_metric > figures.champion_metric
    assert vouched.action == "advance"
    assert worse.action == "abort" and "agreement 0.75" in worse.reason and "live accuracy" in worse.reason
