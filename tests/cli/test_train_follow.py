"""How `cascade train --follow` reads what it follows: its run's progress, and the dead letter of
its own request when the trainer refused it. The whole path runs on the real stack in
tests/integration/test_cli_train_follow.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cascade.cli.errors import ClientError
from cascade.cli.train import _raise_if_refused, _report_progress
from cascade.events import TrainingProgress, TrainingRequested
from cascade.messaging import DLQ_REASON, DLQ_SERVICE


@dataclass
class Record:
    value: bytes
    headers: list[tuple[str, bytes]]


def _request() -> TrainingRequested:
    return TrainingRequested(source="test", subject="m", model="m", actor="a", reason="")


def test_the_dead_letter_of_the_request_is_a_refusal_with_its_reason() -> None:
    request = _request()
    letter = Record(
        request.model_dump_json().encode(),
        [(DLQ_REASON, b"NotFound: dataset m has no versions"), (DLQ_SERVICE, b"trainer")],
    )

    with pytest.raises(ClientError, match="trainer refused the request: NotFound: dataset m has no versions"):
        _raise_if_refused(letter, request.id)


def test_dead_letters_of_other_messages_are_not_ours() -> None:
    other = Record(_request().model_dump_json().encode(), [(DLQ_REASON, b"whatever")])

    _raise_if_refused(other, _request().id)  # another request's letter
    _raise_if_refused(Record(b"\xff not json", []), "id")


def test_a_failed_progress_event_of_the_run_fails_and_a_finished_one_ends() -> None:
    def progress(stage: str, run_key: str) -> bytes:
        event = TrainingProgress(
            source="t", subject="m", model="m", run_key=run_key, stage=stage, message="why"
        )
        return event.model_dump_json().encode()

    assert _report_progress(progress("finished", "v1:abc:manual:req-1"), "req-1")
    assert not _report_progress(progress("finished", "v1:abc:manual:req-2"), "req-1")
    with pytest.raises(ClientError, match="the run failed: why"):
        _report_progress(progress("failed", "v1:abc:manual:req-1"), "req-1")
