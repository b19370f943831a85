"""The store on both databases: the migrations build exactly the declared schema, and concurrent
writers (two registry replicas on one database) neither lose an alias move nor reuse a number."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from cascade.services.registry.schema import metadata
from cascade.services.registry.store import RegistryStore


def test_the_migrations_build_exactly_the_declared_schema(database_url: str) -> None:
    store = RegistryStore(database_url)
    RegistryStore(database_url).close()  # a second start finds the schema current and changes nothing
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0007"
    store.close()


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


def _version(model: str) -> dict[str, object]:
    return {
        "model": model,
        "artifact_sha256": "0" * 64,
        "artifact_size": 1,
        "dataset": "d",
        "dataset_version": "dv",
        "run": {"metrics": {"accuracy": 0.9}},
        "tags": {},
        "signature": {},
        "idempotency_key": "",
        "description": "",
    }


def test_replicas_starting_at_once_on_a_fresh_database_migrate_it_once(database_url: str) -> None:
    # Without the shared advisory lock, PostgreSQL failed the second CREATE TABLE alembic_version.
    opened: list[RegistryStore] = []
    _race(3, lambda _worker: opened.append(RegistryStore(database_url)))
    with opened[0].engine.connect() as connection:
        versions = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    assert len(versions) == 1
    for store in opened:
        store.close()


def test_two_replicas_racing_lose_no_alias_move_and_number_versions_once(database_url: str) -> None:
    replicas = [RegistryStore(database_url), RegistryStore(database_url)]
    created: list[int] = []

    def create(worker: int) -> None:
        store = replicas[worker % 2]
        for _ in range(5):
            with store.transaction() as db:
                store.ensure_model(db, "m")
                created.append(store.insert_version(db, _version("m")))

    _race(4, create)
    assert sorted(created) == list(range(1, 21))

    def promote(worker: int) -> None:
        store = replicas[worker % 2]
        for step in range(10):
            with store.transaction() as db:
                store.ensure_model(db, "m")
                store.move_alias(db, "m", "champion", worker * 5 + step % 5 + 1, f"client-{worker}", "race")

    _race(4, promote)
    history = replicas[0].history("m")
    assert len(history) == 40
    assert sorted(m["actor"] for m in history) == sorted(f"client-{w}" for w in range(4) for _ in range(10))
    # One consistent chain: every move starts where the one before it ended.
    assert history[0]["from_version"] is None
    for before, move in itertools.pairwise(history):
        assert move["from_version"] == before["to_version"]
    assert replicas[1].aliases("m") == {"champion": history[-1]["to_version"]}
    for store in replicas:
        store.close()


def test_tags_and_metrics_are_rows_so_search_runs_in_sql(database_url: str) -> None:
    store = RegistryStore(database_url)
    with store.transaction() as db:
        store.ensure_model(db, "m")
        version = store.insert_version(db, {**_version("m"), "tags": {"team": "a"}})
        count = db.execute(sa.text("SELECT COUNT(*) FROM version_metrics WHERE name = 'accuracy'"))
        assert count.scalar() == 1
    assert store.get("m", version).tags == {"team": "a"}
    store.close()


def test_each_version_read_carries_its_own_tags_however_many_are_read(database_url: str) -> None:
    # Few versions are read by (model, version); a long listing by model: both must give each its own.
    store = RegistryStore(database_url)
    with store.transaction() as db:
        store.ensure_model(db, "m")
        store.ensure_model(db, "other")
        store.insert_version(db, {**_version("other"), "tags": {"n": "other"}})
        for number in range(1, 206):
            store.insert_version(db, {**_version("m"), "tags": {"n": str(number)}})
    assert store.get("m", 7).tags == {"n": "7"}
    assert store.get("other", 1).tags == {"n": "other"}
    listed = store.list_versions("m")
    assert len(listed) == 205
    assert all(record.tags == {"n": str(record.version)} for record in listed)
    store.close()
