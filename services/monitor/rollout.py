"""The rollout policy, free of transports: it watches a model's challenger on live traffic (shadow or
canary) against its champion, step by step, and tells the registry to advance the rollout or to
roll it back.

Per running rollout and step (since the step started) it gathers the evidence serving and label
producers send: the challenger's requests and failures and each version's latency histogram
(LiveTrafficReported, summed over replicas), rows scored by both versions (PredictionsCompared), and
ground truth (labels.v1) joined by request id to whatever each version answered or scored for that
request (PredictionLogged, PredictionsCompared). On each `tick` it judges the step (`judge`):

- any threshold breached, with enough evidence and beyond what chance explains -> AbortRollout,
  the cause naming the threshold and the measured value ("agreement 0.62 < 0.90 over 340 compared
  rows at step 2 of 3 (canary 10%)");
- every threshold holding, the step's min_requests and min_seconds met, and at least
  min_compared_rows compared rows (a step is not passed unseen) -> AdvanceRollout(from_step), the
  reason giving the step's figures;
- else hold, the detail saying what is still short.

Enough evidence: min_compared_rows compared rows for agreement, difference ratio and PSI, labelled
rows of each version for the live metric, and requests of both versions for the error rate and p99
(a 1-in-3 failure rate or the p99 of three requests says nothing). Beyond chance: a share (error
rate, agreement) breaches only when its one-sided 99% Wilson bound is past the threshold, PSI only
above the threshold plus the PSI two samples of that size reach by chance (99th percentile), an
accuracy drop only above the threshold plus 2.33 standard errors of the difference, a p99 ratio
only when the challenger's p99 bounded from below exceeds the ratio times the champion's bounded
from above (99% bounds from the ranks of the order statistics: a p99 of a few hundred requests rests
on their few slowest, which a loaded machine makes slow). A figure past its threshold but within
chance holds the step, which gathers evidence until it is clear either way. The difference ratio
and R^2 have no such allowance. A threshold of 0 is not checked.

Labels outrank the proxies: agreement, the difference ratio and prediction drift measure departure
from the champion, not correctness, so once both versions have enough labelled rows and the
challenger's live metric is at least the champion's, they neither breach nor hold the step (a
better model after a shift departs from the champion where the champion is wrong).

Evidence of a step the monitor has not heard of yet (a newer traffic revision, another challenger
or role: serving may follow a change first, even the monitor's own advance while its answer is on
the way) makes it read the rollout from the registry before counting it.

The step's identity (challenger, step, when it started) and its evidence are kept in the monitor
store (`rollout_steps`), written on each tick that saw news, so a restart resumes the step instead
of starting its evidence over. Events are delivered at least once: each event id counts once (the
latest few thousand are remembered). Evidence from before the step (an older traffic revision, a
comparison timed before the step started, the other stage's role) is not counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from prometheus_client import Counter
from scipy.stats import chi2

from cascade.client.records import RolloutThresholds
from cascade.errors import CascadeError, FailedPrecondition, InvalidArgument, NotFound, classify
from cascade.events import (
    LATENCY_BOUNDS_MS,
    LiveTrafficReported,
    ModelTrafficChanged,
    PredictionLogged,
    PredictionsCompared,
)
from cascade.services.monitor.store import MonitorStore, RolloutStepRecord

__all__ = [
    "ACTOR",
    "Decision",
    "Evidence",
    "Figures",
    "LiveComparison",
    "Rollout",
    "RolloutControl",
    "RolloutPolicy",
    "Step",
    "Thresholds",
    "judge",
    "p99_ms",
    "psi",
    "psi_allowance",
]

log = logging.getLogger(__name__)

ACTOR = "cascade/monitor"
Stage = Literal["shadow", "canary"]
# "manual": no rollout runs, but a split set by hand (SetTraffic) puts a challenger on live traffic:
# its evidence is gathered and shown, and nothing is decided.
RolloutState = Literal["running", "manual", "promoted", "rolled_back"]
_LIVE = ("running", "manual")  # states whose challenger is on live traffic
Verdict = Literal["holding", "advancing", "promoted", "rolled_back"]
TaskOf = Callable[[str, int], Awaitable[str]]
Vector = NDArray[np.float64]

KEPT_ROWS = 5000  # compared rows kept for the difference ratio and PSI (the most recent)
KEPT_LABELLED = 5000  # labelled rows kept per version for its live metric
REMEMBERED_REQUESTS = 5000  # answered requests awaiting their labels
REMEMBERED_EVENTS = 4000  # event ids already counted (redeliveries)
_PSI_BINS = 10
_PSI_FLOOR = 1e-4  # share given to an empty bin, so that PSI stays finite
_Z99 = 2.326  # one-sided 99%: a breach is called only beyond what chance explains this often

DECISIONS = Counter(
    "cascade_monitor_rollout_decisions_total",
    "Rollout steps the monitor advanced or rolled back.",
    ["model", "action"],
)


# The rollout plan's thresholds, as the registry's client reads them (0 turns one off): one type, so
# the monitor judges by exactly what the registry stored.
Thresholds = RolloutThresholds


@dataclass(frozen=True)
class Step:
    stage: Stage
    percent: float
    min_requests: int
    min_seconds: float


@dataclass(frozen=True)
class Rollout:
    """A model's latest rollout as the registry has it (GetTraffic), with the traffic around it."""

    model: str
    champion_version: int
    challenger_version: int
    state: RolloutState
    step: int
    step_started_at: datetime
    steps: tuple[Step, ...]
    thresholds: Thresholds
    revision: int  # the traffic revision the step runs under
    cause: str = ""

    @property
    def current(self) -> Step:
        return self.steps[min(self.step, len(self.steps) - 1)]

    def same_step(self, other: Rollout) -> bool:
        return (self.challenger_version, self.step, self.step_started_at) == (
            other.challenger_version,
            other.step,
            other.step_started_at,
        )


