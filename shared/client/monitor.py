"""The typed client of the monitor: a model's latest drift report and its history of verdicts, and
what it sees of a challenger on live traffic during a rollout."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from cascade.client.base import ServiceClient
from cascade.client.calls import RemoteService, call
from cascade.client.records import DriftReport, FeatureDrift
from cascade.stubs.cascade.monitor.v1 import monitor_pb2 as pb
from cascade.stubs.cascade.monitor.v1 import monitor_pb2_grpc as pb_grpc

__all__ = ["DriftEvent", "DriftHistory", "LiveComparison", "MonitorClient", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """One past evaluation of a model's window against its reference."""

    model_version: int
    reference_dataset_version: str
    window_size: int
    predictions_seen: int
    dataset_drifted: bool
    drifted_features: tuple[str, ...]
    computed_at: datetime | None
    # Each feature's test at the time (statistic, threshold, drifted; no distributions), and the
    # prediction's; empty and None for verdicts the monitor stored before it kept them.
    features: tuple[FeatureDrift, ...] = ()
    prediction: FeatureDrift | None = None


@dataclass(frozen=True)
class DriftEvent:
    """A drift or decay the monitor's rule acted on: emitted as *drift detected*, or held back
    (`emitted` False: within the cooldown, or a model not retrained automatically), and what it
    triggered, in words (empty for events recorded before the monitor said)."""

    event_id: str
    kind: str
    model_version: int
    summary: str
    emitted_at: datetime | None
    triggered: str = ""
    emitted: bool = True


@dataclass(frozen=True)
class DriftHistory:
    model: str
    verdicts: tuple[Verdict, ...]
    drift_events: tuple[DriftEvent, ...]

    @classmethod
    def of(cls, history: pb.DriftHistory) -> DriftHistory:
        def at(stamp: Timestamp) -> datetime | None:
            unset = stamp.seconds == 0 and stamp.nanos == 0
            return None if unset else stamp.ToDatetime(tzinfo=UTC)

        return cls(
            model=history.model,
            verdicts=tuple(
                Verdict(
                    model_version=v.model_version,
                    reference_dataset_version=v.reference_dataset_version,
                    window_size=v.window_size,
                    predictions_seen=v.predictions_seen,
                    dataset_drifted=v.dataset_drifted,
                    drifted_features=tuple(v.drifted_features),
                    computed_at=at(v.computed_at),
                    features=tuple(FeatureDrift.of(f) for f in v.features),
                    prediction=FeatureDrift.of(v.prediction) if v.HasField("prediction") else None,
                )
                for v in history.verdicts
            ),
            drift_events=tuple(
                DriftEvent(
                    e.event_id,
                    e.kind,
                    e.model_version,
                    e.summary,
                    at(e.emitted_at),
                    triggered=e.triggered,
                    emitted=not e.held_back,
                )
                for e in history.drift_events
            ),
        )


def _at(stamp: Timestamp, present: bool = True) -> datetime | None:
    unset = not present or (stamp.seconds == 0 and stamp.nanos == 0)
    return None if unset else stamp.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True)
class LiveComparison:
    """A model's challenger against its champion on live traffic over the current rollout step,
    summed over serving's replicas, and the rollout policy's verdict ("holding", "advancing",
    "promoted", "rolled_back") with why. NaN where there is nothing to measure yet: `agreement`
    is a classifier's, `difference_ratio` a regressor's; the metrics need labels."""

    model: str
    champion_version: int
    challenger_version: int
    stage: str  # "shadow" or "canary"
    step: int
    step_started_at: datetime | None
    challenger_requests: int
    challenger_failures: int
    challenger_error_rate: float
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
    verdict: str
    detail: str
    updated_at: datetime | None
    shadow_dropped: int

    @classmethod
    def of(cls, comparison: pb.LiveComparison) -> LiveComparison:
        return cls(
            model=comparison.model,
            champion_version=comparison.champion_version,
            challenger_version=comparison.challenger_version,
            stage=comparison.stage,
            step=comparison.step,
            step_started_at=_at(comparison.step_started_at, comparison.HasField("step_started_at")),
            challenger_requests=comparison.challenger_requests,
            challenger_failures=comparison.challenger_failures,
            challenger_error_rate=comparison.challenger_error_rate,
            champion_p99_ms=comparison.champion_p99_ms,
            challenger_p99_ms=comparison.challenger_p99_ms,
            compared_rows=comparison.compared_rows,
            agreement=comparison.agreement,
            difference_ratio=comparison.difference_ratio,
            prediction_drift=comparison.prediction_drift,
            champion_labelled_rows=comparison.champion_labelled_rows,
            challenger_labelled_rows=comparison.challenger_labelled_rows,
            champion_metric=comparison.champion_metric,
            challenger_metric=comparison.challenger_metric,
            verdict=comparison.verdict,
            detail=comparison.detail,
            updated_at=_at(comparison.updated_at, comparison.HasField("updated_at")),
            shadow_dropped=comparison.shadow_dropped,
        )


class MonitorClient(ServiceClient):
    """The monitor's RPCs as async methods; failures are Cascade errors naming the monitor."""

    SERVICE = "monitor"

    def __init__(self, service: RemoteService, *, timeout: float | None = None) -> None:
        super().__init__(service, timeout=timeout)
        self._stub = pb_grpc.MonitorServiceStub(service.channel)

    async def drift_report(self, model: str) -> DriftReport:
        """The champion's latest report; NotFound until the monitor has evaluated the model."""
        request = pb.GetDriftReportRequest(model=model)
        response = await call(
            self.service,
            f"reading the drift report of {model}",
            lambda: self._stub.GetDriftReport(request, timeout=self.timeout),
        )
        return DriftReport.of(response)

    async def drift_history(self, model: str, limit: int = 0) -> DriftHistory:
        """The model's past verdicts and drift events, newest first (`limit` 0: 100)."""
        request = pb.GetDriftHistoryRequest(model=model, limit=limit)
        response = await call(
            self.service,
            f"reading the drift history of {model}",
            lambda: self._stub.GetDriftHistory(request, timeout=self.timeout),
        )
        return DriftHistory.of(response)

    async def get_live_comparison(self, model: str) -> LiveComparison:
        """The model's challenger against its champion in the current (or last) rollout step;
        NotFound when the model has no challenger on live traffic and no rollout on record."""
        request = pb.GetLiveComparisonRequest(model=model)
        response = await call(
            self.service,
            f"reading the live comparison of {model}",
            lambda: self._stub.GetLiveComparison(request, timeout=self.timeout),
        )
        return LiveComparison.of(response)
