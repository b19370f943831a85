"""The registry client against a fake registry speaking the real gRPC protocol."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator

import grpc
import pytest

from cascade.errors import FailedPrecondition, NotFound, RemoteFailure, Unavailable
from cascade.services.serving.registry_client import RegistryModelSource
from cascade.services.serving.repository import ModelRef, ModelRepository
from cascade.services.serving.traffic import TrafficSplit

from .support import MODEL, Dataset, RunningRegistry, TrainedModel


@pytest.fixture
async def client(registry: RunningRegistry) -> AsyncIterator[RegistryModelSource]:
    client = RegistryModelSource(registry.address, timeout_seconds=5)
    yield client
    await client.close()


async def test_champion_carries_version_digest_and_feature_names(
    client: RegistryModelSource, models: dict[int, TrainedModel], dataset: Dataset
) -> None:
    ref = await client.champion(MODEL)
    assert ref == ModelRef(MODEL, 1, hashlib.sha256(models[1].onnx).hexdigest(), tuple(dataset.features))
    assert await client.models_with_champion() == [MODEL]


async def test_artifact_is_assembled_from_chunks(
    client: RegistryModelSource, models: dict[int, TrainedModel]
) -> None:
    ref = await client.champion(MODEL)
    assert await client.artifact(ref) == models[1].onnx


async def test_artifact_with_a_wrong_digest_is_refused(
    client: RegistryModelSource, registry: RunningRegistry, models: dict[int, TrainedModel]
) -> None:
    registry.fake.recorded_sha256[MODEL, 1] = "0" * 64
    ref = await client.champion(MODEL)
    with pytest.raises(FailedPrecondition, match="sha256 mismatch"):
        await client.artifact(ref)
    # The digest the version claims must match too, not just the one the stream announces.
    del registry.fake.recorded_sha256[MODEL, 1]
    stale = ModelRef(MODEL, 1, "f" * 64)
    with pytest.raises(FailedPrecondition, match="refused"):
        await client.artifact(stale)


async def test_corrupt_champion_leaves_the_old_one_serving(
    client: RegistryModelSource, registry: RunningRegistry
) -> None:
    repository = ModelRepository(client)
    await repository.sync_champion(MODEL)
    registry.fake.promote(MODEL, 2)
    registry.fake.recorded_sha256[MODEL, 2] = "0" * 64
    with pytest.raises(FailedPrecondition):
        await repository.sync_champion(MODEL)
    assert repository.resolve(MODEL).version == 1


async def test_unknown_model_is_not_found(client: RegistryModelSource) -> None:
    with pytest.raises(NotFound, match=r"registry at .*no-such-model@champion"):
        await client.champion("no-such-model")


@pytest.mark.parametrize("status", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED])
async def test_a_download_the_registry_refuses_leaves_the_old_one_serving(
    client: RegistryModelSource, registry: RunningRegistry, status: grpc.StatusCode
) -> None:
    repository = ModelRepository(client)
    await repository.sync_champion(MODEL)
    registry.fake.promote(MODEL, 2)
    registry.fake.refused_downloads[MODEL, 2] = status

    with pytest.raises(FailedPrecondition, match="refused"):
        await repository.sync_champion(MODEL)

    assert repository.resolve(MODEL).version == 1
    assert repository.failures[MODEL].reason == "download_refused"


async def test_a_registry_failing_inside_is_not_taken_for_a_refused_version(
    client: RegistryModelSource, registry: RunningRegistry
) -> None:
    registry.fake.refused_downloads[MODEL, 1] = grpc.StatusCode.INTERNAL
    ref = await client.champion(MODEL)

    with pytest.raises(RemoteFailure, match="registry at"):
        await client.artifact(ref)


async def test_unreachable_registry_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    client = RegistryModelSource(address, timeout_seconds=2)
    try:
        with pytest.raises(Unavailable, match=r"registry at 127\.0\.0\.1"):
            await client.champion(MODEL)
    finally:
        await client.close()


class RecoversAfterTwoFailures:
    """The registry's model source, its registry failing inside until two downloads have failed."""

    def __init__(self, source: RegistryModelSource, registry: RunningRegistry) -> None:
        self.source, self.registry = source, registry
        self.failed_downloads = 0
        registry.fake.refused_downloads[MODEL, 1] = grpc.StatusCode.INTERNAL

    async def models_with_champion(self) -> list[str]:
        return await self.source.models_with_champion()

    async def champion(self, model: str) -> ModelRef:
        return await self.source.champion(model)

    async def traffic(self, model: str) -> TrafficSplit:
        return await self.source.traffic(model)

    async def artifact(self, ref: ModelRef) -> bytes:
        try:
            return await self.source.artifact(ref)
        except RemoteFailure:
            self.failed_downloads += 1
            if self.failed_downloads == 2:
                del self.registry.fake.refused_downloads[MODEL, 1]
            raise


async def test_champions_load_once_a_registry_failing_inside_recovers(
    client: RegistryModelSource, registry: RunningRegistry
) -> None:
    source = RecoversAfterTwoFailures(client, registry)
    repository = ModelRepository(source)

    await asyncio.wait_for(repository.sync_all_until_done(first_delay=0.01), 60)  # a guard against hanging

    assert source.failed_downloads == 2
    assert repository.resolve(MODEL).version == 1
