"""MonitorService over gRPC: converts the request to a domain call and the report to protobuf."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from services.monitor.core import MonitorCore
from services.monitor.store import DriftReport
from shared.errors import grpc_errors
from shared.grpc_io import ServicerContext
from shared.stubs.cascade.monitor.v1 import monitor_pb2 as pb
from shared.stubs.cascade.monitor.v1 import monitor_pb2_grpc

__all__ = ["SERVICE_NAME", "MonitorServicer", "report_message"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MonitorService"].full_name


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, core: MonitorCore) -> None:
        self.core = core

    @grpc_errors
    async def GetDriftReport(
        self, request: pb.GetDriftReportRequest, context: ServicerContext
    ) -> pb.DriftReport:
        return report_message(self.core.latest_report(request.model))


def report_message(report: DriftReport) -> pb.DriftReport:
    computed_at = Timestamp()
    computed_at.FromDatetime(report.computed_at)
    return pb.DriftReport(
        model=report.model,
        model_version=report.model_version,
        reference_dataset_version=report.reference_dataset_version,
        window_size=report.window_size,
        features=[
            pb.FeatureDrift(
                feature=feature.feature,
                test=feature.test,
                statistic=feature.statistic,
                p_value=feature.p_value,
                threshold=feature.threshold,
                drifted=feature.drifted,
            )
            for feature in report.features
        ],
        dataset_drifted=report.dataset_drifted,
        computed_at=computed_at,
        predictions_seen=report.predictions_seen,
    )
