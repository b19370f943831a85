"""Chat notifications against a real local receiver that checks Slack's and Teams' shapes: what each
event says and links to, dedup by event id, retries with backoff within a budget, a dead destination
holding up nobody, dead letters counted per window, and webhook URLs kept out of logs and tables."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from faststream.kafka import TestKafkaBroker
from prometheus_client import REGISTRY

from cascade.errors import InvalidArgument
from cascade.events import (
    DriftDetected,
    GateResult,
    ModelApprovalDecided,
    ModelApprovalRequested,
    ModelLoadFailed,
    ModelPromoted,
    ModelValidated,
    Topics,
)
from cascade.messaging import build_broker
from cascade.services.registry import kafka_api
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import RegistryCore
from cascade.services.registry.notifications import (
    ConsoleLinks,
    DeliveryPolicy,
    Destinations,
    Notifier,
    load_destinations,
)
from cascade.services.registry.schema import notification_jobs
from cascade.services.registry.settings import RegistrySettings
from cascade.services.registry.store import RegistryStore
from cascade.services.registry.webhooks import SIGNATURE_HEADER, signature
from tests.registry.chat_receiver import ChatReceiver, running_receiver

CONSOLE = "http://console.example:8501"
SECRET = "T000/B000/XXXXSECRETXXXX"


@pytest.fixture
def receiver() -> Iterator[ChatReceiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture
def store(database_url: str) -> Iterator[RegistryStore]:
    opened = RegistryStore(database_url)
    yield opened
    opened.close()


def _destinations(tmp_path: Path, entries: list[dict[str, Any]]) -> Destinations:
    path = tmp_path / "notifications.json"
    path.write_text(json.dumps(entries))
    return Destinations(path)


def _notifier(store: RegistryStore, destinations: Destinations, **policy: Any) -> Notifier:
    defaults: dict[str, Any] = {"backoff_seconds": 0.01, "backoff_max_seconds": 0.05, "timeout_seconds": 2.0}
    return Notifier(
        store,
        destinations,
        ConsoleLinks(CONSOLE),
        DeliveryPolicy(**(defaults | policy)),
        dead_letter_threshold=3,
        dead_letter_window_seconds=600,
    )


def _both(receiver: ChatReceiver, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"name": "team-slack", "kind": "slack", "url": receiver.url("slack", SECRET)} | extra,
        {"name": "team-teams", "kind": "teams", "url": receiver.url("teams", SECRET)} | extra,
    ]


def _failed(model: str = "fraud", version: int = 3) -> ModelValidated:
    return ModelValidated(
        source="cascade/validator",
        subject=model,
        model=model,
        model_version=version,
        champion_version=2,
        passed=False,
        gates=[
            GateResult(
                name="min_accuracy", passed=False, value=0.61, threshold=0.7, detail="on 40 fresh rows"
            ),
            GateResult(name="enough_fresh_rows", passed=True, value=40, threshold=10),
            GateResult(name="not_worse_than_champion", passed=False, value=0.61, threshold=0.83),
        ],
        metrics={"accuracy": 0.61},
    )


def _drift(model: str = "fraud") -> DriftDetected:
    features = [
        {
            "feature": "amount",
            "test": "ks",
            "statistic": 0.4,
            "p_value": 1e-9,
            "threshold": 0.05,
            "drifted": True,
        },
        {
            "feature": "age",
            "test": "ks",
            "statistic": 0.2,
            "p_value": 0.001,
            "threshold": 0.05,
            "drifted": True,
        },
        {
            "feature": "country",
            "test": "wasserstein",
            "statistic": 0.3,
            "p_value": None,
            "threshold": 0.1,
            "drifted": True,
        },
        {
            "feature": "hour",
            "test": "ks",
            "statistic": 0.01,
            "p_value": 0.8,
            "threshold": 0.05,
            "drifted": False,
        },
    ]
    return DriftDetected(
        source="cascade/monitor",
        subject=model,
        model=model,
        model_version=2,
        kind="drift",
        summary="3 of 4 features drifted; retraining on the newer data",
        drifted_features=["amount", "age", "country"],
        report={
            "features": features,
            "attribution_shift": [{"feature": "amount", "reference_share": 0.12, "window_share": 0.31}],
        },
        action="retrain",
    )


def _metric(kind: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("cascade_registry_notifications_total", {"kind": kind, "outcome": outcome})
        or 0.0
    )


def _job_rows(store: RegistryStore) -> list[dict[str, Any]]:
    with store.engine.connect() as db:
        return [dict(row) for row in db.execute(sa.select(notification_jobs)).mappings()]


def _versions_scoring(store: RegistryStore, *accuracies: float) -> None:
    """Versions 1, 2, ... of `fraud`, validated with these accuracies."""
    for accuracy in accuracies:
        with store.transaction() as db:
            store.ensure_model(db, "fraud")
            version = store.insert_version(
                db,
                {
                    "model": "fraud",
                    "artifact_sha256": "0" * 64,
                    "artifact_size": 1,
                    "dataset": "fraud",
                    "dataset_version": "v",
                    "run": {},
                    "tags": {},
                    "signature": {},
                    "idempotency_key": "",
                    "description": "",
                },
            )
            store.set_validation(db, "fraud", version, {"metrics": {"accuracy": accuracy}})


# -- what is said -------------------------------------------------------------------------------
async def test_a_failed_validation_reaches_slack_and_teams_with_its_gates_and_a_console_link(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    notifier = _notifier(store, _destinations(tmp_path, _both(receiver)))

    assert notifier.record(_failed()) == 2
    await notifier.drain()

    [slack] = receiver.on(f"/slack/{SECRET}")
    [teams] = receiver.on(f"/teams/{SECRET}")
    assert receiver.rejected == []
    link = f"{CONSOLE}/models?model=fraud&version=3"
    assert slack["blocks"][0]["text"]["text"] == "fraud v3 failed validation"
    fields = [f["text"] for b in slack["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert "*✗ min_accuracy*\n0.61 against threshold 0.7: on 40 fresh rows" in fields
    assert "*✗ not_worse_than_champion*\n0.61 against threshold 0.83" in fields
    assert not any("enough_fresh_rows" in text for text in fields)  # passed gates are counted, not listed
    assert "*Gates passed*\n1 of 3" in fields
    [actions] = [b for b in slack["blocks"] if b["type"] == "actions"]
    assert [e["url"] for e in actions["elements"]] == [link]
    card = teams["attachments"][0]["content"]
    facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert facts["✗ min_accuracy"] == "0.61 against threshold 0.7: on 40 fresh rows"
    assert [a["url"] for a in card["actions"]] == [link]
    assert notifier.jobs.states() == {"delivered": 2}


async def test_drift_names_the_top_features_and_what_the_loop_did(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    notifier = _notifier(store, _destinations(tmp_path, _both(receiver)))

    notifier.record(_drift())
    await notifier.drain()

    [teams] = receiver.on(f"/teams/{SECRET}")
    card = teams["attachments"][0]["content"]
    facts = [(f["title"], f["value"]) for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]]
    # Furthest past the threshold first: amount (p 1e-9), age (p 1e-3), country (3x its distance).
    assert [title for title, _ in facts][2:5] == ["amount", "age", "country"]
    assert ("Attribution moved", "amount 12% → 31%") in facts
    assert facts[-1] == ("What the loop did", "Retraining on the dataset's newer version.")
    assert [a["url"] for a in card["actions"]] == [
        f"{CONSOLE}/drift?model=fraud",
        f"{CONSOLE}/models?model=fraud&version=2",
    ]
    [slack] = receiver.on(f"/slack/{SECRET}")
    assert slack["blocks"][0]["text"]["text"] == "Drift detected on fraud"


async def test_a_promotion_shows_its_metrics_against_the_old_champion(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    _versions_scoring(store, 0.8, 0.9)
    notifier = _notifier(store, _destinations(tmp_path, _both(receiver, events=["promoted"])))
    promoted = ModelPromoted(
        source="cascade/registry",
        subject="fraud",
        model="fraud",
        model_version=2,
        previous_version=1,
        actor="validator",
    )

    notifier.record(promoted)
    notifier.record(_failed())  # not an event these destinations take
    await notifier.drain()

    [slack] = receiver.on(f"/slack/{SECRET}")
    fields = [f["text"] for b in slack["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert "*accuracy*\n0.9 (was 0.8, +0.1)" in fields
    assert "*Previous champion*\nv1" in fields
    assert slack["blocks"][0]["text"]["text"] == "fraud v2 is champion"


async def test_a_challenger_awaiting_approval_and_the_decision_reach_the_team(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    _versions_scoring(store, 0.8, 0.85, 0.9)
    entries = _both(receiver, events=["approval_requested", "approval_decided"])
    notifier = _notifier(store, _destinations(tmp_path, entries))
    common = {"source": "cascade/registry", "subject": "fraud", "model": "fraud"}

    notifier.record(
        ModelApprovalRequested(
            **common, model_version=3, champion_version=1, requested_by="validator", superseded_version=2
        )
    )
    notifier.record(
        ModelApprovalDecided(
            **common,
            model_version=3,
            decision="approved",
            decided_by="alice",
            reason="beat v1",
            champion_version=3,
        )
    )
    await notifier.drain()

    requested, decided = receiver.on(f"/teams/{SECRET}")
    assert receiver.rejected == []
    card = requested["attachments"][0]["content"]
    facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert card["body"][0]["text"] == "fraud v3 awaits approval"
    assert facts["Supersedes"] == "the pending v2" and facts["accuracy"] == "0.9 (was 0.8, +0.1)"
    assert [a["url"] for a in card["actions"]] == [
        f"{CONSOLE}/models?model=fraud&version=3",
        f"{CONSOLE}/models?model=fraud&version=1",
    ]
    decision = decided["attachments"][0]["content"]
    assert decision["body"][0] == {
        "type": "TextBlock",
        "text": "fraud v3 approved",
        "weight": "Bolder",
        "size": "Medium",
        "color": "Good",
        "wrap": True,
    }
    facts = {f["title"]: f["value"] for b in decision["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert (facts["By"], facts["Reason"], facts["Champion"]) == ("alice", "beat v1", "v3")
    assert [m["blocks"][0]["text"]["text"] for m in receiver.on(f"/slack/{SECRET}")] == [
        "fraud v3 awaits approval",
        "fraud v3 approved",
    ]


async def test_destinations_choose_models_by_glob(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    entries = [
        {"name": "fraud-team", "kind": "slack", "url": receiver.url("slack", "fraud"), "models": ["fraud*"]},
        {"name": "everyone", "kind": "teams", "url": receiver.url("teams", "all")},
    ]
    notifier = _notifier(store, _destinations(tmp_path, entries))

    notifier.record(_failed("fraud_eu"))
    notifier.record(_failed("churn"))
    await notifier.drain()

    assert [m["blocks"][0]["text"]["text"] for m in receiver.on("/slack/fraud")] == [
        "fraud_eu v3 failed validation"
    ]
    assert len(receiver.on("/teams/all")) == 2


async def test_a_load_failure_and_a_cloudevent_destination_reuse_the_webhook_body_and_signature(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k3y\n")
    entries = [
        {
            "name": "hook",
            "kind": "cloudevent",
            "url": receiver.url("cloudevent", "hook"),
            "secret_file": str(key_file),
        },
        {"name": "team-slack", "kind": "slack", "url": receiver.url("slack", "s")},
    ]
    notifier = _notifier(store, _destinations(tmp_path, entries))
    event = ModelLoadFailed(
        source="cascade/serving",
        subject="fraud",
        model="fraud",
        model_version=4,
        reason="digest_mismatch",
        detail="sha256 differs",
        serving_version=3,
        instance="serving-0",
    )

    notifier.record(event)
    await notifier.drain()

    [received] = [r for r in receiver.accepted if r.path == "/cloudevent/hook"]
    assert received.payload["id"] == event.id and received.payload["data"]["reason"] == "digest_mismatch"
    body = json.dumps(received.payload).encode()
    assert received.headers[SIGNATURE_HEADER] == signature("k3y", body)
    [slack] = receiver.on("/slack/s")
    assert "v3 keeps serving" in slack["blocks"][1]["text"]["text"]


# -- delivery -----------------------------------------------------------------------------------
async def test_the_same_event_twice_makes_one_message_per_destination(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    notifier = _notifier(store, _destinations(tmp_path, _both(receiver)))
    duplicates = _metric("slack", "duplicate")
    event = _failed()

    assert notifier.record(event) == 2
    await notifier.drain()
    assert notifier.record(event) == 0  # Kafka redelivered it after the first was sent
    await notifier.drain()

    assert len(receiver.on(f"/slack/{SECRET}")) == 1 and len(receiver.on(f"/teams/{SECRET}")) == 1
    assert _metric("slack", "duplicate") == duplicates + 1


async def test_failures_are_retried_with_backoff_until_delivered(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    receiver.script(f"/slack/{SECRET}", 500, (429, {"Retry-After": "0"}), 503)
    notifier = _notifier(store, _destinations(tmp_path, _both(receiver)))
    retried = _metric("slack", "retried")

    notifier.record(_failed())
    deadline = asyncio.get_running_loop().time() + 30
    while not receiver.on(f"/slack/{SECRET}") and asyncio.get_running_loop().time() < deadline:
        await notifier.drain()
        await asyncio.sleep(0.02)

    assert len(receiver.on(f"/slack/{SECRET}")) == 1
    assert receiver.attempts[f"/slack/{SECRET}"] == 4
    assert _metric("slack", "retried") == retried + 3
    rows = {row["destination"]: row for row in _job_rows(store)}
    assert rows["team-slack"]["state"] == "delivered" and rows["team-slack"]["attempts"] == 4
    assert rows["team-teams"]["attempts"] == 1


async def test_a_destination_that_keeps_failing_is_given_up_within_its_budget_and_counted(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.script(f"/teams/{SECRET}", *([500] * 10))
    receiver.script(f"/slack/{SECRET}", 404)  # a revoked webhook: no retry mends it
    notifier = _notifier(store, _destinations(tmp_path, _both(receiver)), max_attempts=3)
    failed = _metric("teams", "failed"), _metric("slack", "failed")

    notifier.record(_failed())
    deadline = asyncio.get_running_loop().time() + 30
    while notifier.jobs.states().get("pending") and asyncio.get_running_loop().time() < deadline:
        await notifier.drain()
        await asyncio.sleep(0.02)

    assert notifier.jobs.states() == {"failed": 2}
    assert receiver.attempts == {f"/teams/{SECRET}": 3, f"/slack/{SECRET}": 1}
    assert (_metric("teams", "failed"), _metric("slack", "failed")) == (failed[0] + 1, failed[1] + 1)
    rows = {row["destination"]: row for row in _job_rows(store)}
    assert rows["team-teams"]["error"] == "gave up after 3 attempts: HTTP 500"
    assert rows["team-slack"]["error"] == "refused: HTTP 404"
    assert "to team-teams failed: gave up after 3 attempts" in caplog.text
    # The URL is the credential: never in a log line, an error or a stored job.
    assert SECRET not in caplog.text
    assert not any(SECRET in json.dumps(row, default=str) for row in _job_rows(store))


async def test_the_time_budget_ends_retries_before_the_attempts_do(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    receiver.script(f"/slack/{SECRET}", *([500] * 10))
    entries = [_both(receiver)[0]]
    notifier = _notifier(
        store,
        _destinations(tmp_path, entries),
        budget_seconds=0.5,
        backoff_seconds=1.0,
        backoff_max_seconds=10.0,
    )

    notifier.record(_failed())
    await notifier.drain()

    # The second try would come after the budget's end: failed after one.
    assert notifier.jobs.states() == {"failed": 1}
    assert receiver.attempts[f"/slack/{SECRET}"] == 1


async def test_a_dead_destination_delays_neither_the_kafka_handler_nor_the_others(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    receiver.hang("/slack/dead")
    entries = [
        {"name": "dead", "kind": "slack", "url": receiver.url("slack", "dead")},
        {"name": "alive", "kind": "teams", "url": receiver.url("teams", "alive")},
    ]
    notifier = _notifier(store, _destinations(tmp_path, entries), timeout_seconds=30.0)

    # The handler's part only writes the jobs: nothing is sent before the sender runs.
    assert notifier.record(_failed()) == 2
    assert receiver.attempts == {} and notifier.jobs.states() == {"pending": 2}

    started = await notifier.send_due()
    done, waiting = await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)

    # One finished: the live destination's, delivered while the dead one still waits for an answer.
    assert (len(done), len(waiting)) == (1, 1)
    assert len(receiver.on("/teams/alive")) == 1
    assert await asyncio.to_thread(receiver.wait_attempted, "/slack/dead") == 1
    assert notifier.jobs.states() == {"delivered": 1, "pending": 1}
    for task in started:
        task.cancel()
    await asyncio.gather(*started, return_exceptions=True)


async def test_kafka_handlers_record_jobs_skip_what_is_no_event_and_count_dead_letters_unparsed(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = [
        {
            "name": "ops",
            "kind": "slack",
            "url": receiver.url("slack", "ops"),
            "events": ["dead_letters", "drift"],
        }
    ]
    notifier = _notifier(store, _destinations(tmp_path, entries))
    broker = build_broker(RegistrySettings(), "registry")
    topics = Topics("unit")
    core = RegistryCore(store, LocalArtifactStore(tmp_path / "a"), _no_publish, "automatic")
    kafka_api.register(broker, core, topics, notifier)

    async with TestKafkaBroker(broker):
        await broker.publish(b"{not json at all", topic=topics.for_event(DriftDetected))
        await broker.publish(_drift().model_dump_json().encode(), topic=topics.for_event(DriftDetected))
        for letter in (b"\xff\xfe not even utf-8", b"{malformed", b"[" * 5000, b"x"):
            await broker.publish(
                letter,
                topic=topics.dead_letter,
                headers={"cascade_dlq_reason": "ValidationError: bad", "cascade_dlq_service": "trainer"},
            )
    await notifier.drain()

    kinds = sorted(row["event_kind"] for row in _job_rows(store))
    assert kinds == ["dead_letters", "drift"]  # the threshold is 3: one notice for four letters
    [notice] = [m for m in receiver.on("/slack/ops") if "dead letters" in m["blocks"][0]["text"]["text"]]
    assert notice["blocks"][0]["text"]["text"] == "3 dead letters this window"
    assert "skipped a message on unit.drift-detected.v1 that is no event" in caplog.text


async def _no_publish(_event: object) -> None:
    return None


async def test_dead_letters_notify_once_per_window(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    entries = [
        {"name": "ops", "kind": "teams", "url": receiver.url("teams", "ops"), "models": ["nothing-matches"]}
    ]
    now = [datetime(2026, 12, 1, 9, 0, 30, tzinfo=UTC)]
    notifier = Notifier(
        store,
        _destinations(tmp_path, entries),
        ConsoleLinks(CONSOLE),
        DeliveryPolicy(),
        dead_letter_threshold=2,
        dead_letter_window_seconds=600,
        clock=lambda: now[0],
    )

    written = [notifier.record_dead_letter({"cascade_dlq_reason": "x"}) for _ in range(5)]
    now[0] += timedelta(minutes=10)
    written += [notifier.record_dead_letter({}) for _ in range(2)]

    assert written == [0, 1, 0, 0, 0, 0, 1]
    await notifier.drain()
    cards = [m["attachments"][0]["content"] for m in receiver.on("/teams/ops")]
    assert len(cards) == 2
    assert cards[0]["actions"] == [
        {"type": "Action.OpenUrl", "title": "The loop in the console", "url": f"{CONSOLE}/"}
    ]


# -- destinations file --------------------------------------------------------------------------
def test_the_destinations_file_is_yaml_or_json_and_urls_come_from_files(tmp_path: Path) -> None:
    url_file = tmp_path / "slack-url"
    url_file.write_text("https://hooks.slack.com/services/T/B/x\n")
    path = tmp_path / "notifications.yaml"
    path.write_text(
        f"""
