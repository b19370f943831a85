"""Hostile bodies on every input topic of the real stack: each service dead-letters them at the
first delivery, unparsed, and stays SERVING; `cascade dlq` and `cascade status` show them."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from typer.testing import CliRunner

from shared.cli.main import app
from shared.cli.stack import Stack
from shared.events import (
    DataArrived,
    ModelPromoted,
    ModelTrained,
    ModelValidated,
    PredictionLogged,
    RawRecords,
    Topics,
)
from shared.messaging import DLQ_REASON, DLQ_SERVICE, DLQ_TOPIC
from tests.integration.support import produce

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def _dead_letters(bootstrap: str, topic: str, marker: bytes, count: int) -> list[dict[str, str]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    found: list[dict[str, str]] = []
    try:
        async with asyncio.timeout(90):
            while len(found) < count:
                record = await consumer.getone()
                if marker in (record.value or b""):
                    found.append({k: v.decode() for k, v in record.headers})
    finally:
        await consumer.stop()
    return found


def test_deeply_nested_bodies_are_dead_lettered_by_every_service_which_stays_serving(stack: Stack) -> None:
    topics = Topics(stack.config.topic_prefix)
    marker = uuid.uuid4().hex.encode()
    # 10 KB: a marker to find it by, then 5000 levels of arrays, which made json.loads recurse.
    hostile = b'{"marker": "' + marker + b'", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    inputs = [
        topics.for_event(event)
        for event in (RawRecords, DataArrived, ModelTrained, ModelValidated, ModelPromoted, PredictionLogged)
    ]
    bootstrap = stack.address("kafka")
    produce(bootstrap, [(topic, hostile) for topic in inputs])
    # model-promoted feeds both serving and monitor; each dead-letters its own copy.
    letters = asyncio.run(_dead_letters(bootstrap, topics.dead_letter, marker, len(inputs) + 1))

    assert {(h[DLQ_SERVICE], h[DLQ_TOPIC]) for h in letters} == {
        ("ingest", topics.for_event(RawRecords)),
        ("trainer", topics.for_event(DataArrived)),
        ("validator", topics.for_event(ModelTrained)),
        ("registry", topics.for_event(ModelValidated)),
        ("serving", topics.for_event(ModelPromoted)),
        ("monitor", topics.for_event(ModelPromoted)),
        ("monitor", topics.for_event(PredictionLogged)),
    }
    assert {h[DLQ_REASON] for h in letters} == {
        "JsonTooLarge: JSON nested 5001 levels deep is over the limit of 64"
    }
    assert all(row.health == "SERVING" for row in stack.status())

    runner = CliRunner()
    listed = runner.invoke(app, ["--home", str(stack.home), "dlq", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    nested = [row for row in json.loads(listed.output) if "5001 levels" in row["reason"]]
    assert {row["service"] for row in nested} == {
        "ingest",
        "trainer",
        "validator",
        "registry",
        "serving",
        "monitor",
    }
    status = runner.invoke(app, ["--home", str(stack.home), "status", "--json"])
    assert status.exit_code == 0, status.output
    rows = {row["name"]: row for row in json.loads(status.output)}
    assert rows["validator"]["dead_letters"][topics.for_event(ModelTrained)] >= 1
    assert topics.for_event(ModelTrained) in rows["validator"]["lag"]
