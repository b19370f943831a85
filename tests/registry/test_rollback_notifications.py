"""A rollback reaches the team on Slack and Teams (the real local receiver that checks their shapes)
with its cause, the step it stopped at and the champion that takes all traffic; a rollout's other
moves are not news, and its promotion is announced as any promotion is."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cascade.events import Event, ModelPromoted, ModelTrafficChanged, ModelValidated
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import RegistryCore
from cascade.services.registry.notifications import (
    EVENT_KINDS,
    ConsoleLinks,
    DeliveryPolicy,
    Destinations,
    Notifier,
)
from cascade.services.registry.rollouts import RolloutPlan, RolloutStep
from cascade.services.registry.store import RegistryStore
from tests.registry.chat_receiver import ChatReceiver, running_receiver

CONSOLE = "http://console.example:8501"
SECRET = "T000/B000/XXXXSECRETXXXX"
CAUSE = "max_error_rate breached: 0.031 > 0.01 over 412 requests"


@pytest.fixture
def receiver() -> Iterator[ChatReceiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture
def store(database_url: str) -> Iterator[RegistryStore]:
    opened = RegistryStore(database_url)
    yield opened
    opened.close()


def _notifier(store: RegistryStore, receiver: ChatReceiver, tmp_path: Path, **extra: Any) -> Notifier:
    path = tmp_path / "notifications.json"
    path.write_text(
        json.dumps(
            [
                {"name": "team-slack", "kind": "slack", "url": receiver.url("slack", SECRET)} | extra,
                {"name": "team-teams", "kind": "teams", "url": receiver.url("teams", SECRET)} | extra,
            ]
        )
    )
    return Notifier(
        store,
        Destinations(path),
        ConsoleLinks(CONSOLE),
        DeliveryPolicy(backoff_seconds=0.01, backoff_max_seconds=0.05, timeout_seconds=2.0),
    )


async def _rolled_back_by_the_core(store: RegistryStore, tmp_path: Path) -> list[Event]:
    """The registry's own events for: fraud v1 champion, v2 rolling out (progressive) and moved to
    its canary step, then aborted with CAUSE by the monitor."""
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    plan = RolloutPlan((RolloutStep("shadow", 100), RolloutStep("canary", 10)))
    core = RegistryCore(store, LocalArtifactStore(tmp_path / "a"), publish, "progressive", default_plan=plan)
    for _ in range(2):
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
        await core.on_validated(
            ModelValidated(
                source="v", subject="fraud", model="fraud", model_version=version, passed=True, gates=[]
            )
        )
    await core.advance_rollout("fraud", 2, 0, "monitor", "shadow held")
    await core.abort_rollout("fraud", 2, "monitor", CAUSE)
    return published


async def test_a_rollback_reaches_slack_and_teams_with_its_cause(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    assert "rolled_back" in EVENT_KINDS  # destinations that name no events take rollbacks too
    notifier = _notifier(store, receiver, tmp_path)
    events = await _rolled_back_by_the_core(store, tmp_path)
    traffic = [e for e in events if isinstance(e, ModelTrafficChanged)]
    assert [e.action for e in traffic] == ["rollout_started", "rollout_advanced", "rolled_back"]

    for event in events:
        notifier.record(event)
    await notifier.drain()

    assert receiver.rejected == []
    # v1's first promotion is the only other news; the rollout's start and advance are not.
    *_, slack = receiver.on(f"/slack/{SECRET}")
    assert slack["blocks"][0]["text"]["text"] == "fraud v2 rolled back"
    text = json.dumps(slack)
    assert CAUSE.replace(">", "&gt;") in text and "v1 takes all traffic" in text  # Slack's escaping
    fields = [f["text"] for b in slack["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert "*At step*\n1" in fields and "*By*\nmonitor" in fields
    *_, teams = receiver.on(f"/teams/{SECRET}")
    card = teams["attachments"][0]["content"]
    assert card["body"][0]["text"] == "fraud v2 rolled back" and card["body"][0]["color"] == "Attention"
    facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert (facts["Rolled back"], facts["Cause"], facts["Champion"]) == ("v2", CAUSE, "v1 takes all traffic")
    assert [a["url"] for a in card["actions"]] == [
        f"{CONSOLE}/models?model=fraud&version=2",
        f"{CONSOLE}/models?model=fraud&version=1",
    ]
    titles = [m["blocks"][0]["text"]["text"] for m in receiver.on(f"/slack/{SECRET}")]
    assert titles == ["fraud v1 is champion", "fraud v2 rolled back"]


async def test_only_rollbacks_of_a_rollout_are_news_and_its_promotion_is_a_promotion(
    store: RegistryStore, receiver: ChatReceiver, tmp_path: Path
) -> None:
    notifier = _notifier(store, receiver, tmp_path, events=["rolled_back", "promoted"])
    common = {"source": "cascade/registry", "subject": "fraud", "model": "fraud", "actor": "monitor"}
    for action in ("set", "rollout_started", "rollout_advanced", "promoted"):
        quiet = ModelTrafficChanged(
            **common, revision=1, champion_version=1, action=action, rollout_version=2
        )
        assert notifier.notice_for(quiet) is None
    notifier.record(ModelPromoted(**common, model_version=2, previous_version=1, reason="completed its plan"))
    notifier.record(
        ModelTrafficChanged(
            **common, revision=9, champion_version=1, action="rolled_back", rollout_version=3, reason=CAUSE
        )
    )
    await notifier.drain()

    titles = [m["blocks"][0]["text"]["text"] for m in receiver.on(f"/slack/{SECRET}")]
    assert titles == ["fraud v2 is champion", "fraud v3 rolled back"]
    assert receiver.rejected == []
