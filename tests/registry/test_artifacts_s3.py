"""The registry's artifacts in S3 (moto's server, a real S3 API in its own process): two registry
replicas share one bucket and one database, each with its own local cache; what one stores, the
other serves, verified, and corruption in the bucket is refused rather than served."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cascade.client.calls import RemoteService
from cascade.client.ingest import IngestClient
from cascade.client.registry import RegistryClient
from cascade.errors import FailedPrecondition, NotFound
from cascade.events import Event
from cascade.grpc_io import open_channel
from cascade.objectstore import S3ObjectStore
from cascade.services.registry.artifacts import CachedArtifactStore, LocalArtifactStore, open_artifact_store
from cascade.services.registry.core import Lineage, RegistryCore
from cascade.services.registry.grpc_api import RegistryServicer
from cascade.services.registry.store import RegistryStore, sqlite_url
from cascade.services.trainer.training import TrainingResult
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc
from tests.grpc_server import serving
from tests.s3_server import (
    S3Server,
    s3_server_fixture,  # noqa: F401  (the fixture s3_server)
)


def _store(s3_server: S3Server, bucket: str, data_dir: Path) -> CachedArtifactStore:
    store = open_artifact_store(f"s3://{bucket}/artifacts", data_dir, s3_server.settings())
    assert isinstance(store, CachedArtifactStore)
    return store


def _uploaded(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    spooled = tmp_path / "spooled"
    spooled.write_bytes(data)
    return spooled, hashlib.sha256(data).hexdigest()


def test_an_empty_url_keeps_local_files(tmp_path: Path, s3_server: S3Server) -> None:
    store = open_artifact_store("", tmp_path, s3_server.settings())
    assert isinstance(store, LocalArtifactStore) and store.root == tmp_path / "artifacts"


def test_an_artifact_stored_by_one_replica_is_served_verified_by_another(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    first, second = _store(s3_server, bucket, tmp_path / "r1"), _store(s3_server, bucket, tmp_path / "r2")
    data = b"onnx bytes" * 5000
    spooled, sha256 = _uploaded(tmp_path, data)
    first.put(spooled, sha256)
    assert not spooled.exists()  # moved into the first replica's cache
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"artifacts/{sha256[:2]}/{sha256}"]  # the key is the digest
    assert not second.path(sha256).exists()
    assert second.verify(sha256).read_bytes() == data  # fetched, verified, cached
    # A cached copy damaged on disk is fetched again from the bucket, not served.
    second.path(sha256).write_bytes(b"x" * len(data))
    assert second.verify(sha256).read_bytes() == data


def test_a_corrupt_object_in_the_bucket_is_refused_and_a_missing_one_not_found(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    writer, reader = _store(s3_server, bucket, tmp_path / "r1"), _store(s3_server, bucket, tmp_path / "r2")
    spooled, sha256 = _uploaded(tmp_path, b"onnx bytes" * 5000)
    writer.put(spooled, sha256)
    s3_server.client().put_object(
        Bucket=bucket, Key=f"artifacts/{sha256[:2]}/{sha256}", Body=b"tampered", Metadata={"sha256": sha256}
    )
    with pytest.raises(FailedPrecondition, match="corrupt"):
        reader.verify(sha256)
    assert not reader.path(sha256).exists()
    with pytest.raises(NotFound, match=f"missing from s3://{bucket}/artifacts"):
        reader.verify("ab" * 32)


def test_a_second_upload_of_stored_bytes_writes_nothing(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    # Versioned, so an overwrite would show as a second version of the key.
    s3_server.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store = _store(s3_server, bucket, tmp_path / "r1")
    assert isinstance(store.objects, S3ObjectStore)
    for _ in range(2):
        spooled, sha256 = _uploaded(tmp_path, b"same bytes")
        store.put(spooled, sha256)
    versions = s3_server.client().list_object_versions(Bucket=store.objects.bucket).get("Versions", [])
    assert len(versions) == 1


@dataclass
class Replica:
    client: RegistryClient
    stub: registry_pb2_grpc.RegistryServiceStub
    core: RegistryCore


async def _ignore(event: Event) -> None:
    pass


@contextlib.asynccontextmanager
async def _replica(database_url: str, artifacts: CachedArtifactStore, spool: Path) -> AsyncIterator[Replica]:
    core = RegistryCore(RegistryStore(database_url), artifacts, _ignore, "automatic")
    async with open_channel("127.0.0.1:1") as nowhere:  # lineage is not asked for here
        lineage = Lineage(core, IngestClient(RemoteService("ingest", nowhere)))
        servicer = RegistryServicer(core, lineage, spool, max_artifact_bytes=5_000_000)

        def register(server: grpc.aio.Server) -> None:
            registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)

        async with serving(register) as address, open_channel(address) as channel:
            yield Replica(
                RegistryClient(RemoteService("registry", channel)),
                registry_pb2_grpc.RegistryServiceStub(channel),
                core,
            )
    core.store.close()


async def test_two_registry_replicas_on_one_bucket_over_grpc(
    s3_server: S3Server, tmp_path: Path, trained_breast_cancer: TrainingResult
) -> None:
    bucket = s3_server.new_bucket()
    database = sqlite_url(tmp_path / "registry.sqlite3")
    onnx_bytes = trained_breast_cancer.onnx_bytes
    header = pb.VersionHeader(model="bc", dataset="bc", dataset_version="d1", tags={"f": json.dumps(["a"])})
    requests = [pb.CreateModelVersionRequest(header=header)] + [
        pb.CreateModelVersionRequest(chunk=onnx_bytes[i : i + 4096]) for i in range(0, len(onnx_bytes), 4096)
    ]
    async with (
        _replica(database, _store(s3_server, bucket, tmp_path / "r1"), tmp_path / "s1") as first,
        _replica(database, _store(s3_server, bucket, tmp_path / "r2"), tmp_path / "s2") as second,
    ):
        created = await first.stub.CreateModelVersion(iter(requests))
        assert created.artifact_sha256 == hashlib.sha256(onnx_bytes).hexdigest()
        assert await second.client.download_artifact("bc", created.version) == onnx_bytes
        s3_server.client().put_object(
            Bucket=bucket,
            Key=f"artifacts/{created.artifact_sha256[:2]}/{created.artifact_sha256}",
            Body=onnx_bytes[:-1] + b"\0",
            Metadata={"sha256": created.artifact_sha256},
        )
        # The second replica's verified copy still serves; a third, with nothing cached, refuses.
        assert await second.client.download_artifact("bc", created.version) == onnx_bytes
        async with _replica(database, _store(s3_server, bucket, tmp_path / "r3"), tmp_path / "s3") as third:
            with pytest.raises(FailedPrecondition, match="corrupt"):
                await third.client.download_artifact("bc", created.version)
