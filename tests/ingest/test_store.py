"""The store on both databases: the migrations build exactly the declared schema, a store from before
migrations is adopted with its data, and two replicas sharing one database (two store instances, each
with its own connections and process lock) keep one chain of versions, count a batch once and
publish each event from one outbox."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cascade.errors import AlreadyExists, Unavailable
from cascade.events import DataArrived, Event
from cascade.services.ingest.cleaning import clean, infer_schema
from cascade.services.ingest.core import IngestCore
from cascade.services.ingest.schema import Feature, Schema
from cascade.services.ingest.store import IngestStore, NewVersion
from cascade.services.ingest.tables import metadata


def _frame(start: int, rows: int) -> pd.DataFrame:
    values = np.arange(start, start + rows, dtype="float64")
    return pd.DataFrame({"x": values, "y": values * 2.0, "target": (values % 2).astype(int)})


def _event(new: NewVersion) -> DataArrived:
    return DataArrived(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{new.dataset}:{new.version}")),
        source="test",
        subject=new.dataset,
        dataset=new.dataset,
        dataset_version=new.version,
        parent_version=new.parent,
        batch_id="b",
        rows=new.rows,
        target=new.schema.target,
        task=new.schema.task,
    )


def _append(store: IngestStore, batch_id: str, frame: pd.DataFrame) -> tuple[str | None, dict[str, int]]:
    """What IngestCore does with a batch, without the core's per-process lock."""
    schema = store.schema("d") or infer_schema(_frame(0, 4), "target", 20)
    batch = clean(frame, schema)
    report = batch.report()
    version, _ = store.append_batch(
        "d", schema, batch_id, batch.rows, report, batch.rejected, "test", batch.hashes, announce=_event
    )
    return version, report