class RolloutControl(Protocol):
    """The registry's side of rollouts (its client, in the service)."""

    async def rollout(self, model: str) -> Rollout | None:
        """The model's running rollout, else a split set by hand ("manual"), else its latest ended
        rollout; None if it has none of them."""
        ...

    async def advance(self, model: str, version: int, from_step: int, reason: str) -> Rollout | None: ...

    async def abort(self, model: str, version: int, reason: str) -> Rollout | None: ...


@dataclass
class Evidence:
    """What one step of one rollout has seen so far. Plain data, stored as JSON."""

    challenger_requests: int = 0
    challenger_failures: int = 0
    champion_requests: int = 0
    champion_latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    challenger_latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    shadow_dropped: int = 0
    compared_rows: int = 0
    agreeing_rows: int = 0
    champion_outputs: list[float] = field(default_factory=list)  # the latest KEPT_ROWS compared rows
    challenger_outputs: list[float] = field(default_factory=list)
    # request id -> what each version gave for it, awaiting its labels: "champion" or "challenger"
    # (the version that answered, PredictionLogged), "compared_champion" and "compared_challenger"
    # (rows both scored, PredictionsCompared)
    answered: OrderedDict[str, dict[str, list[float]]] = field(default_factory=OrderedDict)
    # per version role, [prediction, truth] of labelled rows
    labelled: dict[str, list[list[float]]] = field(default_factory=lambda: {"champion": [], "challenger": []})
    # ids of the counted events (live traffic, comparisons), to count a redelivered one once
    seen_events: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def first_time(self, event_id: str) -> bool:
        if event_id in self.seen_events:
            return False
        self.seen_events[event_id] = None
        while len(self.seen_events) > REMEMBERED_EVENTS:
            self.seen_events.popitem(last=False)
        return True

    def remember(self, request_id: str, role: str, outputs: Sequence[float]) -> None:
        answers = self.answered.pop(request_id, {})
        answers[role] = [*answers.get(role, []), *outputs]
        self.answered[request_id] = answers
        while len(self.answered) > REMEMBERED_REQUESTS:
            self.answered.popitem(last=False)

    def to_document(self) -> dict[str, Any]:
        """The evidence as JSON-ready values (its lists shared, not copied: dump it at once)."""
        document = {item.name: getattr(self, item.name) for item in fields(self)}
        document["answered"] = list(self.answered.items())
        document["seen_events"] = list(self.seen_events)
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Evidence:
        document = dict(document)
        document["answered"] = OrderedDict((key, value) for key, value in document["answered"])
        document["seen_events"] = OrderedDict.fromkeys(document["seen_events"])
        return cls(**document)


@dataclass(frozen=True)
class Figures:
    """The step's measurements; NaN where there is nothing to measure yet."""

    challenger_requests: int
    challenger_failures: int
    error_rate: float
    champion_requests: int
    champion_p99_ms: float
    challenger_p99_ms: float
    compared_rows: int
    agreement: float
    difference_ratio: float
    prediction_drift: float
    champion_labelled_rows: int
    challenger_labelled_rows: int
    champion_metric: float
    challenger_metric: float
    shadow_dropped: int
    metric: str  # "accuracy" or "r2"
    drift_bins: int = _PSI_BINS  # the bins (or labels) the PSI was computed over
    # one-sided 99% bounds of the p99s from their order statistics: the challenger's lower, the
    # champion's upper (a p99 of a few hundred requests rests on its few slowest)
    challenger_p99_low_ms: float = math.nan
    champion_p99_high_ms: float = math.nan


