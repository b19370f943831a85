"""cascade.client.delivery's event records without Kafka: what a person scanning the Loop page reads
of each event type, and that a body nobody can parse is still a row rather than an error."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from cascade.client.delivery import EVENT_TOPICS, _event
from cascade.events import (
    DataArrived,
    DriftDetected,
    Event,
    GateResult,
    ModelAliasChanged,
    ModelLoadFailed,
    ModelPromoted,
    ModelTrained,
    ModelValidated,
    ModelVersionCreated,
    ModelVersionStatusChanged,
    TrainingRequested,
)


def _record(body: Any, topic: str = "p.model-validated.v1") -> SimpleNamespace:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    return SimpleNamespace(topic=topic, timestamp=1_764_561_600_000, value=value)


def _of(event: Any) -> str:
    return _event(_record(json.loads(event.model_dump_json()))).summary


def test_every_event_topic_of_the_cascade_is_read() -> None:
    story: list[type[Event]] = [
        DataArrived,
        TrainingRequested,
        ModelTrained,
        ModelVersionCreated,
        ModelValidated,
        ModelVersionStatusChanged,
        ModelPromoted,
        ModelAliasChanged,
        ModelLoadFailed,
        DriftDetected,
    ]
    assert sorted(EVENT_TOPICS) == sorted(event.TOPIC for event in story)


def test_each_event_reads_as_one_line_naming_what_changed() -> None:
    common = {"source": "/test", "subject": "cancer"}
    arrived = DataArrived(
        **common,
        dataset="cancer",
        dataset_version="abcdef0123456789",
        batch_id="b",
        rows=42,
        target="target",
        task="classification",
    )
    failed = ModelValidated(
        **common,
        model="cancer",
        model_version=3,
        passed=False,
        gates=[
            GateResult(name="schema", passed=True),
            GateResult(name="min_accuracy", passed=False, value=0.4),
        ],
    )
    moved = ModelAliasChanged(
        **common,
        model="cancer",
        alias="champion",
        model_version=1,
        previous_version=2,
        action="set",
        actor="alice",
        reason="v2 misreads a segment",
    )

    assert _of(arrived) == "cancer: 42 rows → dataset version abcdef012345"
    assert _of(failed) == "cancer v3 failed min_accuracy"
    assert _of(moved) == "cancer@champion set v2 → v1 by alice: v2 misreads a segment"
    record = _event(_record(json.loads(failed.model_dump_json())))
    assert (record.type, record.model, record.model_version) == ("model.validated", "cancer", 3)


def test_an_unreadable_body_is_still_a_row() -> None:
    record = _event(_record(b"\xff not json", topic="p.model-trained.v1"))

    assert record.topic == "p.model-trained.v1" and record.type == "p.model-trained.v1"
    assert record.summary == "" and record.model_version is None


def test_a_long_summary_is_cut() -> None:
    body = {"type": "io.cascade.drift.detected.v1", "model": "m", "kind": "drift", "summary": "x" * 500}

    assert len(_event(_record(body)).summary) == 160
