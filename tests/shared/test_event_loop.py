"""The event loop services run on: uvloop by default, asyncio's by CASCADE_EVENT_LOOP."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from cascade.grpc_io import open_channel
from cascade.service import event_loop_factory
from tests.grpc_server import serving


def test_uvloop_is_the_default_and_asyncio_the_way_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CASCADE_EVENT_LOOP", raising=False)
    assert event_loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv("CASCADE_EVENT_LOOP", "asyncio")
    assert event_loop_factory() is None
    monkeypatch.setenv("CASCADE_EVENT_LOOP", " UVLOOP ")
    assert event_loop_factory() is uvloop.new_event_loop


def test_an_unknown_loop_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="CASCADE_EVENT_LOOP='trio'"):
        event_loop_factory("trio")


def test_grpc_aio_server_and_client_work_on_uvloop() -> None:
    async def round_trip() -> tuple[str, int]:
        health = HealthServicer()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)

        def register(server: grpc.aio.Server) -> None:
            health_pb2_grpc.add_HealthServicer_to_server(health, server)

        async with serving(register) as address:
            channel = open_channel(address)
            try:
                stub = health_pb2_grpc.HealthStub(channel)
                answers = await asyncio.gather(
                    *(stub.Check(health_pb2.HealthCheckRequest(), timeout=5) for _ in range(32))
                )
            finally:
                await channel.close()
        return type(asyncio.get_running_loop()).__module__, sum(a.status for a in answers)

    factory = event_loop_factory("uvloop")
    with asyncio.Runner(loop_factory=factory) as runner:
        loop_module, statuses = runner.run(round_trip())
    assert loop_module.startswith("uvloop")
    assert statuses == 32 * health_pb2.HealthCheckResponse.SERVING