@dataclass(frozen=True)
class Decision:
    action: Literal["hold", "advance", "abort"]
    reason: str


@dataclass(frozen=True)
class LiveComparison:
    """GetLiveComparison: the rollout's current step, its figures, and what the policy made of them."""

    rollout: Rollout
    figures: Figures
    verdict: Verdict
    detail: str
    updated_at: datetime


def p99_ms(buckets: Sequence[int], quantile: float = 0.99) -> float:
    """The quantile of a LATENCY_BOUNDS_MS histogram, interpolated linearly inside its bucket (as
    Prometheus' histogram_quantile); the last bound when it falls above it. NaN without requests."""
    total = sum(buckets)
    if total == 0:
        return math.nan
    rank = quantile * total
    below = 0
    for index, count in enumerate(buckets):
        if count and below + count >= rank:
            if index >= len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            lower = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
            upper = LATENCY_BOUNDS_MS[index]
            return float(lower + (upper - lower) * (rank - below) / count)
        below += count
    return float(LATENCY_BOUNDS_MS[-1])


def psi(expected: Vector, actual: Vector, categorical: bool) -> float:
    """Population stability index of `actual` against `expected`: over their labels (categorical),
    or over ten quantile bins of `expected`."""
    if not len(expected) or not len(actual):
        return math.nan
    if categorical:
        labels = np.union1d(expected, actual)
        expected_counts = _counts(np.searchsorted(labels, expected), len(labels))
        actual_counts = _counts(np.searchsorted(labels, actual), len(labels))
    else:
        edges = np.unique(np.quantile(expected, np.linspace(0, 1, _PSI_BINS + 1))[1:-1])
        expected_counts = _counts(np.searchsorted(edges, expected, side="right"), len(edges) + 1)
        actual_counts = _counts(np.searchsorted(edges, actual, side="right"), len(edges) + 1)
    expected_shares = np.maximum(expected_counts / expected_counts.sum(), _PSI_FLOOR)
    actual_shares = np.maximum(actual_counts / actual_counts.sum(), _PSI_FLOOR)
    return float(np.sum((actual_shares - expected_shares) * np.log(actual_shares / expected_shares)))


def _psi_bins(expected: Vector, actual: Vector, categorical: bool) -> int:
    if categorical:
        return len(np.union1d(expected, actual))
    if not len(expected):
        return _PSI_BINS
    return len(np.unique(np.quantile(expected, np.linspace(0, 1, _PSI_BINS + 1))[1:-1])) + 1


def _p99_rank_bound(requests: int, side: int) -> float:
    """The quantile whose order statistic bounds the p99 of `requests` requests from below (side
    -1) or above (+1) with 99% confidence (the normal approximation of the binomial rank)."""
    if requests <= 0:
        return 0.99
    spread = _Z99 * math.sqrt(requests * 0.99 * 0.01)
    rank = 0.99 * requests + side * spread + (1 if side > 0 else 0)
    return min(max(rank / requests, 0.0), 1.0)


def _counts(bins: NDArray[np.intp], size: int) -> Vector:
    return np.bincount(bins, minlength=size).astype(np.float64)


def _live_metric(classifier: bool, pairs: list[list[float]]) -> float:
    if not pairs:
        return math.nan
    values = np.asarray(pairs, dtype=np.float64)
    predicted, truth = values[:, 0], values[:, 1]
    if classifier:
        return float(np.mean(predicted == truth))
    spread = float(np.sum((truth - truth.mean()) ** 2))
    return math.nan if spread == 0 else 1.0 - float(np.sum((truth - predicted) ** 2)) / spread


def figures_of(evidence: Evidence, classifier: bool) -> Figures:
    champion = np.asarray(evidence.champion_outputs, dtype=np.float64)
    challenger = np.asarray(evidence.challenger_outputs, dtype=np.float64)
    agreement = difference = math.nan
    if classifier and evidence.compared_rows:
        agreement = evidence.agreeing_rows / evidence.compared_rows
    if not classifier and len(champion) >= 2:
        spread = float(np.std(champion))
        gap = float(np.quantile(np.abs(challenger - champion), 0.9))
        difference = gap / spread if spread > 0 else (0.0 if gap == 0 else math.inf)
    requests = evidence.challenger_requests
    return Figures(
        challenger_requests=requests,
        challenger_failures=evidence.challenger_failures,
        error_rate=evidence.challenger_failures / requests if requests else math.nan,
        champion_requests=evidence.champion_requests,
        champion_p99_ms=p99_ms(evidence.champion_latency),
        challenger_p99_ms=p99_ms(evidence.challenger_latency),
        challenger_p99_low_ms=p99_ms(evidence.challenger_latency, _p99_rank_bound(requests, -1)),
        champion_p99_high_ms=p99_ms(
            evidence.champion_latency, _p99_rank_bound(evidence.champion_requests, 1)
        ),
        compared_rows=evidence.compared_rows,
        agreement=agreement,
        difference_ratio=difference,
        prediction_drift=psi(champion, challenger, classifier),
        drift_bins=_psi_bins(champion, challenger, classifier),
        champion_labelled_rows=len(evidence.labelled["champion"]),
        challenger_labelled_rows=len(evidence.labelled["challenger"]),
        champion_metric=_live_metric(classifier, evidence.labelled["champion"]),
        challenger_metric=_live_metric(classifier, evidence.labelled["challenger"]),
        shadow_dropped=evidence.shadow_dropped,
        metric="accuracy" if classifier else "r2",
    )


