"""The ingest core over its store; the store-bound tests run on SQLite and PostgreSQL (conftest.py)."""

import asyncio
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from sklearn.datasets import load_wine

from cascade.errors import InvalidArgument
from cascade.events import DataArrived, Event
from cascade.services.ingest import tables
from cascade.services.ingest.core import IngestCore, batch_id_of
from cascade.services.ingest.schema import Feature, Policy, Schema
from cascade.services.ingest.store import IngestStore, chain_version, segment_digest


@pytest.fixture
def wine() -> pd.DataFrame:
    return load_wine(as_frame=True).frame.sample(frac=1.0, random_state=1).reset_index(drop=True)


def _core(root: Path, database_url: str = "") -> tuple[IngestCore, list[DataArrived]]:
    announced: list[DataArrived] = []

    async def emit(event: DataArrived) -> None:
        announced.append(event)

    return IngestCore(IngestStore(root, database_url), emit), announced


async def _ingest(core: IngestCore, frame: pd.DataFrame) -> str | None:
    raw = frame.to_csv(index=False).encode()
    result = await core.ingest("wine", frame, batch_id_of(raw), "target", "test")
    return result.dataset_version


async def test_each_batch_makes_a_version_on_top_of_the_previous(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    core, announced = _core(tmp_path, database_url)
    first = await _ingest(core, wine.iloc[:100])
    second = await _ingest(core, wine.iloc[100:])
    assert first and second and first != second
    info = core.store.version("wine", second)
    assert (info.parent, info.rows, len(info.batch_ids)) == (first, len(wine), 2)
    assert [e.dataset_version for e in announced] == [first, second]
    assert announced[1].task == "classification" and announced[1].rows == len(wine)
    # The profile and features are the version's, not the event's: events stay small.
    assert {p["name"] for p in info.profile} == set(info.schema.names)
    assert all(len(e.encoded()) <= DataArrived.MAX_BYTES for e in announced)


async def test_redelivering_a_batch_changes_nothing_and_announces_once(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    core, announced = _core(tmp_path, database_url)
    version = await _ingest(core, wine.iloc[:100])
    again = await _ingest(core, wine.iloc[:100])
    assert again == version
    assert core.store.head("wine") == version
    # The event went out through the outbox with the first upload; the second finds it published.
    assert [e.dataset_version for e in announced] == [version]
    assert core.store.pending_events() == []


async def test_versions_are_content_addressed(tmp_path: Path, wine: pd.DataFrame) -> None:
    one, _ = _core(tmp_path / "a")
    other, _ = _core(tmp_path / "b")
    version = await _ingest(one, wine.iloc[:50])
    # The same rows arriving by another path (as text, under another batch id) get the same id.
    as_text = wine.iloc[:50].astype(str)
    assert (await other.ingest("wine", as_text, "another-batch", "target", "test")).created
    assert other.store.head("wine") == version
    # The id is the hash chain over segment digests (store.py's docstring): one segment here.
    assert version == chain_version(None, segment_digest(one.store.load("wine", version)))


async def test_rejected_rows_are_kept_with_their_reason(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    core, _ = _core(tmp_path, database_url)
    frame = wine.iloc[:20].astype(object)
    frame.iat[3, 0] = "n/a"
    result = await core.ingest("wine", frame, "b1", "target", "test")
    assert result.report["rows_rejected"] == 1
    stored = core.store.rejected_rows("wine", "b1")
    assert [(r.row, r.reason) for r in stored] == [(3, "alcohol: not a number ('n/a')")]
    assert stored[0].values["alcohol"] == "n/a"


async def test_appending_writes_one_segment_and_never_rewrites_history(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    core, _ = _core(tmp_path, database_url)
    first = await _ingest(core, wine.iloc[:100])
    files_after_first = {p: p.stat().st_mtime_ns for p in core.store.segments_dir.iterdir()}
    # The second batch repeats 20 rows of the first: only its 58 new rows make the new segment.
    second = await _ingest(core, wine.iloc[80:])
    assert first and second
    files = {p: p.stat().st_mtime_ns for p in core.store.segments_dir.iterdir()}
    assert {p: files[p] for p in files_after_first} == files_after_first  # untouched
    info = core.store.version("wine", second)
    manifest = core.store.manifest("wine", second)
    assert [s.rows for s in manifest] == [100, len(wine) - 100]
    assert info.segments == [s.segment for s in manifest]
    assert second == chain_version(first, manifest[1].segment)
    assert core.store.batches("wine")[1].report["rows_duplicate"] == 20
    assert core.store.load("wine", second).to_numpy().tolist() == wine.to_numpy(dtype="float64").tolist()


async def test_slices_of_a_version_are_one_parquet_file(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    core, _ = _core(tmp_path, database_url)
    await _ingest(core, wine.iloc[:100])
    await _ingest(core, wine.iloc[100:150])
    head = await _ingest(core, wine.iloc[150:])
    assert head
    expected = wine.to_numpy(dtype="float64")
    for arguments, rows in [
        ({}, expected),
        ({"row_start": 90, "row_end": 120}, expected[90:120]),
        ({"row_start": 160}, expected[160:]),
        ({"last_batches": 2}, expected[100:]),
        ({"last_batches": 1}, expected[150:]),
    ]:
        path, _ = core.store.export("wine", head, **arguments)
        assert pq.read_table(path).to_pandas().to_numpy().tolist() == rows.tolist(), arguments


async def test_the_profile_merges_segments(tmp_path: Path, database_url: str, wine: pd.DataFrame) -> None:
    core, _ = _core(tmp_path, database_url)
    await _ingest(core, wine.iloc[:60])
    head = await _ingest(core, wine.iloc[60:])
    assert head
    profile = {p["name"]: p for p in core.store.version("wine", head).profile}
    alcohol = wine["alcohol"]
    entry = profile["alcohol"]
    assert entry["count"] == len(wine)
    assert entry["mean"] == pytest.approx(alcohol.mean())
    assert entry["std"] == pytest.approx(alcohol.std(ddof=0))
    assert (entry["min"], entry["max"]) == (alcohol.min(), alcohol.max())
    assert entry["quantiles"][2] == pytest.approx(alcohol.median(), rel=0.01)
    assert sum(entry["histogram_counts"]) == len(wine) and len(entry["histogram_edges"]) == 11


async def test_a_declared_schema_governs_cleaning_and_categories_are_profiled(
    tmp_path: Path, database_url: str
) -> None:
    core, announced = _core(tmp_path, database_url)
    schema = Schema(
        (Feature("x", "numeric", min=0, max=10), Feature("c", "categorical", categories=("a", "b"))),
        "y",
        "classification",
        Policy(out_of_range="clip", unknown_category="other"),
    )
    registered = await core.register("declared", schema)
    assert registered.declared and await core.register("declared", schema) == registered
    frame = pd.DataFrame({"x": [1, 20, 3], "c": ["a", "b", "zz"], "y": [0, 1, 0]})
    result = await core.ingest("declared", frame, "b1", "target", "test")
    assert result.report["rows_repaired"] == 2
    info = core.store.version("declared", result.dataset_version or "")
    assert core.store.load("declared", info.version).to_numpy().tolist() == [
        [1.0, 0.0, 0.0],
        [10.0, 1.0, 1.0],
        [3.0, 2.0, 0.0],
    ]
    categories = {p["name"]: p["categories"] for p in info.profile}["c"]
    assert categories == {"a": 1, "b": 1, "__other__": 1}
    assert announced[0].target == "y" and announced[0].rows == 3


async def test_a_store_reopened_after_a_crash_is_consistent(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    core, _ = _core(tmp_path, database_url)
    head = await _ingest(core, wine.iloc[:100])
    # What a crash between writing a segment and committing its version leaves behind.
    (core.store.segments_dir / ".tmp-half").write_bytes(b"PAR1 half")
    (core.store.segments_dir / ("0" * 64 + ".parquet")).write_bytes(b"orphan")
    core.store.close()
    reopened = IngestStore(tmp_path, database_url)
    assert sorted(p.name for p in reopened.segments_dir.iterdir()) == [
        f"{s.segment}.parquet" for s in reopened.manifest("wine", head or "")
    ]
    assert reopened.head("wine") == head


async def test_exports_are_a_bounded_cache_rebuilt_byte_for_byte(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    core, _ = _core(tmp_path, database_url)
    head = await _ingest(core, wine)
    assert head
    path, digest = core.store.export("wine", head)
    for start in range(10):  # more slices than the cache keeps
        core.store.export("wine", head, row_start=start)
    assert len(list(core.store.exports_dir.glob("*.parquet"))) == 8
    assert not path.exists()
    rebuilt, again = core.store.export("wine", head)
    assert (rebuilt, again) == (path, digest)


async def test_a_version_stored_before_segments_is_read_and_appended_to(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    # The layout of older stores: one Parquet file per version with all its rows, no segments.
    old = wine.iloc[:100].astype("float64").reset_index(drop=True)
    store = IngestStore(tmp_path, database_url)
    old.to_parquet(store.versions_dir / "legacy.parquet", index=False)
    features = [c for c in wine.columns if c != "target"]
    with store.engine.begin() as db:
        db.execute(
            tables.datasets.insert().values(
                name="wine",
                schema_json=json.dumps({"features": features, "target": "target", "task": "classification"}),
                head_version="legacy",
                created_at="t",
            )
        )
        db.execute(
            tables.versions.insert().values(
                version="legacy",
                dataset="wine",
                parent=None,
                rows=100,
                size_bytes=1,
                file_sha256="x",
                profile_json="[]",
                created_at="2026-01-01T00:00:00+00:00",
            )
        )
        db.execute(
            tables.batches.insert().values(
                batch_id="b0",
                dataset="wine",
                version="legacy",
                source="old",
                report_json="{}",
                received_at="t",
            )
        )
    store.close()

    core, _ = _core(tmp_path, database_url)
    head = await _ingest(core, wine.iloc[90:])  # ten rows overlap the old version
    assert head
    info = core.store.version("wine", head)
    assert (info.parent, info.rows, info.batch_ids[0]) == ("legacy", len(wine), "b0")
    assert info.segments[0] == "legacy" and head == chain_version("legacy", info.segments[1])
    assert core.store.load("wine", head).to_numpy().tolist() == wine.to_numpy(dtype="float64").tolist()
    assert {p["name"]: p["count"] for p in info.profile}["alcohol"] == len(wine)


async def test_an_upload_while_kafka_hangs_answers_with_its_version_and_event_pending(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    kafka_back, delivered = asyncio.Event(), asyncio.Event()
    announced: list[Event] = []

    async def emit(event: Event) -> None:
        await kafka_back.wait()  # a producer during an outage waits for the broker
        announced.append(event)
        delivered.set()

    core = IngestCore(
        IngestStore(tmp_path, database_url), emit, event_wait_seconds=0.05, outbox_interval_seconds=0.05
    )
    frame = wine.iloc[:50]
    async with asyncio.timeout(5):  # answered, not hung until the caller's deadline
        first = await core.ingest("wine", frame, "b1", "target", "test")
        retried = await core.ingest("wine", frame, "b1", "target", "test")
    assert first.created and first.dataset_version and first.event_pending
    assert (retried.created, retried.dataset_version, retried.event_pending) == (
        False,
        first.dataset_version,
        True,
    )
    assert [json.loads(e)["dataset_version"] for _, _, e in core.store.pending_events()] == [
        first.dataset_version
    ]
    relay = asyncio.create_task(core.outbox.run())
    try:
        kafka_back.set()
        await asyncio.wait_for(delivered.wait(), 10)
        again = await core.ingest("wine", frame, "b1", "target", "test")
    finally:
        relay.cancel()
    assert [e.dataset_version for e in announced] == [first.dataset_version]  # once
    assert not again.event_pending and core.store.pending_events() == []


async def test_a_batch_wider_than_the_limit_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    core, announced = _core(tmp_path)
    core.max_columns = 100
    frame = pd.DataFrame([[0.0] * 200 + [1]], columns=[f"f{i}" for i in range(200)] + ["target"])
    with pytest.raises(InvalidArgument, match="201 columns; the limit is 100"):
        await core.ingest("wide", frame, "b1", "target", "test")
    assert core.store.schema("wide") is None and announced == []


async def test_a_column_name_over_the_limit_is_invalid(tmp_path: Path) -> None:
    core, _ = _core(tmp_path)
    frame = pd.DataFrame({"x": [1.0, 2.0], "t" * 300: [0, 1]})
    with pytest.raises(InvalidArgument, match="300 characters; the limit is 256"):
        await core.ingest("long", frame, "b1", "t" * 300, "test")


async def test_an_event_sent_after_an_outage_continues_the_uploads_trace(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    kafka_up = False
    sent_in: list[int] = []

    async def emit(event: Event) -> None:
        if not kafka_up:
            raise ConnectionError("broker down")
        sent_in.append(trace.get_current_span().get_span_context().trace_id)

    core = IngestCore(IngestStore(tmp_path, database_url), emit, event_wait_seconds=0.05)
    upload = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(upload)))
    try:
        assert (await core.ingest("wine", wine.iloc[:20], "b1", "target", "test")).event_pending
    finally:
        otel_context.detach(token)
    # Later, from a task of the relay's own, outside any request.
    kafka_up = True
    await asyncio.create_task(core.outbox.flush())
    assert sent_in == [0xABC] and core.store.pending_events() == []


async def test_listing_versions_reads_each_as_reading_it_alone(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    # versions() builds every lineage in one pass; it must agree with version() one by one.
    core, _ = _core(tmp_path, database_url)
    made = [await _ingest(core, wine.iloc[start : start + 30]) for start in range(0, 150, 30)]
    listed = core.store.versions("wine")
    assert [info.version for info in listed] == made
    assert listed == [core.store.version("wine", name) for name in made if name]
    assert [len(info.batch_ids) for info in listed] == [1, 2, 3, 4, 5]
    assert listed[-1].segments[:-1] == listed[-2].segments


async def test_listing_versions_on_a_store_from_before_segments(
    tmp_path: Path, database_url: str, wine: pd.DataFrame
) -> None:
    await test_a_version_stored_before_segments_is_read_and_appended_to(tmp_path, database_url, wine)
    store = IngestStore(tmp_path, database_url)
    names = [info.version for info in store.versions("wine")]
    assert names[0] == "legacy" and len(names) == 2
    assert store.versions("wine") == [store.version("wine", name) for name in names]
