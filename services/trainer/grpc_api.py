"""TrainerService over gRPC: a retrain request becomes an event for the replica owning the model."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from cascade.errors import InvalidArgument, grpc_errors
from cascade.events import Event, TrainingRequested
from cascade.grpc_io import ServicerContext, receive_to_file, split_upload
from cascade.names import check_name
from cascade.security import audit_actor, method_roles
from cascade.services.trainer.core import ImportRequest, TrainerCore
from cascade.services.trainer.importing import ModelFormat
from cascade.stubs.cascade.trainer.v1 import trainer_pb2 as pb
from cascade.stubs.cascade.trainer.v1 import trainer_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TrainerService"].full_name
# The role each RPC needs (cascade.security). Importing a model is training it elsewhere: it makes a
# candidate that passes the same validation before it serves, so it needs the same role. The one
# import that could do more, a pickle (code), is off unless the operator allows it.
ROLES = method_roles(SERVICE_NAME, {"RequestTraining": "trainer:train", "ImportModel": "trainer:train"})

_FORMATS: dict[int, ModelFormat] = {
    pb.MODEL_FORMAT_ONNX: "onnx",
    pb.MODEL_FORMAT_SKLEARN_PICKLE: "sklearn_pickle",
    pb.MODEL_FORMAT_XGBOOST: "xgboost",
    pb.MODEL_FORMAT_LIGHTGBM: "lightgbm",
}


class TrainerServicer(pb_grpc.TrainerServiceServicer):
    def __init__(
        self,
        publish: Callable[[Event], Awaitable[None]],
        core: TrainerCore,
        max_import_bytes: int,
        spool_dir: Path | None = None,
    ) -> None:
        self.publish = publish
        self.core = core
        self.max_import_bytes = max_import_bytes
        self.spool_dir = spool_dir or Path(tempfile.gettempdir()) / "cascade-trainer-imports"

    @grpc_errors
    async def RequestTraining(
        self, request: pb.RequestTrainingRequest, context: ServicerContext
    ) -> pb.RequestTrainingResponse:
        check_name("model", request.model)
        event = TrainingRequested(
            source="cascade/trainer",
            subject=request.model,
            model=request.model,
            actor=audit_actor(request.actor) or "unknown",
            reason=request.reason,
        )
        await self.publish(event)
        return pb.RequestTrainingResponse(request_id=event.id)

    @grpc_errors
    async def ImportModel(
        self, request_iterator: AsyncIterator[pb.ImportModelRequest], context: ServicerContext
    ) -> pb.ImportModelResponse:
        header, chunks = await split_upload(request_iterator, "ImportModel")
        check_name("model", header.model)
        if header.format not in _FORMATS:
            raise InvalidArgument("format is required: ONNX, SKLEARN_PICKLE, XGBOOST or LIGHTGBM")
        upload = await receive_to_file(chunks, self.spool_dir, self.max_import_bytes)
        try:
            data = await asyncio.to_thread(upload.path.read_bytes)
        finally:
            upload.discard()
        outcome = await self.core.import_model(
            ImportRequest(
                model=header.model,
                model_format=_FORMATS[header.format],
                features=tuple(header.features),
                task=header.task,
                dataset=header.dataset,
                dataset_version=header.dataset_version,
                parity_rows_csv=header.parity_rows_csv,
                actor=audit_actor(header.actor) or "unknown",
                reason=header.reason,
            ),
            data,
        )
        return pb.ImportModelResponse(
            model_version=outcome.model_version,
            parity_max_difference=outcome.parity_max_difference,
            parity_rows=outcome.parity_rows,
            monitored=outcome.monitored,
        )