def _wilson(hits: int, trials: int) -> tuple[float, float]:
    """The one-sided 99% Wilson bounds of a share of `hits` in `trials`."""
    share, z = hits / trials, _Z99
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def psi_allowance(rows: int, bins: int) -> float:
    """How high the PSI of two samples of `rows` rows from one distribution goes by chance (its 99th
    percentile, from PSI ~ (1/n + 1/n) chi2(bins - 1)): at 100 rows and ten bins it is 0.43, above
    the usual thresholds, so a small sample's PSI is judged against the threshold plus this."""
    if rows <= 0 or bins < 2:
        return math.inf if rows <= 0 else 0.0
    return 2.0 / rows * float(chi2.ppf(0.99, bins - 1))


def _assess(figures: Figures, limits: Thresholds, classifier: bool) -> tuple[list[str], list[str]]:
    """The thresholds the step breaches, in words with the measured value (judged on enough evidence,
    and beyond what chance explains: one-sided 99% bounds), and those its figures miss by no more
    than chance yet (the step holds on them, gathering evidence)."""
    enough = max(limits.min_compared_rows, 1)
    breaches: list[str] = []
    doubts: list[str] = []
    requests = figures.challenger_requests
    if limits.max_error_rate > 0 and requests >= enough and figures.error_rate > limits.max_error_rate:
        measured = (
            f"error rate {figures.error_rate:.3f} > {limits.max_error_rate:g} "
            f"({figures.challenger_failures} of {requests} requests failed)"
        )
        low, _ = _wilson(figures.challenger_failures, requests)
        (breaches if low > limits.max_error_rate else doubts).append(measured)
    champion_p99, challenger_p99 = figures.champion_p99_ms, figures.challenger_p99_ms
    if (
        limits.max_p99_ratio > 0
        and requests >= enough
        and figures.champion_requests >= enough
        and challenger_p99 > limits.p99_floor_ms
        and challenger_p99 > limits.max_p99_ratio * champion_p99
    ):
        measured = (
            f"p99 latency {challenger_p99:.1f} ms = {challenger_p99 / champion_p99:.2f}x the champion's "
            f"{champion_p99:.1f} ms > {limits.max_p99_ratio:g}x"
        )
        low, high = figures.challenger_p99_low_ms, figures.champion_p99_high_ms
        if low > limits.max_p99_ratio * high:
            breaches.append(f"{measured} (at least {low:.1f} ms against at most {high:.1f} ms)")
        else:
            doubts.append(measured)
    rows = figures.compared_rows
    labelled = min(figures.champion_labelled_rows, figures.challenger_labelled_rows)
    if rows >= enough and not _labels_vouch(figures, labelled, enough):
        over = f"over {rows} compared rows"
        if classifier and limits.min_agreement > 0 and figures.agreement < limits.min_agreement:
            measured = f"agreement {figures.agreement:.2f} < {limits.min_agreement:.2f} {over}"
            _, high = _wilson(round(figures.agreement * rows), rows)
            (breaches if high < limits.min_agreement else doubts).append(measured)
        if (
            not classifier
            and limits.max_difference_ratio > 0
            and figures.difference_ratio > limits.max_difference_ratio
        ):
            breaches.append(
                f"difference ratio {figures.difference_ratio:.2f} > {limits.max_difference_ratio:g} {over} "
                "(p90 |challenger - champion| over the champion's std)"
            )
        if limits.max_prediction_drift > 0 and figures.prediction_drift > limits.max_prediction_drift:
            allowance = psi_allowance(min(rows, KEPT_ROWS), figures.drift_bins)
            measured = (
                f"prediction drift (PSI) {figures.prediction_drift:.3f} > {limits.max_prediction_drift:g}"
            )
            if figures.prediction_drift > limits.max_prediction_drift + allowance:
                breaches.append(f"{measured} + {allowance:.3f} (chance at {rows} rows) {over}")
            else:
                doubts.append(f"{measured} {over}, within chance ({allowance:.3f})")
    drop = figures.champion_metric - figures.challenger_metric
    if limits.max_metric_drop > 0 and labelled >= enough and drop > limits.max_metric_drop:
        measured = (
            f"live {figures.metric} {figures.challenger_metric:.3f} vs the champion's "
            f"{figures.champion_metric:.3f}: {drop:.3f} lower > {limits.max_metric_drop:g} "
            f"(over {figures.challenger_labelled_rows} and {figures.champion_labelled_rows} labelled rows)"
        )
        allowance = 0.0
        if classifier:  # accuracies are shares: their difference has a known standard error
            mine, theirs = figures.challenger_metric, figures.champion_metric
            allowance = _Z99 * math.sqrt(
                mine * (1 - mine) / figures.challenger_labelled_rows
                + theirs * (1 - theirs) / figures.champion_labelled_rows
            )
        (breaches if drop > limits.max_metric_drop + allowance else doubts).append(measured)
    return breaches, doubts


