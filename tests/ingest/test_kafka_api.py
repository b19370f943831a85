"""The raw-records subscriber in memory (FastStream's TestKafkaBroker) with a real core and store;
tests/integration/test_ingest.py covers the same through the real broker and the dead-letter topic."""

import json
from pathlib import Path

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from pydantic import ValidationError

from cascade.errors import InvalidArgument
from cascade.events import DataArrived, RawRecords, Topics
from cascade.services.ingest import kafka_api
from cascade.services.ingest.core import IngestCore
from cascade.services.ingest.store import IngestStore


@pytest.fixture
def core(tmp_path: Path) -> IngestCore:
    async def emit(event: DataArrived) -> None:
        pass

    return IngestCore(IngestStore(tmp_path), emit)


async def test_records_become_a_version_and_bad_messages_fail_with_a_reason(core: IngestCore) -> None:
    broker = KafkaBroker()
    topics = Topics("t")
    kafka_api.register(broker, core, topics, max_record_bytes=2000)
    topic = topics.for_event(RawRecords)
    records = [{"x": 1.0, "target": 0}, {"x": 2.0, "target": 1}]
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(json.dumps({"dataset": "k", "records": records}).encode(), topic)
        with pytest.raises(ValidationError, match="Invalid JSON"):
            await test_broker.publish(b'{"dataset": "k", "rec', topic)
        with pytest.raises(InvalidArgument, match="exceeds the limit of 2000 bytes"):
            big = [{"x": float(i), "target": 0} for i in range(200)]
            await test_broker.publish(json.dumps({"dataset": "k", "records": big}).encode(), topic)
    assert core.store.version("k").rows == 2
