"""How the service runtime turns delivery into health: degraded while a message is retried or the
lag keeps growing, NOT_SERVING past the threshold. tests/integration/test_delivery.py shows the same
end to end on a real broker and over gRPC health."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import TestKafkaBroker
from prometheus_client import REGISTRY

from cascade.errors import Unavailable
from cascade.messaging import DeadLetters, build_broker, dead_letters_of
from cascade.service import LAG_GROWTH_CHECKS, Service
from cascade.settings import ServiceSettings


class ScriptedLag(Service):
    """A service whose consumers' total lag follows a script, one value per check."""

    lags: Iterator[int] = iter(())

    async def _update_lag(self) -> int:
        return next(self.lags)


def service(lags: list[int], **settings: Any) -> ScriptedLag:
    name = f"s{uuid.uuid4().hex[:8]}"
    built = ScriptedLag(
        name,
        ServiceSettings(topic_prefix=name, **settings),
        broker=build_broker(ServiceSettings(topic_prefix=name), name),
    )
    built.lags = iter(lags)
    return built


def degraded(service: Service) -> float | None:
    return REGISTRY.get_sample_value("cascade_service_degraded", {"service": service.name})


async def test_lag_that_grows_at_every_check_is_degraded_and_a_dip_ends_it() -> None:
    growing = list(range(LAG_GROWTH_CHECKS + 1))
    watched = service([*growing, LAG_GROWTH_CHECKS - 1])
    outcomes = [await watched._check_delivery() for _ in growing]
    assert outcomes == [False] * len(growing)  # lag alone never makes it NOT_SERVING
    assert (
        watched.degraded_reason == f"consumer lag grew at each of the last {LAG_GROWTH_CHECKS} checks, to 6"
    )
    assert degraded(watched) == 1
    await watched._check_delivery()
    assert watched.degraded_reason == ""
    assert degraded(watched) == 0


async def test_steady_lag_is_not_degraded() -> None:
    watched = service([5] * (LAG_GROWTH_CHECKS + 2))
    for _ in range(LAG_GROWTH_CHECKS + 2):
        await watched._check_delivery()
    assert watched.degraded_reason == ""


@pytest.fixture
def clock() -> list[float]:
    return [100.0]


async def test_a_failing_message_is_degraded_then_not_serving_past_the_threshold(clock: list[float]) -> None:
    watched = service([0] * 3, degraded_not_serving_seconds=60.0)
    assert watched.broker is not None
    dead_letters = dead_letters_of(watched.broker)
    assert isinstance(dead_letters, DeadLetters)
    dead_letters._clock = lambda: clock[0]

    async def no_pause(seconds: float) -> None:
        pass

    dead_letters._sleep = no_pause
    record = ConsumerRecord("in", 2, 40, 0, 0, None, b"{}", None, 0, 2, [])
    async with TestKafkaBroker(watched.broker):
        await dead_letters.failed(record, Unavailable("registry down"))
        assert await watched._check_delivery() is False
        assert watched.degraded_reason.startswith(
            "1 message(s) failing, the oldest in[2]@40 for 0 s after 1 attempt"
        )
        clock[0] += 61.0
        await dead_letters.failed(record, Unavailable("registry down"))
        assert await watched._check_delivery() is True
        dead_letters.succeeded(record)
        assert await watched._check_delivery() is False
    assert watched.degraded_reason == ""
