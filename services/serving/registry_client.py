"""The registry as serving's `ModelSource`: champions, their feature names and verified artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import grpc

from cascade.client.channels import PLAINTEXT, ClientSecurity
from cascade.clients import download_artifact
from cascade.errors import CascadeError, FailedPrecondition, NotFound, Unavailable, is_permanent
from cascade.grpc_io import open_channel
from cascade.services.serving.repository import ModelRef
from cascade.stubs.cascade.registry.v1 import registry_pb2 as pb
from cascade.stubs.cascade.registry.v1 import registry_pb2_grpc as pb_grpc

__all__ = ["CHAMPION", "RegistryClient"]

log = logging.getLogger(__name__)

CHAMPION = "champion"
FEATURES_TAG = "features"


class RegistryClient:
    def __init__(
        self, address: str, timeout_seconds: float = 60.0, security: ClientSecurity = PLAINTEXT
    ) -> None:
        self.address = address
        self.security = security
        self.timeout_seconds = timeout_seconds
        self._channel: grpc.aio.Channel | None = None
        # Any: the generated stubs type every call as synchronous, and ours are awaited.
        self._stub: Any = None

    def _connect(self) -> grpc.aio.Channel:
        """The channel, opened on first use: inside the running event loop that it belongs to."""
        if self._channel is None:
            self._channel = open_channel(self.address, self.security)
            self._stub = pb_grpc.RegistryServiceStub(self._channel)
        return self._channel

    def _registry(self) -> Any:
        self._connect()
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
        self._channel = self._stub = None

    async def models_with_champion(self) -> list[str]:
        with self._errors("listing models"):
            response = await self._registry().ListModels(pb.ListModelsRequest(), timeout=self.timeout_seconds)
        return [model.name for model in response.models if CHAMPION in model.aliases]

    async def champion(self, model: str) -> ModelRef:
        with self._errors(f"resolving the champion of {model}"):
            version = await self._registry().GetModelVersion(
                pb.GetModelVersionRequest(model=model, alias=CHAMPION), timeout=self.timeout_seconds
            )
        return ModelRef(
            model=version.model,
            version=version.version,
            artifact_sha256=version.artifact_sha256,
            features=_feature_names(model, version.tags),
        )

    async def artifact(self, ref: ModelRef) -> bytes:
        """Download the artifact; refuse it unless its sha256 is both the one streamed with it
        (checked by `download_artifact`) and the one the registry recorded for the version."""
        with self._errors(f"downloading {ref.model} version {ref.version}"):
            async with asyncio.timeout(self.timeout_seconds):
                data = await download_artifact(self._connect(), ref.model, ref.version)
        actual = hashlib.sha256(data).hexdigest()
        if actual != ref.artifact_sha256:
            raise FailedPrecondition(
                f"artifact of {ref.model} version {ref.version} has sha256 {actual}, but the registry "
                f"recorded {ref.artifact_sha256 or 'none'}; refused"
            )
        return data

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Registry failures as Cascade errors: unreachable means retry later, the rest is final."""
        try:
            yield
        except TimeoutError as exc:
            raise Unavailable(
                f"registry at {self.address}, {doing}: no answer within {self.timeout_seconds:g} s"
            ) from exc
        except grpc.aio.AioRpcError as exc:
            message = f"registry at {self.address}, {doing}: {exc.code().name} {exc.details()}"
            error: CascadeError
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                error = NotFound(message)
            elif is_permanent(exc):
                error = FailedPrecondition(message)
            else:
                error = Unavailable(message)
            raise error from exc


def _feature_names(model: str, tags: Mapping[str, str]) -> tuple[str, ...]:
    """Column names from the version's "features" tag (a JSON list of strings), if it has one."""
    raw = tags.get(FEATURES_TAG)
    if not raw:
        return ()
    try:
        names = json.loads(raw)
    except json.JSONDecodeError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        log.warning("model %s: tag %r is not a JSON list of names; using x0, x1, ...", model, FEATURES_TAG)
        return ()
    return tuple(names)
