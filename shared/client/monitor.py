"""The typed client of the monitor: a model's latest drift report and its history of verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from cascade.client.base import ServiceClient
from cascade.client.calls import RemoteService, call
from cascade.client.records import DriftReport, FeatureDrift
from cascade.stubs.cascade.monitor.v1 import monitor_pb2 as pb
from cascade.stubs.cascade.monitor.v1 import monitor_pb2_grpc as pb_grpc

__all__ = ["DriftEvent", "DriftHistory", "MonitorClient", "Verdict"]


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
