from pathlib import Path

import pandas as pd
import pytest
from sklearn.datasets import load_wine

from services.ingest.core import IngestCore, batch_id_of
from services.ingest.store import IngestStore, content_address
from shared.events import DataArrived


@pytest.fixture
def wine() -> pd.DataFrame:
    return load_wine(as_frame=True).frame.sample(frac=1.0, random_state=1).reset_index(drop=True)


def _core(root: Path) -> tuple[IngestCore, list[DataArrived]]:
    announced: list[DataArrived] = []

    async def emit(event: DataArrived) -> None:
        announced.append(event)

    return IngestCore(IngestStore(root), emit), announced


async def _ingest(core: IngestCore, frame: pd.DataFrame) -> str | None:
    raw = frame.to_csv(index=False).encode()
    result = await core.ingest("wine", frame, batch_id_of(raw), "target", "test")
    return result.dataset_version


async def test_each_batch_makes_a_version_on_top_of_the_previous(tmp_path: Path, wine: pd.DataFrame) -> None:
    core, announced = _core(tmp_path)
    first = await _ingest(core, wine.iloc[:100])
    second = await _ingest(core, wine.iloc[100:])
    assert first and second and first != second
    info = core.store.version("wine", second)
    assert (info.parent, info.rows, len(info.batch_ids)) == (first, len(wine), 2)
    assert [e.dataset_version for e in announced] == [first, second]
    assert announced[1].task == "classification" and announced[1].rows == len(wine)
    assert {p.name for p in announced[1].profile} == set(info.schema.features)


async def test_redelivering_a_batch_changes_nothing_but_announces_again(
    tmp_path: Path, wine: pd.DataFrame
) -> None:
    core, announced = _core(tmp_path)
    version = await _ingest(core, wine.iloc[:100])
    again = await _ingest(core, wine.iloc[:100])
    assert again == version
    assert core.store.head("wine") == version
    assert [e.id for e in announced] == [announced[0].id] * 2  # the same event, recognisably


async def test_versions_are_content_addressed(tmp_path: Path, wine: pd.DataFrame) -> None:
    one, _ = _core(tmp_path / "a")
    other, _ = _core(tmp_path / "b")
    version = await _ingest(one, wine.iloc[:50])
    # The same rows arriving by another path (as text, under another batch id) get the same id.
    as_text = wine.iloc[:50].astype(str)
    assert (await other.ingest("wine", as_text, "another-batch", "target", "test")).created
    assert other.store.head("wine") == version
    assert version == content_address(one.store.load(version))


async def test_rejected_rows_are_kept_with_their_reason(tmp_path: Path, wine: pd.DataFrame) -> None:
    core, _ = _core(tmp_path)
    frame = wine.iloc[:20].astype(object)
    frame.iat[3, 0] = "n/a"
    result = await core.ingest("wine", frame, "b1", "target", "test")
    assert result.report["rows_rejected"] == 1
    stored = core.store._db.execute("SELECT row, reason FROM rejected_rows WHERE batch_id='b1'").fetchall()
    assert stored == [(3, "alcohol: not a number ('n/a')")]
