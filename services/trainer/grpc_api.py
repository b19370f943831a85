"""TrainerService over gRPC: a retrain request becomes an event for the replica owning the model."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from shared.errors import grpc_errors
from shared.events import Event, TrainingRequested
from shared.grpc_io import ServicerContext
from shared.names import check_name
from shared.security import audit_actor, method_roles
from shared.stubs.cascade.trainer.v1 import trainer_pb2 as pb
from shared.stubs.cascade.trainer.v1 import trainer_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TrainerService"].full_name
# The role each RPC needs (shared.security).
ROLES = method_roles(SERVICE_NAME, {"RequestTraining": "trainer:train"})


class TrainerServicer(pb_grpc.TrainerServiceServicer):
    def __init__(self, publish: Callable[[Event], Awaitable[None]]) -> None:
        self.publish = publish

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