def _labels_vouch(figures: Figures, labelled: int, enough: int) -> bool:
    """Whether ground truth settles what the proxies only suggest. Agreement, the difference ratio
    and prediction drift measure how far the challenger departs from the champion, which stands in
    for correctness while there are no labels. After a real shift a better challenger departs from
    the champion exactly where the champion is now wrong (0.85-0.88 agreement measured on the loop
    benchmark's data), so once both versions have enough labelled rows and the challenger's live
    metric is at least the champion's, those departures are not held against it."""
    return (
        labelled >= enough
        and math.isfinite(figures.challenger_metric)
        and math.isfinite(figures.champion_metric)
        and figures.challenger_metric >= figures.champion_metric
    )


def _summary(figures: Figures, classifier: bool) -> str:
    parts = [f"{figures.challenger_requests} requests, {figures.challenger_failures} failed"]
    if not math.isnan(figures.challenger_p99_ms):
        parts.append(f"p99 {figures.challenger_p99_ms:.1f} ms vs {figures.champion_p99_ms:.1f} ms")
    if figures.compared_rows:
        closeness = (
            f"agreement {figures.agreement:.3f}"
            if classifier
            else f"difference ratio {figures.difference_ratio:.3f}"
        )
        parts.append(
            f"{closeness}, PSI {figures.prediction_drift:.3f} over {figures.compared_rows} compared rows"
        )
    if figures.challenger_labelled_rows and figures.champion_labelled_rows:
        parts.append(
            f"live {figures.metric} {figures.challenger_metric:.3f} vs {figures.champion_metric:.3f}"
        )
    return "; ".join(parts)


def judge(rollout: Rollout, evidence: Evidence, classifier: bool, now: datetime) -> tuple[Figures, Decision]:
    """The step's figures and what to do about them (see the module's docstring)."""
    figures = figures_of(evidence, classifier)
    limits = rollout.thresholds
    step = rollout.current
    where = f"step {rollout.step + 1} of {len(rollout.steps)} ({step.stage} {step.percent:g}%)"
    breaches, doubts = _assess(figures, limits, classifier)
    if breaches:
        return figures, Decision("abort", f"{'; '.join(breaches)} at {where}")
    elapsed = (now - rollout.step_started_at).total_seconds()
    short = []
    if figures.challenger_requests < step.min_requests:
        short.append(f"{figures.challenger_requests} of {step.min_requests} requests")
    if elapsed < step.min_seconds:
        short.append(f"{elapsed:.0f} of {step.min_seconds:g} s")
    if figures.compared_rows < limits.min_compared_rows:
        short.append(f"{figures.compared_rows} of {limits.min_compared_rows} compared rows")
    short.extend(f"{doubt}, not yet beyond chance" for doubt in doubts)
    summary = _summary(figures, classifier)
    if short:
        return figures, Decision("hold", f"{where} holds: {', '.join(short)} so far ({summary})")
    return figures, Decision("advance", f"{where} passed in {elapsed:.0f} s: {summary}")


@dataclass
class _Tracked:
    rollout: Rollout
    evidence: Evidence
    verdict: Verdict = "holding"
    detail: str = ""
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    dirty: bool = True  # changed since last saved
    task: str = ""  # "classification" or "regression", once known


