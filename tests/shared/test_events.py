import pytest
from pydantic import ValidationError

from cascade.events import DataArrived, ModelPromoted, RawRecords, Topics, cloudevent_headers


def _data_arrived(**overrides: object) -> DataArrived:
    fields: dict[str, object] = {
        "source": "cascade/ingest",
        "subject": "wine",
        "dataset": "wine",
        "dataset_version": "abc",
        "batch_id": "b1",
        "rows": 10,
        "target": "target",
        "task": "classification",
        "features": ["a", "b"],
    }
    fields.update(overrides)
    return DataArrived.model_validate(fields)


def test_event_survives_a_json_round_trip() -> None:
    event = _data_arrived()
    assert DataArrived.model_validate_json(event.model_dump_json()) == event


def test_an_event_of_another_type_is_refused() -> None:
    payload = _data_arrived().model_dump(mode="json") | {"type": "io.cascade.model.promoted.v1"}
    with pytest.raises(ValidationError, match="type"):
        DataArrived.model_validate(payload)


def test_cloudevent_headers_mirror_the_envelope_and_causal_ids() -> None:
    event = ModelPromoted(
        source="cascade/registry",
        subject="wine",
        model="wine",
        model_version=3,
        actor="validator",
        dataset_version="d1",
        training_run="r1",
    )
    headers = cloudevent_headers(event)
    assert headers["ce_id"] == event.id
    assert headers["ce_type"] == "io.cascade.model.promoted.v1"
    assert headers["ce_source"] == "cascade/registry"
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_subject"] == "wine"
    assert (headers["ce_datasetversion"], headers["ce_trainingrun"], headers["ce_modelversion"]) == (
        "d1",
        "r1",
        "3",
    )


def test_topics_share_one_prefix() -> None:
    topics = Topics("t1")
    assert topics.for_event(DataArrived) == "t1.data-arrived.v1"
    assert topics.for_event(RawRecords) == "t1.ingest.records.v1"
    assert topics.dead_letter == "t1.dead-letter.v1"


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden"])
def test_raw_records_refuse_path_like_or_empty_dataset_names(name: str) -> None:
    with pytest.raises(ValidationError):
        RawRecords(dataset=name, records=[{"a": 1}])
