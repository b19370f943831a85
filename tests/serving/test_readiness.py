"""Serving's readiness at start-up, without a process: the StartupLoad state, the repository's
initial sync reporting to it (UNAVAILABLE while a model loads, NOT_FOUND for one the registry does not
name), and the gated grpc.health.v1 servicer asked by the real cascade.healthcheck probe."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cascade.errors import NotFound, Unavailable
from cascade.healthcheck import probe
from cascade.services.serving.readiness import GatedHealth, StartupLoad
from cascade.services.serving.repository import ModelRef, ModelRepository
from tests.grpc_server import serving

from .support import MODEL, TrainedModel
from .test_repository import FakeSource

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- the state ------------------------------------------------------------------------------------
def test_not_ready_until_every_listed_model_is_settled() -> None:
    startup = StartupLoad(budget_seconds=60)
    assert not startup.ready
    assert startup.reason() == "not ready: reading the registry's models"

    startup.listed(["fraud", "churn"])
    assert not startup.ready
    assert startup.reason() == "not ready: loading 2 models (churn, fraud)"

    startup.settled("churn")
    assert startup.reason() == "not ready: loading 1 model (fraud)"
    startup.settled("fraud", refused="model fraud version 3 cannot be served: bad graph")

    assert startup.ready
    assert startup.reason() == ""
    assert startup.refused() == {"fraud": "model fraud version 3 cannot be served: bad graph"}


def test_a_loading_model_is_unavailable_and_an_unlisted_one_is_not_found() -> None:
    startup = StartupLoad(budget_seconds=60)
    before = startup.missing("fraud")  # the registry not read yet: nobody knows, so retry
    assert isinstance(before, Unavailable)
    assert "has not read the registry's models yet" in str(before)

    startup.listed(["fraud"])
    loading = startup.missing("fraud")
    assert isinstance(loading, Unavailable)
    assert str(loading) == "model 'fraud' is loading; retry shortly"
    assert startup.missing("unknown") is None  # the caller's NOT_FOUND

    startup.settled("fraud")
    assert startup.missing("fraud") is None


def test_a_relisting_keeps_settled_models_settled() -> None:
    startup = StartupLoad(budget_seconds=60)
    startup.listed(["fraud", "churn"])
    startup.settled("fraud")
    startup.listed(["fraud", "churn", "spam"])  # the sync retried after the registry failed

    assert startup.loading() == ["churn", "spam"]


def test_retrying_says_why_the_registry_is_not_read() -> None:
    startup = StartupLoad(budget_seconds=60)
    startup.retrying("registry at registry:50054 is unavailable")
    assert startup.reason() == (
        "not ready: reading the registry's models (last error: registry at registry:50054 is unavailable)"
    )


def test_an_empty_registry_is_ready_at_once() -> None:
    startup = StartupLoad(budget_seconds=60)
    startup.listed([])
    assert startup.ready


def test_a_sync_that_stops_for_good_makes_the_replica_ready() -> None:
    startup = StartupLoad(budget_seconds=60)
    startup.finished()  # e.g. the registry refused the listing: nothing will load until a promotion
    assert startup.ready
    assert startup.missing("fraud") is None


async def test_the_budget_makes_a_stuck_replica_ready_but_loading_models_stay_unavailable() -> None:
    startup = StartupLoad(budget_seconds=0.05)
    startup.listed(["fraud"])

    await startup.wait_ready()  # nothing ever settles "fraud": the budget ends the wait

    assert startup.ready
    assert startup.gave_up
    assert isinstance(startup.missing("fraud"), Unavailable)
    startup.settled("fraud")
    assert startup.missing("fraud") is None


async def test_wait_ready_ends_when_the_last_model_settles() -> None:
    startup = StartupLoad(budget_seconds=60)
    startup.listed(["fraud"])
    waiting = asyncio.create_task(startup.wait_ready())
    await asyncio.sleep(0)
    assert not waiting.done()

    startup.settled("fraud")
    await asyncio.wait_for(waiting, 5)
    assert not startup.gave_up


# -- the repository's initial sync ----------------------------------------------------------------
class HeldSource(FakeSource):
    """A FakeSource whose downloads wait until `release` is set; `asked` is set at the first one."""

    def __init__(self, artifacts: dict[int, bytes], champion: int) -> None:
        super().__init__(artifacts, champion)
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def artifact(self, ref: ModelRef) -> bytes:
        self.asked.set()
        await self.release.wait()
        return await super().artifact(ref)


async def test_a_model_loading_at_start_up_is_unavailable_then_served(
    models: dict[int, TrainedModel],
) -> None:
    source = HeldSource({1: models[1].onnx}, champion=1)
    startup = StartupLoad(budget_seconds=60)
    repository = ModelRepository(source, startup=startup)
    sync = asyncio.create_task(repository.sync_all_until_done())
    await asyncio.wait_for(source.asked.wait(), 5)

    with pytest.raises(Unavailable, match=f"model '{MODEL}' is loading"):
        repository.resolve(MODEL)
    with pytest.raises(Unavailable, match="is loading"):
        repository.routed(MODEL, "1")
    with pytest.raises(NotFound, match="'unknown' is not loaded"):
        repository.resolve("unknown")
    assert not repository.is_ready(MODEL)
    assert startup.reason() == f"not ready: loading 1 model ({MODEL})"

    source.release.set()
    await asyncio.wait_for(sync, 30)

    assert startup.ready
    assert repository.resolve(MODEL).version == 1


async def test_a_bad_champion_does_not_keep_the_replica_unready() -> None:
    startup = StartupLoad(budget_seconds=60)
    repository = ModelRepository(FakeSource({1: b"not an onnx model"}, champion=1), startup=startup)

    await asyncio.wait_for(repository.sync_all_until_done(), 30)

    assert startup.ready
    assert "cannot be served" in startup.refused()[MODEL]
    with pytest.raises(NotFound):  # refused, not loading: nothing will come without a promotion
        repository.resolve(MODEL)


async def test_an_unreachable_registry_is_retried_and_reported(models: dict[int, TrainedModel]) -> None:
    source = FakeSource({1: models[1].onnx}, champion=1)
    source.down = 2
    startup = StartupLoad(budget_seconds=60)
    repository = ModelRepository(source, startup=startup)

    await asyncio.wait_for(repository.sync_all_until_done(first_delay=0.01), 30)

    assert startup.ready
    assert repository.resolve(MODEL).version == 1


# -- health ---------------------------------------------------------------------------------------
async def test_gated_health_is_not_serving_with_its_reason_until_opened() -> None:
    startup = StartupLoad(budget_seconds=60)
    startup.listed(["fraud", "churn"])
    health = GatedHealth(["", "inference.GRPCInferenceService"], startup.reason)

    def register(server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    async with serving(register) as address:
        await health.set("", SERVING)  # the runtime: Kafka is connected
        await health.set("inference.GRPCInferenceService", SERVING)
        await health.set("fraud", SERVING)  # a model's own health is not gated

        state, why = await asyncio.to_thread(probe, address)
        assert state == "NOT_SERVING"
        assert why == f"{address}: NOT_SERVING: not ready: loading 2 models (churn, fraud)"
        assert (await asyncio.to_thread(probe, address, "fraud")) == ("SERVING", "")

        startup.settled("fraud")
        startup.settled("churn")
        opening = asyncio.create_task(health.open_when_ready(startup))
        await asyncio.wait_for(opening, 5)

        assert (await asyncio.to_thread(probe, address)) == ("SERVING", "")
        assert (await asyncio.to_thread(probe, address, "inference.GRPCInferenceService")) == ("SERVING", "")


async def test_gated_health_follows_the_runtime_once_open() -> None:
    health = GatedHealth([""], lambda: "not ready: starting")

    def register(server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    async with serving(register) as address:
        await health.set("", NOT_SERVING)  # the runtime before Kafka connects
        await health.open()
        assert (await asyncio.to_thread(probe, address))[0] == "NOT_SERVING"  # what the runtime said
        await health.set("", SERVING)
        assert (await asyncio.to_thread(probe, address)) == ("SERVING", "")
        await health.set("", NOT_SERVING)  # Kafka lost: no reason of readiness's to add
        assert (await asyncio.to_thread(probe, address)) == ("NOT_SERVING", f"{address}: NOT_SERVING")
