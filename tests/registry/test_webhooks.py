"""Webhooks against a real HTTP receiver on loopback: structured CloudEvents, signed, retried with
backoff while the receiver fails, given up after the last attempt; Kafka publishing never waits."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cascade.events import Event
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import Publish, RegistryCore
from cascade.services.registry.store import RegistryStore, sqlite_url
from cascade.services.registry.webhooks import SIGNATURE_HEADER, WebhookSender, signature


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()


def _core(tmp_path: Path, publish: Publish, urls: list[str] | None = None) -> RegistryCore:
    webhooks = WebhookSender(urls, secret="s3") if urls is not None else None
    store = RegistryStore(sqlite_url(tmp_path / "r.sqlite3"))
    return RegistryCore(store, LocalArtifactStore(tmp_path / "a"), publish, "automatic", webhooks)


def _collecting(published: list[Event]) -> Publish:
    async def publish(event: Event) -> None:
        published.append(event)

    return publish


def _add_versions(core: RegistryCore, count: int) -> None:
    # The registry moves an alias only to an artifact that verifies, so the versions get real bytes.
    artifact = b"an onnx file, as far as the webhooks care"
    sha256 = hashlib.sha256(artifact).hexdigest()
    spooled = core.artifacts.path(sha256).with_suffix(".spooled")
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_bytes(artifact)
    core.artifacts.put(spooled, sha256)
    with core.store.transaction() as db:
        core.store.ensure_model(db, "bc")
        for _ in range(count):
            core.store.insert_version(
                db, {**_version(), "artifact_sha256": sha256, "artifact_size": len(artifact)}
            )


async def test_every_event_is_posted_as_a_signed_structured_cloudevent(
    tmp_path: Path, receiver: Receiver
) -> None:
    published: list[Event] = []
    core = _core(tmp_path, _collecting(published), [receiver.url])
    core.register_model("bc", "", None, {})
    _add_versions(core, 1)
    await core.set_alias("bc", "champion", 1, "alice", "first")
    await core.deliver_webhooks()

    assert [e.type for e in published] == [
        "io.cascade.model.alias_changed.v1",
        "io.cascade.model.promoted.v1",
    ]
    assert len(receiver.requests) == 2
    for (headers, body), event in zip(receiver.requests, published, strict=True):
        assert headers["Content-Type"].startswith("application/cloudevents+json")
        assert headers[SIGNATURE_HEADER] == signature("s3", body)
        cloudevent = json.loads(body)
        assert (cloudevent["specversion"], cloudevent["id"], cloudevent["type"]) == (
            "1.0",
            event.id,
            event.type,
        )
        assert cloudevent["data"]["model"] == "bc" and cloudevent["data"]["actor"] == "alice"
    assert core.store.webhook_states() == {"delivered": 2}
    await core.deliver_webhooks()
    assert len(receiver.requests) == 2  # nothing is sent twice once delivered


async def test_a_failing_receiver_is_retried_with_backoff_then_given_up(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.status = 503
    published: list[Event] = []
    core = _core(tmp_path, _collecting(published), [receiver.url])
    _add_versions(core, 1)
    await core.set_alias("bc", "staging", 1, "bob", "")
    assert len(published) == 1  # Kafka got it although the webhook is down

    await core.deliver_webhooks(max_attempts=3)
    assert len(receiver.requests) == 1
    assert core.store.webhook_states() == {"pending": 1}
    await core.deliver_webhooks(max_attempts=3)
    assert len(receiver.requests) == 1  # not due yet: the retry waits 1 s

    for _ in range(2):
        with core.store.transaction() as db:  # skip the backoff instead of sleeping through it
            db.exec_driver_sql("UPDATE outbox SET webhook_next_at = NULL")
        await core.deliver_webhooks(max_attempts=3)
    assert len(receiver.requests) == 3
    assert core.store.webhook_states() == {"failed": 1}


async def test_without_webhooks_nothing_is_queued_for_them(tmp_path: Path) -> None:
    published: list[Event] = []
    core = _core(tmp_path, _collecting(published), [])
    _add_versions(core, 1)
    await core.set_alias("bc", "staging", 1, "bob", "")
    assert len(published) == 1 and core.store.webhook_states() == {}


def _version() -> dict[str, object]:
    return {
        "model": "bc",
        "artifact_sha256": "0" * 64,
        "artifact_size": 1,
        "dataset": "d",
        "dataset_version": "dv",
        "run": {},
        "tags": {},
        "signature": {},
        "idempotency_key": "",
        "description": "",
    }


async def test_a_kafka_outage_delays_events_but_never_fails_the_change(tmp_path: Path) -> None:
    published: list[Event] = []
    kafka_up = False

    async def publish(event: Event) -> None:
        if not kafka_up:
            raise ConnectionError("broker unreachable")
        published.append(event)

    core = _core(tmp_path, publish)
    _add_versions(core, 1)
    moved = await core.set_alias("bc", "champion", 1, "alice", "")
    assert moved.aliases == ["champion"] and published == []
    assert len(core.store.pending_events()) == 2

    relay = asyncio.create_task(core.relay(interval=0.05))
    await asyncio.sleep(0.2)
    assert published == []  # still down: the relay keeps them
    kafka_up = True
    # Wait for the outbox to empty, not for the publishes: the relay marks an event sent only after
    # Kafka took it, and cancelling it between the two would leave it to be published again.
    for _ in range(100):
        if not core.store.pending_events():
            break
        await asyncio.sleep(0.05)
    relay.cancel()
    assert [e.type for e in published] == [
        "io.cascade.model.alias_changed.v1",
        "io.cascade.model.promoted.v1",
    ]
    assert core.store.pending_events() == []


async def test_a_long_outbox_drains_in_bounded_batches_once_each_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cascade.services.registry.core.OUTBOX_BATCH", 3)
    published: list[Event] = []
    kafka_up = False
    drop_when_published = -1  # Kafka drops the publish that comes after this many went out

    async def publish(event: Event) -> None:
        nonlocal drop_when_published
        if not kafka_up:
            raise ConnectionError("broker unreachable")
        if len(published) == drop_when_published:
            drop_when_published = -1
            raise ConnectionError("leader moved")
        published.append(event)

    core = _core(tmp_path, publish)
    _add_versions(core, 2)
    for move in range(7):  # Kafka is down: fourteen events wait in the outbox
        await core.set_alias("bc", "champion", 1 + move % 2, "alice", "")
    queued = [json.loads(event_json)["id"] for _, _, event_json in core.store.pending_events()]
    assert len(queued) == 14

    kafka_up, drop_when_published = True, 4  # back, but one publish fails in the middle of a batch
    with pytest.raises(ConnectionError, match="leader moved"):
        await core.flush_outbox()
    assert len(core.store.pending_events()) == 10  # what went out is marked, in its own batch
    await core.flush_outbox()
    assert [event.id for event in published] == queued
    assert core.store.pending_events() == []
