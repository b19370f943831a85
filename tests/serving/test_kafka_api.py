"""Promotions over Kafka (faststream's in-memory test broker) make the service sync its champion."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker

from cascade.errors import Unavailable
from cascade.events import ModelPromoted, Topics
from cascade.services.serving import kafka_api
from cascade.services.serving.registry_client import RegistryModelSource
from cascade.services.serving.repository import ModelRepository

from .support import MODEL, RunningRegistry

TOPICS = Topics("test-serving")


def promoted(version: int) -> ModelPromoted:
    return ModelPromoted(source="tests", subject=MODEL, model=MODEL, model_version=version, actor="tests")


@pytest.fixture
async def repository(registry: RunningRegistry) -> AsyncIterator[ModelRepository]:
    client = RegistryModelSource(registry.address, timeout_seconds=5)
    yield ModelRepository(client)
    await client.close()


async def test_promotion_swaps_to_the_registry_champion(
    registry: RunningRegistry, repository: ModelRepository
) -> None:
    broker = KafkaBroker()
    kafka_api.register(broker, repository, TOPICS, "replica-a")
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(promoted(1), topic=TOPICS.for_event(ModelPromoted))
        assert repository.resolve(MODEL).version == 1
        registry.fake.promote(MODEL, 2)
        await test_broker.publish(promoted(2), topic=TOPICS.for_event(ModelPromoted))
        assert repository.resolve(MODEL).version == 2
        # A late or repeated event for version 1 does not roll back: the alias decides.
        await test_broker.publish(promoted(1), topic=TOPICS.for_event(ModelPromoted))
        assert repository.resolve(MODEL).version == 2


async def test_a_refused_version_is_reported_not_redelivered(
    registry: RunningRegistry, repository: ModelRepository
) -> None:
    broker = KafkaBroker()
    kafka_api.register(broker, repository, TOPICS, "replica-a")
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(promoted(1), topic=TOPICS.for_event(ModelPromoted))
        registry.fake.promote(MODEL, 2)
        registry.fake.recorded_sha256[MODEL, 2] = "0" * 64
        await test_broker.publish(promoted(2), topic=TOPICS.for_event(ModelPromoted))  # does not raise
        assert repository.resolve(MODEL).version == 1
        assert repository.failures[MODEL].reason == "digest_mismatch"


async def test_unreachable_registry_is_retried_not_dead_lettered() -> None:
    client = RegistryModelSource("127.0.0.1:9", timeout_seconds=1)
    broker = KafkaBroker()
    kafka_api.register(broker, ModelRepository(client), TOPICS, "replica-a")
    try:
        async with TestKafkaBroker(broker) as test_broker:
            with pytest.raises(Unavailable):
                await test_broker.publish(promoted(1), topic=TOPICS.for_event(ModelPromoted))
    finally:
        await client.close()


def test_every_replica_has_its_own_consumer_group() -> None:
    assert kafka_api.consumer_group(TOPICS, "replica-a") == "test-serving.serving.replica-a"
    assert kafka_api.consumer_group(TOPICS, "replica-a") != kafka_api.consumer_group(TOPICS, "replica-b")