def _race(workers: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(workers)

    def run(worker: int) -> None:
        start.wait()
        try:
            work(worker)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_the_migrations_build_exactly_the_declared_schema(tmp_path: Path, database_url: str) -> None:
    store = IngestStore(tmp_path, database_url)
    IngestStore(tmp_path, database_url).close()  # a second start finds the schema current
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0002"
    store.close()


def test_two_replicas_starting_at_once_migrate_once(tmp_path: Path, database_url: str) -> None:
    opened: list[IngestStore] = []
    _race(3, lambda _worker: opened.append(IngestStore(tmp_path, database_url)))
    with opened[0].engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [
            "0002"
        ]
    for store in opened:
        store.close()


# The sqlite3 store's own schema, as it created it before migrations, in its oldest form (an outbox
# without trace_carrier, no lookup indexes).
_BEFORE_MIGRATIONS = """
CREATE TABLE datasets (name TEXT PRIMARY KEY, schema_json TEXT NOT NULL, head_version TEXT,
    created_at TEXT NOT NULL);
CREATE TABLE versions (version TEXT NOT NULL, dataset TEXT NOT NULL REFERENCES datasets(name),
    parent TEXT, rows INTEGER NOT NULL, size_bytes INTEGER NOT NULL, file_sha256 TEXT NOT NULL,
    profile_json TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (dataset, version));
CREATE TABLE segments (dataset TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL,
    segment TEXT NOT NULL, row_start INTEGER NOT NULL, rows INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL, stats_json TEXT NOT NULL, PRIMARY KEY (dataset, version));
CREATE TABLE batches (batch_id TEXT NOT NULL, dataset TEXT NOT NULL REFERENCES datasets(name),
    version TEXT, source TEXT NOT NULL, report_json TEXT NOT NULL, received_at TEXT NOT NULL,
    PRIMARY KEY (dataset, batch_id));
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL, event_json TEXT NOT NULL, published INTEGER NOT NULL DEFAULT 0);
CREATE INDEX ix_outbox_pending ON outbox(published, id);
CREATE TABLE rejected_rows (dataset TEXT NOT NULL, batch_id TEXT NOT NULL, row INTEGER NOT NULL,
    reason TEXT NOT NULL, values_json TEXT NOT NULL, PRIMARY KEY (dataset, batch_id, row));
"""


def test_a_store_from_before_migrations_is_adopted_with_its_data(tmp_path: Path) -> None:
    first = _frame(0, 10)
    store = IngestStore(tmp_path)
    head, _ = _append(store, "b1", first)
    assert head
    with store.engine.connect() as connection:
        rows = {
            table: [tuple(r) for r in connection.exec_driver_sql(f"SELECT * FROM {table}")]
            for table in ("datasets", "versions", "segments", "batches")
        }
    store.close()
    # The same rows in a file the sqlite3 store made, as an existing data dir holds it.
    (tmp_path / "ingest.sqlite3").unlink()
    for leftover in tmp_path.glob("ingest.sqlite3-*"):
        leftover.unlink()
    old = sqlite3.connect(tmp_path / "ingest.sqlite3")
    old.executescript(_BEFORE_MIGRATIONS)
    for table, values in rows.items():
        for row in values:
            old.execute(f"INSERT INTO {table} VALUES ({','.join('?' * len(row))})", row)
    old.execute(
        "INSERT INTO outbox (event_id, event_type, event_json, published) VALUES ('e1', 't', '{}', 1)"
    )
    old.commit()
    old.close()

    adopted = IngestStore(tmp_path)
    assert adopted.head("d") == head and adopted.version("d").batch_ids == ["b1"]
    assert adopted.load("d", head).to_numpy().tolist() == first.to_numpy(dtype="float64").tolist()
    second, _ = _append(adopted, "b2", _frame(5, 10))  # half known, half new
    assert second and adopted.version("d", second).parent == head
    assert adopted.version("d", second).rows == 15
    assert [json.loads(e)["dataset_version"] for _, _, e in adopted.pending_events()] == [second]
    assert adopted.trace_carrier("e1") == {}
    with adopted.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0002"
        indexes = {r[1] for r in connection.exec_driver_sql("SELECT * FROM sqlite_master WHERE type='index'")}
    assert {"ix_segments_dataset_segment", "ix_batches_dataset_version"} <= indexes
    adopted.close()


def test_two_replicas_appending_to_one_dataset_make_one_chain(tmp_path: Path, database_url: str) -> None:
    # Both replicas see the same segments (one data dir here; a shared volume or object store in a
    # deployment) and one database.
    replicas = [IngestStore(tmp_path, database_url), IngestStore(tmp_path, database_url)]
    batches_per_worker, rows_per_batch = 3, 7

    def append(worker: int) -> None:
        for n in range(batches_per_worker):
            start = (worker * batches_per_worker + n) * rows_per_batch
            _append(replicas[worker % 2], f"w{worker}-{n}", _frame(start, rows_per_batch))

    _race(4, append)
    store = replicas[0]
    total = 4 * batches_per_worker
    head = store.head("d")
    assert head
    info = store.version("d", head)
    versions = store.versions("d")
    assert (info.rows, len(info.batch_ids), len(versions)) == (total * rows_per_batch, total, total)
    # One chain: every version's parent is the one made before it, none forks.
    parents = [v.parent for v in versions]
    assert len(set(parents)) == total and sorted(parents, key=str) == sorted(
        [None, *(v.version for v in versions[:-1])], key=str
    )
    assert sorted(store.load("d", head)["x"].tolist()) == list(np.arange(total * rows_per_batch, dtype=float))
    # One event per version, in one outbox; what one replica publishes the other no longer sees.
    pending = replicas[1].pending_events()
    assert sorted(json.loads(e)["dataset_version"] for _, _, e in pending) == sorted(
        v.version for v in versions
    )
    store.mark_published([event_id for event_id, _, _ in pending])
    assert replicas[1].pending_events() == []
    for replica in replicas:
        replica.close()


def test_one_batch_taken_by_two_replicas_at_once_counts_once(tmp_path: Path, database_url: str) -> None:
    replicas = [IngestStore(tmp_path, database_url), IngestStore(tmp_path, database_url)]
    _append(replicas[0], "first", _frame(0, 5))
    answers: list[tuple[str | None, dict[str, int]]] = []

    def redeliver(worker: int) -> None:  # one Kafka message handed to both, or a client's retry
        answers.append(_append(replicas[worker], "again", _frame(3, 6)))

    _race(2, redeliver)
    store = replicas[0]
    assert answers[0] == answers[1]  # the same version and report, whichever stored it
    version, report = answers[0]
    assert (report["rows_duplicate"], report["rows_accepted"]) == (2, 4)
    assert [b.batch_id for b in store.batches("d")] == ["first", "again"]
    assert [v.version for v in store.versions("d")][-1] == version == store.head("d")
    assert len(store.versions("d")) == 2 and len(store.pending_events()) == 2
    for replica in replicas:
        replica.close()


def test_two_replicas_declaring_a_dataset_at_once_keep_one_schema(tmp_path: Path, database_url: str) -> None:
    replicas = [IngestStore(tmp_path, database_url), IngestStore(tmp_path, database_url)]
    declared = [
        Schema((Feature("a"),), "target", "regression"),
        Schema((Feature("b"),), "target", "regression"),
    ]
    outcomes: list[str] = []

    def register(worker: int) -> None:
        try:
            replicas[worker].register("d", declared[worker])
            outcomes.append("registered")
        except AlreadyExists:
            outcomes.append("refused")

    _race(2, register)
    assert sorted(outcomes) == ["refused", "registered"]
    kept = replicas[0].schema("d")
    assert kept is not None and kept.names in (declared[0].names, declared[1].names)
    for replica in replicas:
        replica.close()


@pytest.mark.parametrize("published", [False, True])
def test_an_event_stored_twice_stays_one_row(tmp_path: Path, database_url: str, published: bool) -> None:
    store = IngestStore(tmp_path, database_url)
    version, _ = _append(store, "b1", _frame(0, 3))
    assert version
    event_id = store.pending_events()[0][0]
    if published:
        store.mark_published([event_id])
    info = store.version("d", version)
    store.ensure_announced(_event(NewVersion("d", version, None, info.rows, info.schema)))
    assert len(store.pending_events()) == (0 if published else 1)
    assert store.event_pending(_event(NewVersion("d", version, None, 3, info.schema)).id) is not published
    store.close()


def test_a_batch_cleaned_against_a_schema_another_replica_did_not_keep_is_sent_again(
    tmp_path: Path, database_url: str
) -> None:
    replicas = [IngestStore(tmp_path, database_url), IngestStore(tmp_path, database_url)]
    classes = infer_schema(_frame(0, 4), "target", 20)
    regression = infer_schema(_frame(0, 4).assign(target=[0.5, 1.5, 2.5, 3.5]), "target", 20)
    assert classes != regression
    batch = clean(_frame(0, 4), classes)
    replicas[0].append_batch("d", classes, "first", batch.rows, batch.report(), [], "test", batch.hashes)
    # The other replica read no schema before the first batch committed, and inferred its own.
    other = clean(_frame(4, 4).assign(target=[0.5, 1.5, 2.5, 3.5]), regression)
    with pytest.raises(Unavailable, match="send the batch again"):
        replicas[1].append_batch(
            "d", regression, "second", other.rows, other.report(), [], "test", other.hashes
        )
    assert replicas[1].batch("d", "second") is None and len(replicas[1].versions("d")) == 1
    for replica in replicas:
        replica.close()


async def test_two_replicas_publish_every_version_once_at_least(tmp_path: Path, database_url: str) -> None:
    # One replica cannot reach Kafka: its events wait in the shared outbox, and the other's relay
    # publishes them. Delivery is at least once; consumers know an event by its id.
    published: list[Event] = []

    async def unreachable(event: Event) -> None:
        raise ConnectionError("this replica cannot reach the broker")

    async def reachable(event: Event) -> None:
        published.append(event)

    cores = [
        IngestCore(IngestStore(tmp_path, database_url), unreachable, event_wait_seconds=0.05),
        IngestCore(IngestStore(tmp_path, database_url), reachable, event_wait_seconds=0.05),
    ]
    await cores[1].ingest("d", _frame(0, 5), "b0", "target", "test")  # the dataset and its schema
    results = await asyncio.gather(
        *(cores[n % 2].ingest("d", _frame(5 * n, 5), f"b{n}", "target", "test") for n in range(1, 9))
    )
    await cores[1].outbox.flush()
    versions = [info.version for info in cores[0].store.versions("d")]
    assert all(result.created for result in results) and len(versions) == 9
    assert {event.id for event in published} == {event_id for event_id in _event_ids(cores[1].store)}
    assert sorted({e.dataset_version for e in published if isinstance(e, DataArrived)}) == sorted(versions)
    assert cores[0].store.pending_events() == []
    for core in cores:
        core.store.close()


def _event_ids(store: IngestStore) -> list[str]:
    with store.engine.connect() as connection:
        return [row[0] for row in connection.exec_driver_sql("SELECT event_id FROM outbox")]