class RolloutPolicy:
    """Follows each model's rollout (ModelTrafficChanged, and the registry at start-up), gathers the
    evidence of its current step, and decides on `tick`. One instance per monitor process."""

    def __init__(
        self,
        store: MonitorStore,
        control: RolloutControl,
        task_of: TaskOf,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        refresh_spacing_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.control = control
        self.task_of = task_of
        self.clock = clock
        self.refresh_spacing_seconds = refresh_spacing_seconds
        self._models: dict[str, _Tracked] = {}
        self._refreshed: dict[str, datetime] = {}  # model -> last time its rollout was read
        self._revisions_read: dict[str, int] = {}  # model -> the newest reported revision read
        self._lock = asyncio.Lock()

    # -- following rollouts --------------------------------------------------------------------
    async def resume(self) -> None:
        """At start-up: the steps on record, then each model's rollout as the registry has it now.
        A registry that cannot be reached leaves the records as they are (the next change or tick
        reads it again)."""
        for record in self.store.rollout_steps():
            try:
                document = json.loads(record.evidence_json)
                rollout = _rollout_from(document["rollout"])
                evidence = Evidence.from_document(document["evidence"])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning(
                    "%s: the stored rollout step cannot be read (%s); starting it afresh", record.model, exc
                )
                continue
            self._models[record.model] = _Tracked(
                rollout,
                evidence,
                verdict=document.get("verdict", "holding"),
                detail=document.get("detail", ""),
                updated_at=record.updated_at,
                dirty=False,
            )
            await self._refresh_quietly(record.model)

    async def on_traffic_changed(self, event: ModelTrafficChanged) -> None:
        """Re-read the rollout from the registry: the event only says that something changed."""
        await self.refresh(event.model)

    async def refresh(self, model: str) -> None:
        rollout = await self.control.rollout(model)
        self._refreshed[model] = self.clock()
        if rollout is not None:
            self._follow(rollout)
        elif model in self._models and self._models[model].rollout.state == "manual":
            del self._models[model]  # the split set by hand was taken off: nothing on live traffic

    def _follow(self, rollout: Rollout) -> None:
        tracked = self._models.get(rollout.model)
        if tracked is not None and tracked.rollout.same_step(rollout):
            ended = tracked.rollout.state in _LIVE and rollout.state not in _LIVE
            tracked.rollout = rollout
            if ended:
                self._ended(tracked)
            return
        if tracked is not None and tracked.rollout.state in _LIVE:
            log.info(
                "%s: v%d step %d is over (now v%d step %d, %s)",
                rollout.model,
                tracked.rollout.challenger_version,
                tracked.rollout.step,
                rollout.challenger_version,
                rollout.step,
                rollout.state,
            )
        tracked = _Tracked(rollout, Evidence(), updated_at=self.clock())
        self._models[rollout.model] = tracked
        if rollout.state == "manual":
            tracked.detail = "a split set by hand: the monitor compares, a person decides"
        elif rollout.state != "running":
            self._ended(tracked)
        else:
            tracked.detail = f"step {rollout.step + 1} of {len(rollout.steps)} started"

    @staticmethod
    def _ended(tracked: _Tracked) -> None:
        rollout = tracked.rollout
        tracked.verdict = "promoted" if rollout.state == "promoted" else "rolled_back"
        tracked.detail = rollout.cause or tracked.detail
        tracked.dirty = True

    async def _refresh_quietly(self, model: str) -> None:
        try:
            await self.refresh(model)
        except CascadeError as exc:
            log.warning("%s: cannot read its rollout from the registry now: %s", model, exc)
            self._refreshed[model] = self.clock()

    async def _running(
        self, model: str, revision: int | None = None, other_step: Callable[[Rollout], bool] | None = None
    ) -> _Tracked | None:
        """The model's tracked running rollout. The registry is read again first when the evidence
        seems to belong to a step the monitor has not heard of (serving may follow a change before
        the monitor does, even the monitor's own advance while its answer is on the way): for a model
        not tracked, or evidence of another step (`other_step`), at most every
        `refresh_spacing_seconds`; for a traffic `revision` newer than the tracked one, once per
        revision."""
        tracked = self._models.get(model)
        newer = revision is not None and tracked is not None and revision > tracked.rollout.revision
        if newer and revision is not None and revision > self._revisions_read.get(model, 0):
            self._revisions_read[model] = revision
            await self._refresh_quietly(model)
        elif tracked is None or (other_step is not None and other_step(tracked.rollout)):
            last = self._refreshed.get(model)
            if last is None or (self.clock() - last).total_seconds() >= self.refresh_spacing_seconds:
                await self._refresh_quietly(model)
        tracked = self._models.get(model)
        return tracked if tracked is not None and tracked.rollout.state in _LIVE else None

    # -- evidence ------------------------------------------------------------------------------
    async def on_live_traffic(self, event: LiveTrafficReported) -> None:
        tracked = await self._running(event.model, revision=event.traffic_revision)
        if tracked is None or event.traffic_revision < tracked.rollout.revision:
            return
        rollout, evidence = tracked.rollout, tracked.evidence
        if not evidence.first_time(event.id):
            return
        challenger_role = rollout.current.stage
        for stats in event.versions:
            buckets = stats.latency_buckets
            if len(buckets) != len(LATENCY_BOUNDS_MS) + 1:
                raise InvalidArgument(
                    f"{event.model}: a latency histogram of {len(buckets)} buckets, not "
                    f"{len(LATENCY_BOUNDS_MS) + 1}"
                )
            if stats.version == rollout.challenger_version and stats.role == challenger_role:
                evidence.challenger_requests += stats.requests
                evidence.challenger_failures += stats.failures
                evidence.challenger_latency = _added(evidence.challenger_latency, buckets)
            elif stats.version == rollout.champion_version and stats.role == "champion":
                evidence.champion_requests += stats.requests
                evidence.champion_latency = _added(evidence.champion_latency, buckets)
        evidence.shadow_dropped += event.shadow_dropped
        tracked.dirty = True

    async def on_compared(self, event: PredictionsCompared) -> None:
        def other_step(rollout: Rollout) -> bool:
            return (event.challenger_version, event.challenger_role) != (
                rollout.challenger_version,
                rollout.current.stage,
            ) and event.time >= rollout.step_started_at

        tracked = await self._running(event.model, other_step=other_step)
        if tracked is None:
            return
        rollout, evidence = tracked.rollout, tracked.evidence
        if (
            event.challenger_version != rollout.challenger_version
            or event.champion_version != rollout.champion_version
            or event.challenger_role != rollout.current.stage
            or event.time < rollout.step_started_at
            or not evidence.first_time(event.id)
        ):
            return
        champion = np.asarray(event.champion_outputs, dtype=np.float64)
        challenger = np.asarray(event.challenger_outputs, dtype=np.float64)
        usable = np.isfinite(champion) & np.isfinite(challenger)
        evidence.compared_rows += int(usable.sum())
        evidence.agreeing_rows += int(np.sum(champion[usable] == challenger[usable]))
        evidence.champion_outputs = [*evidence.champion_outputs, *champion[usable].tolist()][-KEPT_ROWS:]
        evidence.challenger_outputs = [*evidence.challenger_outputs, *challenger[usable].tolist()][
            -KEPT_ROWS:
        ]
        for request_id, mine, theirs in zip(
            event.request_ids, event.champion_outputs, event.challenger_outputs, strict=True
        ):
            if request_id:
                evidence.remember(request_id, "compared_champion", [mine])
                evidence.remember(request_id, "compared_challenger", [theirs])
        tracked.dirty = True

    async def on_prediction_logged(self, event: PredictionLogged) -> None:
        """Remember what the version that answered said, for the labels to come."""
        if not event.request_id or not event.inputs:
            return
        tracked = await self._running(event.model)
        if tracked is None:
            return
        rollout = tracked.rollout
        if event.model_version == rollout.challenger_version and event.role == "canary":
            role = "challenger"
        elif event.model_version == rollout.champion_version and event.role == "champion":
            role = "champion"
        else:
            return
        if event.time < rollout.step_started_at:
            return
        # Not deduplicated by id (logs are many, the remembered ids few): a redelivered log doubles
        # its request's rows, whose labels then do not line up and are skipped.
        per_row = np.asarray(event.outputs, dtype=np.float64).ravel()
        if not len(per_row) or len(per_row) % len(event.inputs):
            return
        tracked.evidence.remember(
            event.request_id, role, per_row.reshape(len(event.inputs), -1)[:, 0].tolist()
        )

    async def on_labels(self, model: str, request_id: str, labels: Sequence[float]) -> None:
        """Join ground truth to each version's answer to the request: what the answering version
        said (PredictionLogged) and, for compared rows, what both said."""
        tracked = self._models.get(model)
        if tracked is None or tracked.rollout.state not in _LIVE:
            return
        evidence = tracked.evidence
        answers = evidence.answered.pop(request_id, None)
        if answers is None:
            return
        for role in ("champion", "challenger"):
            # rows both versions scored first: the same rows for both, the fairest comparison
            outputs = answers.get(f"compared_{role}") or answers.get(role) or []
            if len(outputs) != len(labels):
                continue
            pairs = [[float(p), float(t)] for p, t in zip(outputs, labels, strict=True) if math.isfinite(t)]
            evidence.labelled[role] = [*evidence.labelled[role], *pairs][-KEPT_LABELLED:]
        tracked.dirty = True

    # -- deciding ------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Judge every running step; advance or roll back through the registry; keep the evidence."""
        async with self._lock:
            for model, tracked in list(self._models.items()):
                if tracked.rollout.state == "running":
                    try:
                        await self._decide(model, tracked)
                    except Exception as exc:  # one model's trouble must not stop the others' decisions
                        if classify(exc) == "permanent":
                            log.exception("%s: the rollout step could not be decided", model)
                        else:
                            log.warning("%s: the rollout step could not be decided now: %s", model, exc)
                self._save(model, tracked)

    async def _decide(self, model: str, tracked: _Tracked) -> None:
        rollout = tracked.rollout
        if not tracked.task:
            tracked.task = await self._task(model, rollout)
        classifier = tracked.task != "regression"
        now = self.clock()
        _, decision = judge(rollout, tracked.evidence, classifier, now)
        if decision.action == "hold":
            if tracked.detail != decision.reason:
                tracked.verdict, tracked.detail = "holding", decision.reason
                tracked.updated_at, tracked.dirty = now, True
            return
        version = rollout.challenger_version
        try:
            if decision.action == "abort":
                log.warning("%s v%d: rolling back: %s", model, version, decision.reason)
                after = await self.control.abort(model, version, decision.reason)
            else:
                log.info("%s v%d: advancing: %s", model, version, decision.reason)
                after = await self.control.advance(model, version, rollout.step, decision.reason)
        except (FailedPrecondition, NotFound) as exc:  # moved or ended by someone else meanwhile
            log.info("%s v%d: the registry refused (%s); reading the rollout again", model, version, exc)
            await self.refresh(model)
            return
        DECISIONS.labels(model, decision.action).inc()
        tracked.verdict = "rolled_back" if decision.action == "abort" else "advancing"
        tracked.detail, tracked.updated_at, tracked.dirty = decision.reason, now, True
        if after is None:
            return
        if after.same_step(rollout):
            tracked.rollout = after
            if after.state != "running":
                tracked.verdict = "promoted" if after.state == "promoted" else "rolled_back"
            return
        # the next step (or the promotion): its evidence starts afresh; the last decision stays shown
        self._save(model, tracked)
        self._follow(after)
        following = self._models[model]
        if after.state == "running":
            following.detail = f"{decision.reason}; step {after.step + 1} of {len(after.steps)} started"
        else:
            following.verdict = "promoted" if after.state == "promoted" else "rolled_back"
            following.detail = decision.reason
        following.task = tracked.task

    async def _task(self, model: str, rollout: Rollout) -> str:
        """The model's task as the registry's tags (or its dataset) say; guessed from the compared
        outputs when they say nothing: whole numbers only -> a classifier."""
        task = ""
        try:
            task = await self.task_of(model, rollout.champion_version)
        except CascadeError as exc:
            log.warning("%s: its task is unknown (%s)", model, exc)
        if task in ("classification", "regression"):
            return task
        outputs = np.asarray(self._models[model].evidence.champion_outputs)
        if not len(outputs):
            return ""  # ask again next tick
        guess = "classification" if np.all(outputs == np.round(outputs)) else "regression"
        log.warning("%s: no task on record; judged as %s from its outputs", model, guess)
        return guess

    # -- reading -------------------------------------------------------------------------------
    def comparison(self, model: str) -> LiveComparison:
        if not model:
            raise InvalidArgument("a model name is required")
        tracked = self._models.get(model)
        if tracked is None:
            raise NotFound(f"model {model!r} has no challenger on live traffic and no rollout on record")
        figures, _ = judge(tracked.rollout, tracked.evidence, tracked.task != "regression", self.clock())
        return LiveComparison(tracked.rollout, figures, tracked.verdict, tracked.detail, tracked.updated_at)

    def _save(self, model: str, tracked: _Tracked) -> None:
        if not tracked.dirty:
            return
        rollout = tracked.rollout
        document = {
            "rollout": _rollout_document(rollout),
            "evidence": tracked.evidence.to_document(),
            "verdict": tracked.verdict,
            "detail": tracked.detail,
        }
        self.store.save_rollout_step(
            RolloutStepRecord(
                model,
                rollout.challenger_version,
                rollout.step,
                rollout.step_started_at,
                json.dumps(document),
                tracked.updated_at,
            )
        )
        tracked.dirty = False


def _added(total: list[int], more: Sequence[int]) -> list[int]:
    return [a + b for a, b in zip(total, more, strict=True)]


def _rollout_document(rollout: Rollout) -> dict[str, Any]:
    document = asdict(rollout)
    document["step_started_at"] = rollout.step_started_at.isoformat()
    return document


def _rollout_from(document: dict[str, Any]) -> Rollout:
    return Rollout(
        **{
            **document,
            "step_started_at": datetime.fromisoformat(document["step_started_at"]),
            "steps": tuple(Step(**step) for step in document["steps"]),
            "thresholds": Thresholds(**document["thresholds"]),
        }
    )