- name: ml-slack
  kind: slack
  url_file: {url_file}
  models: ["fraud*"]
  events: [promoted, validation_failed]
- name: ml-teams
  kind: teams
  url: https://example.webhook.office.com/webhookb2/x
"""
    )

    slack, teams = load_destinations(path)

    assert slack.url.get_secret_value() == "https://hooks.slack.com/services/T/B/x"
    assert slack.destination.wants("promoted", "fraud_eu") and not slack.destination.wants("drift", "fraud")
    assert not slack.destination.wants("promoted", "churn")
    assert teams.destination.wants("dead_letters", "") and teams.destination.wants("drift", "anything")
    assert "https" not in repr(slack) + repr(teams)


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([{"name": "a", "kind": "slack", "uri": f"https://hooks.slack.com/{SECRET}"}], "uri: Extra inputs"),
        ([{"name": "a", "kind": "slack"}], "give exactly one of url and url_file"),
        ([{"name": "a", "kind": "discord", "url": f"https://x/{SECRET}"}], "0.kind: Input should be"),
        ([{"name": "a", "kind": "teams", "url": f"ftp://x/{SECRET}"}], "its url is not an http(s) URL"),
        (
            [{"name": "a", "kind": "teams", "url": f"https://x:port/{SECRET}"}],
            "its url is not an http(s) URL",
        ),
        ([{"name": "a", "kind": "teams", "url": "https://x", "events": ["everything"]}], "0.events.0"),
        ([{"name": "a", "kind": "teams", "url": "https://x"}] * 2, "names a more than once"),
    ],
)
def test_a_broken_destinations_file_says_what_is_wrong_and_quotes_no_url(
    tmp_path: Path, entries: list[dict[str, Any]], problem: str
) -> None:
    path = tmp_path / "notifications.json"
    path.write_text(json.dumps(entries))

    with pytest.raises(InvalidArgument) as error:
        load_destinations(path)

    assert problem in str(error.value)
    assert SECRET not in str(error.value)


def test_an_edited_file_is_taken_in_and_a_broken_edit_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notifications.json"
    destinations = Destinations(path)  # no file yet: no destinations
    assert destinations.current() == []

    path.write_text(json.dumps([{"name": "a", "kind": "teams", "url": "https://x/1"}]))
    assert [t.name for t in destinations.current()] == ["a"]
    path.write_text(json.dumps([{"name": "b", "kind": "teams", "url": f"https://x/{SECRET}", "oops": 1}]))
    assert [t.name for t in destinations.current()] == ["a"]
    assert "keeping the previous destinations" in caplog.text and SECRET not in caplog.text


def test_links_come_from_the_launchers_file_when_it_is_there(tmp_path: Path) -> None:
    url_file = tmp_path / "console.url"
    links = ConsoleLinks("http://fallback:1", url_file)
    assert links.drift("a b") == "http://fallback:1/drift?model=a+b"
    url_file.write_text("http://127.0.0.1:8501/\n")
    assert links.version("fraud", 2) == "http://127.0.0.1:8501/models?model=fraud&version=2"
    assert links.trace("abc") == "http://127.0.0.1:8501/traces?trace=abc"
    assert ConsoleLinks().loop() == ""


def test_the_launcher_tells_the_registry_where_the_consoles_url_will_be(tmp_path: Path) -> None:
    from cascade.stack import Stack, StackConfig

    stack = Stack(StackConfig(home=tmp_path), environ={})

    env = stack.service_env("registry")

    assert env["CASCADE_REGISTRY_CONSOLE_URL_FILE"] == str(tmp_path / "run" / "console.url")
    assert stack.console_url_file() == tmp_path / "run" / "console.url"
    assert "CASCADE_TRAINER_CONSOLE_URL_FILE" not in stack.service_env("trainer")


async def test_events_and_dead_letters_older_than_the_budget_are_not_news(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    notifier = _notifier(store, _destinations(tmp_path, _both(receiver)), budget_seconds=3600)
    expired = _metric("teams", "expired")
    old = _failed().model_copy(update={"time": datetime.now(UTC) - timedelta(hours=2)})
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    # A new consumer group reads the topics' history: none of it is sent.
    assert notifier.record(old) == 0
    assert [notifier.record_dead_letter({"cascade_dlq_time": an_hour_ago}) for _ in range(5)] == [0] * 5

    assert _job_rows(store) == []
    assert _metric("teams", "expired") == expired + 1
    assert notifier.record(_failed()) == 2  # today's event still is news


def test_an_unreachable_webhook_is_described_without_its_url() -> None:
    import socket

    from cascade.services.registry.notifications import http_post

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/services/{SECRET}?token={SECRET}"

    result = http_post(url, b"{}", {}, 2.0)

    assert result.status == 0 and not result.delivered and not result.permanent
    assert result.error.startswith("ConnectionRefusedError") and SECRET not in result.error
    assert SECRET not in http_post(f"http://127.0.0.1:notaport/{SECRET}", b"{}", {}, 2.0).error
