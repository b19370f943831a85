"""The registry's lineage against an in-memory fake of ingest: no broker, no gRPC. A version's
lineage is its own record plus what ingest says of its dataset version."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from cascade.client.records import DatasetVersion
from cascade.errors import NotFound, Unavailable
from cascade.events import Event
from cascade.grpc_io import ReceivedFile
from cascade.services.registry.artifacts import LocalArtifactStore
from cascade.services.registry.core import Lineage, NewVersion, RegistryCore
from cascade.services.registry.store import RegistryStore, sqlite_url


@dataclass
class FakeIngest:
    versions: dict[tuple[str, str], DatasetVersion] = field(default_factory=dict)
    failure: Exception | None = None
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def get_dataset_version(self, dataset: str, version: str = "") -> DatasetVersion:
        self.asked.append((dataset, version))
        if self.failure:
            raise self.failure
        try:
            return self.versions[dataset, version]
        except KeyError:
            raise NotFound(f"ingest: no version {version} of {dataset}") from None


def _dataset_version(version: str, parent: str, batch_ids: tuple[str, ...]) -> DatasetVersion:
    return DatasetVersion(
        dataset="d",
        version=version,
        parent=parent,
        batch_ids=batch_ids,
        rows=10,
        target="target",
        features=("x",),
        task="classification",
        profile=(),
        created_at=None,
        size_bytes=0,
        segments=(),
    )


def _identity_onnx() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1])],
    )
    model: onnx.ModelProto = helper.make_model(graph)
    return model.SerializeToString()


@pytest.fixture
def core(tmp_path: Path) -> Iterator[RegistryCore]:
    async def publish(event: Event) -> None:
        pass

    store = RegistryStore(sqlite_url(tmp_path / "registry.sqlite3"))
    yield RegistryCore(store, LocalArtifactStore(tmp_path / "artifacts"), publish, "automatic")
    store.close()


async def _register(core: RegistryCore, tmp_path: Path, dataset_version: str) -> int:
    artifact = _identity_onnx()
    spooled = tmp_path / "upload"
    spooled.write_bytes(artifact)
    record = await core.create_version(
        NewVersion("m", "d", dataset_version, run={"run_id": "r1"}),
        ReceivedFile(spooled, len(artifact), hashlib.sha256(artifact).hexdigest()),
    )
    return record.version


async def test_lineage_is_the_version_and_its_dataset_versions_parent_and_batches(
    core: RegistryCore, tmp_path: Path
) -> None:
    ingest = FakeIngest({("d", "v2"): _dataset_version("v2", "v1", ("b1", "b2"))})
    version = await _register(core, tmp_path, "v2")
    record, parent, batch_ids = await Lineage(core, ingest).of("m", version)
    assert (record.model, record.version, record.dataset_version) == ("m", version, "v2")
    assert (parent, batch_ids) == ("v1", ["b1", "b2"])
    assert ingest.asked == [("d", "v2")]


async def test_a_dataset_version_ingest_no_longer_knows_is_not_found(
    core: RegistryCore, tmp_path: Path
) -> None:
    ingest = FakeIngest()
    version = await _register(core, tmp_path, "v-gone")
    with pytest.raises(NotFound, match="ingest no longer knows dataset version v-gone"):
        await Lineage(core, ingest).of("m", version)


async def test_ingest_unavailable_stays_unavailable(core: RegistryCore, tmp_path: Path) -> None:
    ingest = FakeIngest(failure=Unavailable("ingest at i: describing d@v2: connection refused"))
    version = await _register(core, tmp_path, "v2")
    with pytest.raises(Unavailable, match="connection refused"):
        await Lineage(core, ingest).of("m", version)


async def test_an_unknown_version_is_not_found_without_asking_ingest(
    core: RegistryCore, tmp_path: Path
) -> None:
    ingest = FakeIngest()
    await _register(core, tmp_path, "v2")
    with pytest.raises(NotFound):
        await Lineage(core, ingest).of("m", 99)
    assert ingest.asked == []
