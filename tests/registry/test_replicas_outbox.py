"""Two registry replicas on one database (a SQLite file, a PostgreSQL database): whichever holds the
outbox's lease publishes, whichever holds the webhooks' lease POSTs, so each event reaches Kafka once
and in the order stored, and each webhook is POSTed once, although both replicas make changes and
both run their relays."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cascade.events import Event
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import Publish, RegistryCore
from cascade.services.registry.schema import outbox
from cascade.services.registry.store import RegistryStore
from cascade.services.registry.webhooks import WebhookSender
from tests.registry.test_webhooks import Receiver, _add_versions


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()


def _recording(replica: str, published: list[tuple[str, Event]]) -> Publish:
    async def publish(event: Event) -> None:
        published.append((replica, event))

    return publish


def _replicas(
    tmp_path: Path, database_url: str, receiver: Receiver, published: list[tuple[str, Event]]
) -> list[RegistryCore]:
    return [
        RegistryCore(
            RegistryStore(database_url),
            LocalArtifactStore(tmp_path / "artifacts"),  # shared, as an s3:// store would be
            _recording(name, published),
            "automatic",
            WebhookSender([receiver.url]),
        )
        for name in ("a", "b")
    ]


def _stored_event_ids(store: RegistryStore) -> list[str]:
    """Every event in the outbox, in the order it was stored."""
    with store.engine.connect() as connection:
        rows = connection.execute(sa.select(outbox.c.event_json).order_by(outbox.c.id)).scalars()
        return [json.loads(row)["id"] for row in rows]


def _posted_ids(receiver: Receiver) -> list[str]:
    return [json.loads(body)["id"] for _, body in receiver.requests]


async def _all_delivered(store: RegistryStore, budget: float = 30.0) -> bool:
    """Whether every event is published and its webhook delivered within `budget` seconds (a retry
    budget, not a timing claim)."""
    deadline = asyncio.get_running_loop().time() + budget
    while asyncio.get_running_loop().time() < deadline:
        stored = len(await asyncio.to_thread(_stored_event_ids, store))
        states = await asyncio.to_thread(store.webhook_states)
        if states == {"delivered": stored} and not await asyncio.to_thread(store.pending_events, 1):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_both_replicas_relaying_send_each_event_and_each_webhook_once(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    published: list[tuple[str, Event]] = []
    replicas = _replicas(tmp_path, database_url, receiver, published)
    replicas[0].register_model("bc", "", None, {})
    _add_versions(replicas[0], 6)
    relays = [asyncio.create_task(replica.relay(interval=0.1)) for replica in replicas]
    try:
        for version in range(1, 7):  # the replicas take turns at moving the champion
            await replicas[version % 2].set_alias("bc", "champion", version, "alice", f"move {version}")
        assert await _all_delivered(replicas[0].store)
    finally:
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
    stored = _stored_event_ids(replicas[0].store)
    assert len(stored) >= 12  # an alias change and a promotion per move
    assert [event.id for _, event in published] == stored  # each once, oldest first
    assert sorted(_posted_ids(receiver)) == sorted(stored)  # each POSTed once
    for replica in replicas:
        replica.store.close()


async def test_replicas_delivering_webhooks_at_the_same_time_post_each_once(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    published: list[tuple[str, Event]] = []
    replicas = _replicas(tmp_path, database_url, receiver, published)
    _add_versions(replicas[0], 4)
    for version in range(1, 5):
        await replicas[0].set_alias("bc", f"alias-{version}", version, "bob", "")
    await asyncio.gather(*(replica.deliver_webhooks() for replica in replicas for _ in range(3)))
    stored = _stored_event_ids(replicas[0].store)
    assert len(stored) == 4
    assert sorted(_posted_ids(receiver)) == sorted(stored)
    assert replicas[1].store.webhook_states() == {"delivered": 4}
    for replica in replicas:
        replica.store.close()
