"""MonitorService over gRPC: converts the request to a domain call and the report to protobuf."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from cascade.errors import NotFound, grpc_errors
from cascade.grpc_io import ServicerContext
from cascade.security import method_roles
from cascade.services.monitor.core import MonitorCore
from cascade.services.monitor.drift import FeatureDrift
from cascade.services.monitor.rollout import LiveComparison, RolloutPolicy
from cascade.services.monitor.store import DriftEventRecord, DriftReport, Performance, Verdict
from cascade.stubs.cascade.monitor.v1 import monitor_pb2 as pb
from cascade.stubs.cascade.monitor.v1 import monitor_pb2_grpc

__all__ = [
    "DEFAULT_HISTORY",
    "SERVICE_NAME",
    "MonitorServicer",
    "comparison_message",
    "history_message",
    "report_message",
]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MonitorService"].full_name
# The role each RPC needs (cascade.security).
ROLES = method_roles(
    SERVICE_NAME,
    {
        "GetDriftReport": "monitor:read",
        "GetDriftHistory": "monitor:read",
        "GetLiveComparison": "monitor:read",
    },
)
DEFAULT_HISTORY = 100


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, core: MonitorCore, rollouts: RolloutPolicy | None = None) -> None:
        self.core = core
        self.rollouts = rollouts

    @grpc_errors
    async def GetDriftReport(
        self, request: pb.GetDriftReportRequest, context: ServicerContext
    ) -> pb.DriftReport:
        return report_message(self.core.latest_report(request.model))

    @grpc_errors
    async def GetDriftHistory(
        self, request: pb.GetDriftHistoryRequest, context: ServicerContext
    ) -> pb.DriftHistory:
        verdicts, events = self.core.history(request.model, request.limit or DEFAULT_HISTORY)
        return history_message(request.model, verdicts, events)

    @grpc_errors
    async def GetLiveComparison(
        self, request: pb.GetLiveComparisonRequest, context: ServicerContext
    ) -> pb.LiveComparison:
        if self.rollouts is None:
            raise NotFound("this monitor follows no rollouts")
        return comparison_message(self.rollouts.comparison(request.model))


def comparison_message(comparison: LiveComparison) -> pb.LiveComparison:
    rollout, figures = comparison.rollout, comparison.figures
    return pb.LiveComparison(
        model=rollout.model,
        champion_version=rollout.champion_version,
        challenger_version=rollout.challenger_version,
        stage=rollout.current.stage,
        step=rollout.step,
        step_started_at=_timestamp(rollout.step_started_at),
        challenger_requests=figures.challenger_requests,
        challenger_failures=figures.challenger_failures,
        challenger_error_rate=figures.error_rate,
        champion_p99_ms=figures.champion_p99_ms,
        challenger_p99_ms=figures.challenger_p99_ms,
        compared_rows=figures.compared_rows,
        agreement=figures.agreement,
        difference_ratio=figures.difference_ratio,
        prediction_drift=figures.prediction_drift,
        champion_labelled_rows=figures.champion_labelled_rows,
        challenger_labelled_rows=figures.challenger_labelled_rows,
        champion_metric=figures.champion_metric,
        challenger_metric=figures.challenger_metric,
        verdict=comparison.verdict,
        detail=comparison.detail,
        updated_at=_timestamp(comparison.updated_at),
        shadow_dropped=figures.shadow_dropped,
    )


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _feature(feature: FeatureDrift) -> pb.FeatureDrift:
    message = pb.FeatureDrift(
        feature=feature.feature,
        test=feature.test,
        statistic=feature.statistic,
        p_value=feature.p_value,
        threshold=feature.threshold,
        drifted=feature.drifted,
    )
    shares = feature.distribution
    if shares is not None:
        message.bin_edges.extend(shares.edges)
        message.categories.extend(shares.categories)
        message.reference_frequencies.extend(shares.reference)
        message.window_frequencies.extend(shares.window)
    return message


def _verdict(verdict: Verdict) -> pb.Verdict:
    message = pb.Verdict(
        model_version=verdict.model_version,
        reference_dataset_version=verdict.reference_dataset_version,
        window_size=verdict.window_size,
        predictions_seen=verdict.predictions_seen,
        dataset_drifted=verdict.dataset_drifted,
        drifted_features=list(verdict.drifted_features),
        computed_at=_timestamp(verdict.computed_at),
        features=[_feature(feature) for feature in verdict.features],
    )
    if verdict.prediction is not None:
        message.prediction.CopyFrom(_feature(verdict.prediction))
    return message


def _performance(performance: Performance) -> pb.Performance:
    message = pb.Performance(
        metric=performance.metric,
        labelled_rows=performance.labelled_rows,
        threshold=performance.threshold,
        decayed=performance.decayed,
        estimate_note=performance.estimate_note,
    )
    if performance.value is not None:
        message.value = performance.value
    if performance.champion_value is not None:
        message.champion_value = performance.champion_value
    if performance.estimated_accuracy is not None:
        message.estimated_accuracy = performance.estimated_accuracy
    return message


def report_message(report: DriftReport) -> pb.DriftReport:
    message = pb.DriftReport(
        model=report.model,
        model_version=report.model_version,
        reference_dataset_version=report.reference_dataset_version,
        window_size=report.window_size,
        features=[_feature(feature) for feature in report.features],
        dataset_drifted=report.dataset_drifted,
        computed_at=_timestamp(report.computed_at),
        predictions_seen=report.predictions_seen,
        reference_rows=report.reference_rows,
        attribution_shift=[
            pb.AttributionShift(
                feature=shift.feature,
                reference_share=shift.reference_share,
                window_share=shift.window_share,
            )
            for shift in report.attribution_shift
        ],
        attribution_note=report.attribution_note,
    )
    if report.prediction is not None:
        message.prediction.CopyFrom(_feature(report.prediction))
    if report.performance is not None:
        message.performance.CopyFrom(_performance(report.performance))
    return message


def history_message(model: str, verdicts: list[Verdict], events: list[DriftEventRecord]) -> pb.DriftHistory:
    return pb.DriftHistory(
        model=model,
        verdicts=[_verdict(verdict) for verdict in verdicts],
        drift_events=[
            pb.DriftEvent(
                event_id=event.event_id,
                kind=event.kind,
                model_version=event.model_version,
                summary=event.summary,
                emitted_at=_timestamp(event.emitted_at),
                triggered=event.triggered,
                held_back=not event.emitted,
            )
            for event in events
        ],
    )
