"""`cascade dlq` without Kafka: choosing dead letters, what a replay carries, and what it skips.
tests/integration/test_delivery.py runs the commands against a real broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade.cli.dlq import MAX_REPLAYS, DeadLetter, _find, _replay_headers, _replayed_refs, _screen
from cascade.cli.errors import CliError
from cascade.cli.main import app
from cascade.messaging import DLQ_REASON, DLQ_TOPIC, REPLAY_COUNT, REPLAYED_FROM


def letter(
    partition: int, offset: int, replay_count: int = 0, source_topic: str = "p.data-arrived.v1"
) -> DeadLetter:
    return DeadLetter(
        partition=partition,
        offset=offset,
        reason="InvalidArgument: no",
        source_topic=source_topic,
        source_partition=1,
        source_offset=9,
        service="trainer",
        time="2026-11-30T18:00:00+00:00",
        replay_count=replay_count,
        replayed_from="",
        key=b"k",
        value=b"{}",
        headers={"traceparent": "00-abc-def-01", DLQ_REASON: "InvalidArgument: no", DLQ_TOPIC: source_topic},
    )


def test_a_letter_is_found_by_partition_and_offset_or_by_an_unambiguous_offset() -> None:
    letters = [letter(0, 3), letter(1, 3), letter(2, 5)]
    assert _find(letters, "1:3") is letters[1]
    assert _find(letters, "5") is letters[2]
    with pytest.raises(CliError, match="several partitions: say which \\(0:3, 1:3\\)"):
        _find(letters, "3")
    with pytest.raises(CliError, match="no dead letter 2:3"):
        _find(letters, "2:3")
    with pytest.raises(CliError, match="not a dead letter's PARTITION:OFFSET"):
        _find(letters, "x:1")


def test_a_replay_keeps_the_original_headers_drops_the_dead_letter_ones_and_counts() -> None:
    headers = dict(
        (name, value.decode()) for name, value in _replay_headers(letter(2, 7, replay_count=1), "p.dlq")
    )
    assert headers == {"traceparent": "00-abc-def-01", REPLAYED_FROM: "p.dlq:2:7", REPLAY_COUNT: "2"}


def test_letters_replayed_before_or_too_often_are_skipped_unless_asked() -> None:
    fresh, replayed, tired, orphan = (
        letter(0, 1),
        letter(0, 2),
        letter(0, 3, MAX_REPLAYS),
        letter(0, 4, source_topic=""),
    )
    skipped, to_send = _screen([fresh, replayed, tired, orphan], {"0:2"}, again=False)
    assert to_send == [fresh]
    assert [(s.letter, s.why_not.split(" (")[0]) for s in skipped] == [
        ("0:2", "replayed before"),
        ("0:3", f"failed after {MAX_REPLAYS} replays; fix the cause"),
        ("0:4", "it names no source topic"),
    ]
    assert _screen([fresh, replayed, tired], {"0:2"}, again=True) == ([], [fresh, replayed, tired])


def test_the_audit_log_tells_which_letters_of_which_topic_were_replayed(tmp_path: Path) -> None:
    audit = tmp_path / "dlq-replays.log"
    assert _replayed_refs(audit, "p.dlq") == set()
    audit.write_text(
        '{"replayed_from": "p.dlq:0:2"}\n{"replayed_from": "other.dlq:0:3"}\n'
        'not json\n{"replayed_from": "p.dlq:1:9"}\n'
    )
    assert _replayed_refs(audit, "p.dlq") == {"0:2", "1:9"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay"], "name the dead letters to replay, or give --all"),
        (["replay", "0:1", "--all"], "name the dead letters to replay, or give --all"),
        (["replay", "0:1", "--topic", "t"], "--topic goes with --all"),
    ],
)
def test_replay_usage_errors_exit_2_before_touching_kafka(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "dlq", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_an_unreachable_kafka_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "--kafka-port", "1", "dlq", "list"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot read cascade.dead-letter.v1 from Kafka at 127.0.0.1:1")
